"""Fixtures of the streaming tests (defined in ``streaming_support``), shared by their modules."""

from tests.integration.streaming_support import namespaces, workers

__all__ = ["namespaces", "workers"]
