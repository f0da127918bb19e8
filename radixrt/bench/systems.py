"""The systems a benchmark compares, all on the same weights and dtype:

- `radixrt`: a `radixrt serve` subprocess, programs over ZMQ (the DSL's RuntimeEndpoint);
- `radixrt-nocache`: the same with `--disable-radix-cache` (the ablation);
- `radixrt-nojump`: the same with `--disable-jump-forward` (matters for constrained decoding);
- `transformers`: `TransformersBackend` in this process (static batching, no prefix reuse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radixrt.lang.backends.base import Backend

SERVER_FLAGS: dict[str, dict[str, Any]] = {
    "radixrt": {},
    "radixrt-nocache": {"disable_radix_cache": True},
    "radixrt-nojump": {"disable_jump_forward": True},
}
SYSTEMS = ("radixrt", "radixrt-nocache", "transformers", "radixrt-nojump")
DEFAULT_SYSTEMS = ("radixrt", "radixrt-nocache", "transformers")


@dataclass(frozen=True)
class SystemConfig:
    """What every system shares. `max_batch` is the server's max_running_requests and the
    transformers batch limit; `kv_slots` sizes the server's KV cache (tokens)."""

    model: str = "default"
    dtype: str = "bfloat16"
    max_batch: int = 64
    kv_slots: int = 65536
    request_timeout_s: float = 900.0


class Session:
    """A started system: `backend` for programs, `close()` when done."""

    def __init__(self, name: str, backend: Backend, closer: Any = None):
        self.name, self.backend, self._closer = name, backend, closer

    def close(self) -> None:
        self.backend.shutdown()
        if self._closer is not None:
            self._closer()


def start(name: str, config: SystemConfig) -> Session:
    """Start system `name` (one of SYSTEMS) and warm it up with one short request."""
    session = _start_server(name, config) if name in SERVER_FLAGS else _start_transformers(config)
    try:
        _warm_up(session.backend)
    except BaseException:
        session.close()
        raise
    return session


def _start_server(name: str, config: SystemConfig) -> Session:
    from radixrt.lang import RuntimeEndpoint
    from radixrt.runtime.config import ServerArgs
    from radixrt.runtime.server.server_handle import launch_server

    args = ServerArgs(
        model=config.model, dtype=config.dtype, device="cpu", port=0, log_level="warning",
        max_running_requests=config.max_batch, kv_slots=config.kv_slots, **SERVER_FLAGS[name],
    )  # fmt: skip
    handle = launch_server(args)
    try:
        endpoint = RuntimeEndpoint(handle.zmq_address, timeout=config.request_timeout_s)
    except BaseException:
        handle.shutdown()
        raise
    return Session(name, endpoint, handle.shutdown)


def _start_transformers(config: SystemConfig) -> Session:
    import torch
    import transformers

    from radixrt.bench.transformers_backend import TransformersBackend
    from radixrt.runtime.scheduler.grammar_manager import grammar_cache_dir
    from radixrt.workers.model_store import resolve_model

    if config.dtype not in ("bfloat16", "float32", "float16"):
        raise ValueError(f"the transformers baseline needs an explicit dtype, got {config.dtype!r}")
    transformers.utils.logging.disable_progress_bar()  # one progress line per workload is enough
    backend = TransformersBackend(resolve_model(config.model), dtype=getattr(torch, config.dtype),
                                  max_batch=config.max_batch, grammar_cache_dir=grammar_cache_dir())  # fmt: skip
    return Session("transformers", backend)


def _warm_up(backend: Backend) -> None:
    """A few-hundred-token prompt and a short decode, so first-call costs stay out of the figures."""
    from radixrt.bench.synthetic import TextGen
    from radixrt.runtime.protocol import SamplingParams

    backend.generate(TextGen(-1).paragraph(400), SamplingParams(max_new_tokens=8, temperature=0.0))
    backend.flush_cache()
