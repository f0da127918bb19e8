"""The systems a benchmark compares, on the same weights:

- `radixrt`: a `radixrt serve` subprocess with `--speculative ngram`, programs over ZMQ (the DSL's
  RuntimeEndpoint); the other radixrt systems are the same server with one change each:
- `radixrt-nospec`: `--speculative off` (speculative decoding's ablation; the server's default);
- `radixrt-nocache`: the same with `--disable-radix-cache` (the ablation);
- `radixrt-nojump`: the same with `--disable-jump-forward` (matters for constrained decoding);
- `radixrt-int8`: the same with `--quantization int8` (weight-only int8 linears; not in the default set);
- `radixrt-gguf`: the same with `--quantization gguf` (the GGUF file's Q4_1/Q8_0 linears as stored;
  not in the default set);
- `transformers`: `TransformersBackend` in this process (static batching, no prefix reuse);
- `llamacpp`: llama-cpp-python on the GGUF file the model came from (the embedded Q4_1 file);
- `llamacpp-bf16` / `llamacpp-f16`: llama-cpp-python on the model folder's weights written as a
  bf16 / f16 GGUF (bf16: exactly the weights radixrt runs).

radixrt and transformers run in `SystemConfig.dtype` (bf16). The llamacpp systems need
llama-cpp-python (`make bench` builds it); `missing_systems` says which cannot start here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from radixrt.lang.backends.base import Backend

RADIXRT_FLAGS: dict[str, Any] = {"speculative": "ngram"}  # every radixrt system's, unless it changes them
SERVER_FLAGS: dict[str, dict[str, Any]] = {
    "radixrt": {},
    "radixrt-nospec": {"speculative": "off"},
    "radixrt-nocache": {"disable_radix_cache": True},
    "radixrt-nojump": {"disable_jump_forward": True},
    "radixrt-int8": {"quantization": "int8"},
    "radixrt-gguf": {"quantization": "gguf"},
}
LLAMACPP_SYSTEMS = {"llamacpp": None, "llamacpp-bf16": "bf16", "llamacpp-f16": "f16"}  # name -> exported dtype
SYSTEMS = ("radixrt", "radixrt-nocache", "transformers", "radixrt-nojump", "radixrt-int8", "radixrt-gguf",
           "radixrt-nospec", *LLAMACPP_SYSTEMS)  # fmt: skip
DEFAULT_SYSTEMS = ("radixrt", "radixrt-nocache", "transformers", "llamacpp", "llamacpp-bf16", "radixrt-nojump",
                   "radixrt-nospec")  # fmt: skip


@dataclass(frozen=True)
class SystemConfig:
    """What every system shares. `max_batch` is the server's max_running_requests and the
    transformers batch limit; `kv_slots` sizes the server's KV cache (tokens); `threads` is
    llama.cpp's thread count (torch uses the same number); `gguf` the file `llamacpp` runs
    (None: the embedded model's); `device` where radixrt and transformers run (cpu, cuda)."""

    model: str = "default"
    dtype: str = "bfloat16"
    max_batch: int = 64
    kv_slots: int = 65536
    request_timeout_s: float = 1800.0
    threads: int = 2
    gguf: str | None = None
    device: str = "cpu"


class Session:
    """A started system: `backend` for programs, `close()` when done."""

    def __init__(self, name: str, backend: Backend, closer: Any = None, one_at_a_time: bool = False):
        self.name, self.backend, self._closer = name, backend, closer
        # NOTE: a system that serves one sequence at a time (llama.cpp) runs programs one after
        # another: more in flight would only interleave them and break its prompt cache
        self.one_at_a_time = one_at_a_time

    def close(self) -> None:
        self.backend.shutdown()
        if self._closer is not None:
            self._closer()


def missing_systems(names: list[str], llama_cpp: bool | None = None) -> dict[str, str]:
    """Systems of `names` that cannot run on this machine, with the reason. `llama_cpp`: whether
    llama-cpp-python is importable (None: look)."""
    if llama_cpp is None:
        llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    if llama_cpp:
        return {}
    reason = "llama-cpp-python is not installed (`make bench` builds it; see BENCHMARKS.md)"
    return {name: reason for name in names if name in LLAMACPP_SYSTEMS}


def start(name: str, config: SystemConfig) -> Session:
    """Start system `name` (one of SYSTEMS) and warm it up with one short request."""
    if name in SERVER_FLAGS:
        session = _start_server(name, config)
    elif name in LLAMACPP_SYSTEMS:
        session = _start_llamacpp(name, config)
    else:
        session = _start_transformers(config)
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
        model=config.model, dtype=config.dtype, device=config.device, port=0, log_level="warning",
        max_running_requests=config.max_batch, kv_slots=config.kv_slots, **{**RADIXRT_FLAGS, **SERVER_FLAGS[name]},
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
                                  max_batch=config.max_batch, grammar_cache_dir=grammar_cache_dir(),
                                  device=config.device)  # fmt: skip
    return Session("transformers", backend)


def _start_llamacpp(name: str, config: SystemConfig) -> Session:
    from radixrt.bench.llamacpp_backend import LlamaCppBackend

    model_dir = _model_dir(config.model)
    backend = LlamaCppBackend(gguf_path(name, config), model_dir, n_threads=config.threads)
    return Session(name, backend, one_at_a_time=True)


NEEDS_GGUF = "the llamacpp system needs --gguf FILE for a model other than the embedded one"


def needs_gguf_file(model: str, gguf: str | None) -> bool:
    """Whether the llamacpp system lacks a GGUF file to run: only the embedded model ships its own."""
    return gguf is None and model not in ("default", "SmolLM2-135M-Instruct")


def gguf_path(name: str, config: SystemConfig) -> str:
    """The GGUF file llamacpp system `name` runs (exported on first use for bf16 / f16)."""
    from radixrt.bench.gguf_export import exported_gguf
    from radixrt.workers.model_store import cache_root, embedded_gguf

    dtype = LLAMACPP_SYSTEMS[name]
    if dtype is None:
        if needs_gguf_file(config.model, config.gguf):
            raise ValueError(NEEDS_GGUF)
        return config.gguf or str(embedded_gguf())
    template = config.gguf or str(embedded_gguf())  # tokenizer and chat-template fields
    return str(exported_gguf(_model_dir(config.model), dtype, template=template, cache_dir=cache_root() / "gguf"))


def _model_dir(model: str) -> Any:
    from radixrt.workers.model_store import resolve_model

    return resolve_model(model)


def _warm_up(backend: Backend) -> None:
    """A few-hundred-token prompt and a short decode, so first-call costs stay out of the figures."""
    from radixrt.bench.synthetic import TextGen
    from radixrt.runtime.protocol import SamplingParams

    backend.generate(TextGen(-1).paragraph(400), SamplingParams(max_new_tokens=8, temperature=0.0))
    backend.flush_cache()
