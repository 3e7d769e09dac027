"""The console's browser test runs the usage tests' daemon-and-sidecar stack."""

from tests.integration.usage.conftest import make_sidecar  # noqa: F401 (a fixture, found by its name)
