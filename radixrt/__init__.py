"""radixrt: a radix-tree prefix-sharing runtime for agentic LLM programs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Heavy modules (torch) load only when used: `import radixrt` stays cheap for DSL clients.
    if name == "Engine":
        from radixrt.runtime.engine import Engine

        return Engine
    raise AttributeError(f"module 'radixrt' has no attribute {name!r}")
