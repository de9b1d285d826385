"""The fault suite runs on the integration suite's fixtures: a real broker, real processes."""

from tests.integration.conftest import kafka, stack  # noqa: F401
