"""Backends: where a program's requests go."""

from radixrt.lang.backends.base import Backend
from radixrt.lang.backends.runtime_endpoint import RuntimeEndpoint

__all__ = ["Backend", "RuntimeEndpoint"]
