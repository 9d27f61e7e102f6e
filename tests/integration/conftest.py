"""Fixtures of the integration tests that talk to the broker (defined in ``streaming_support``)."""

from tests.integration.streaming_support import broker, namespaces, workers

__all__ = ["broker", "namespaces", "workers"]
