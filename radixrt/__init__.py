"""radixrt: a radix-tree prefix-sharing runtime for agentic LLM programs.

`import radixrt as sgl` gives SGLang's frontend language (function, gen, select, fork, ...).
"""

from __future__ import annotations

from typing import Any

from radixrt.lang import *  # noqa: F403  (the DSL is the package's public API)
from radixrt.lang import __all__ as _lang_all

__version__ = "0.1.0"
__all__ = [*_lang_all, "Engine"]  # noqa: F405 (Engine is the lazy attribute below)


def __getattr__(name: str) -> Any:
    # The engine loads torch only when used: `import radixrt` stays cheap for DSL clients.
    if name == "Engine":
        from radixrt.runtime.engine import Engine

        return Engine
    raise AttributeError(f"module 'radixrt' has no attribute {name!r}")
