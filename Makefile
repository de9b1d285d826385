# The two commands a new user needs: `make run` and `make test`.
# Everything they need is installed from here: a virtual environment with the
# package, and the jars of a local Apache Kafka broker fetched by Maven.

PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
KAFKA_LIBS := .cache/kafka-libs
STAMP      := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: run test test-unit test-integration test-policy bench install broker-jars clean

run: install broker-jars
	$(BIN)/notifier dev

test: install broker-jars
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest tests/unit

test-integration: install broker-jars
	$(BIN)/pytest tests/integration

test-policy: install broker-jars
	NOTIFIER_POLICY_ORDERS=5000 $(BIN)/pytest tests/integration/test_policy.py

bench: install broker-jars
	$(BIN)/notifier bench senders

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "order-notifier needs Python 3.11 or newer (found: $$($(PYTHON) --version 2>&1))."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# The embedded broker is real Apache Kafka; Maven fetches its jars once.
# With NOTIFIER_KAFKA_BOOTSTRAP set, an existing cluster is used and nothing is fetched.
broker-jars:
	@if [ -n "$$NOTIFIER_KAFKA_BOOTSTRAP" ] && [ "$(MAKECMDGOALS)" = "run" ]; then exit 0; fi; \
	if [ -f $(KAFKA_LIBS)/.complete ]; then exit 0; fi; \
	if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then \
	  echo "The local Kafka broker needs Java 17+ and Maven; install them, or set NOTIFIER_KAFKA_BOOTSTRAP=host:port to use an existing cluster (docker compose up kafka starts one)."; \
	  exit 1; \
	fi; \
	echo "Fetching Apache Kafka's jars with Maven into $(KAFKA_LIBS) (once)..."; \
	mvn --quiet --batch-mode -f deploy/kafka/pom.xml dependency:copy-dependencies \
	    -DincludeScope=runtime -DoutputDirectory=$(abspath $(KAFKA_LIBS)) && \
	touch $(KAFKA_LIBS)/.complete

clean:
	rm -rf $(VENV) .cache var .pytest_cache
