# The two commands a new user needs: `make run` and `make test`.
# Everything they need is installed from here: a virtual environment with the
# package, and the jars of a local Apache Kafka broker fetched by Maven.

PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
KAFKA_LIBS := .cache/kafka-libs
COMPOSE_SPEC := .cache/compose-spec.json
STAMP      := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: run test test-unit test-integration test-policy test-faults bench soak install broker-jars tools clean

run: install broker-jars
	$(BIN)/notifier dev

# The fault suite runs here in its short form (100 orders); `make test-faults` runs 5,000.
test: install broker-jars tools
	$(BIN)/pytest

test-unit: install tools
	$(BIN)/pytest tests/unit

test-integration: install broker-jars tools
	$(BIN)/pytest tests/integration

test-policy: install broker-jars
	NOTIFIER_POLICY_ORDERS=5000 $(BIN)/pytest tests/integration/test_policy.py

# 5,000 simulated orders through kills, a worker joining and leaving, poison and failing
# providers, three runs in a row.
test-faults: install broker-jars
	for run in 1 2 3; do NOTIFIER_FAULT_ORDERS=5000 $(BIN)/pytest tests/faults || exit 1; done

bench: install broker-jars
	@command -v wrk >/dev/null || { echo "Installing Debian's wrk (the page benchmark's load generator)..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	$(BIN)/notifier bench domain
	$(BIN)/notifier bench worker
	$(BIN)/notifier bench latency
	$(BIN)/notifier bench senders
	$(BIN)/notifier bench page

# The whole product at a steady rate for a while (SOAK_MINUTES, SOAK_RATE): docs/soak.png.
SOAK_MINUTES ?= 10
SOAK_RATE    ?= 100
soak: install broker-jars
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install --quiet -e '.[test,soak]'
	$(BIN)/notifier soak --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)

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

# What the tests check with: promtool (Debian's prometheus package) for the metrics and
# alert rules, Debian's chromium for the tracking page's browser test, and the Compose
# Specification's JSON schema as Docker published it in docker-compose 1.29.2 on PyPI.
tools: $(COMPOSE_SPEC)
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	fc-list :lang=zh 2>/dev/null | grep -q . || missing="$$missing fonts-noto-cjk"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian's$$missing (promtool; the browser test's Chromium and Chinese fonts)..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(COMPOSE_SPEC): | install
	@mkdir -p .cache/pip
	$(BIN)/pip download --quiet --no-deps --dest .cache/pip docker-compose==1.29.2
	$(BIN)/python -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('compose/config/compose_spec.json'))" \
	  .cache/pip/docker_compose-1.29.2-py2.py3-none-any.whl $@

clean:
	rm -rf $(VENV) .cache var .pytest_cache
