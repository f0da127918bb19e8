"""Server arguments: one frozen dataclass; the CLI is generated from its fields."""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Any

from radixrt import envs

POLICIES = ("lpm", "dfs-weight", "fcfs")
EVICTION_POLICIES = ("lru", "slru")  # radix_cache/eviction.py (radix_cache imports nothing of runtime)
SPECULATIVE_MODES = ("off", "ngram")
MAX_SPECULATIVE_TOKENS = 32
QUANTIZATIONS = ("none", "int8", "gguf")  # workers/layers/quantization.py lists the same


def _opt(help_text: str, **kw: Any) -> Any:
    return field(metadata={"help": help_text, **kw.pop("meta", {})}, **kw)


@dataclass(frozen=True)
class ServerArgs:
    model: str = _opt("model folder (HF layout) or 'default' for the embedded SmolLM2-135M-Instruct", default="default")
    dtype: str = _opt("auto | bfloat16 | float32 | float16", default="auto")
    device: str = _opt("auto | cpu | cuda", default="auto")
    load_format: str = _opt("auto | dummy (random weights from config.json)", default="auto")
    attention_backend: str = _opt("auto | torch | flashinfer", default="auto")
    quantization: str = _opt(
        "none | int8 (weight-only, per output channel; every linear and the LM head) | gguf (the linears of the"
        " GGUF file the model was imported from, Q8_0 and Q4_1 as stored; CPU)",
        default="none",
    )
    cuda_graph_max_bs: int = _opt(
        "largest decode batch replayed from a CUDA graph (graphs for 1, 2, 4, 8, then every 8 up to it; larger"
        " batches run eagerly; CUDA with the flashinfer backend)",
        default=64,
    )
    disable_cuda_graph: bool = _opt("run every decode step eagerly on CUDA (no graphs)", default=False)
    batch_invariant: str = _opt(
        "auto | on | off: kernels whose rows never depend on the batch or on cache hits (auto: for batches with"
        " a greedy request; every batch where that costs <= 10%, as measured at start-up)",
        default="auto",
    )
    host: str = _opt("HTTP bind address", default="127.0.0.1")
    port: int = _opt("HTTP port", default=30000)
    zmq_port: int = _opt("ZMQ ROUTER port for DSL clients (0: HTTP port + 1)", default=0)
    api_key: str | None = _opt(
        f"require this key (HTTP Bearer / ZMQ field); repeat the flag for several keys, one per tenant, each"
        f" with its own cache salt; default: ${envs.API_KEY} (one key a line)",
        default=None,
    )
    api_key_file: str = _opt("file of API keys, one a line (blank lines and # comments skipped); adds to --api-key",
                             default="")  # fmt: skip
    api_keys: tuple[str, ...] = _opt("every accepted key (--api-key, its env and --api-key-file)", default=(),
                                     meta={"cli": False})  # fmt: skip
    disable_radix_cache: bool = _opt("turn prefix reuse off (benchmark ablation)", default=False)
    eviction_policy: str = _opt(
        "lru | slru: which cached leaves go first when KV slots run out (slru: never-reused ones first)",
        default="lru",
    )
    max_pin_s: float = _opt("largest pin_s a request may ask for (seconds its prompt stays cached)", default=3600.0)
    max_pinned_fraction: float = _opt(
        "share of KV slots pinned prompts may hold at most (a pin past it is trimmed or refused)", default=0.5
    )
    cache_dir: str = _opt(
        "save the radix cache (token ids and KV rows) here on shutdown and load it at start, keyed by"
        " the weights' hash, dtype, KV layout and radixrt version (empty: off)",
        default="",
    )
    cache_save_interval: float = _opt(
        "with --cache-dir, also save every this many seconds while serving (0: on shutdown only)", default=0.0
    )
    schedule_policy: str = _opt("lpm | dfs-weight | fcfs", default="lpm")
    max_wait_passes: int = _opt("LPM starvation bound: a request waiting this many passes goes first", default=32)
    max_running_requests: int = _opt("running requests at most", default=64)
    kv_slots: int = _opt("KV cache size in tokens (0: from --mem-fraction)", default=0)
    mem_fraction: float = _opt("fraction of free memory for the KV cache when --kv-slots is 0", default=0.5)
    decode_reserve_ratio: float = _opt(
        "share of a request's remaining max_new_tokens reserved at admission "
        "(lower admits more; retraction covers a shortfall)",
        default=0.5,
    )
    chunked_prefill_size: int = _opt("tokens per scheduler step at most (prefill chunks)", default=2048)
    context_length: int = _opt("max prompt + output tokens (0: the model's)", default=0)
    max_new_tokens_limit: int = _opt("largest max_new_tokens a request may ask for", default=8192)
    max_queued_requests: int = _opt(
        "requests waiting beyond --max-running-requests at most; more get 503", default=4096
    )
    max_body_bytes: int = _opt("largest HTTP request body / ZMQ frame in bytes", default=8 << 20)
    max_prompts_per_request: int = _opt("prompts in one /generate list at most", default=256)
    max_requests_per_connection: int = _opt("concurrent requests on one ZMQ client connection at most", default=1024)
    max_grammar_bytes: int = _opt("largest regex / JSON schema / choices list a request may send", default=64 << 10)
    client_timeout: float = _opt(
        "seconds a client may stall (sending its body, reading a stream) before abort", default=60.0
    )
    restart_worker: bool = _opt("restart a worker process that died (in-flight requests fail)", default=False)
    shutdown_grace: float = _opt("seconds SIGTERM waits for running requests before stopping", default=10.0)
    disable_jump_forward: bool = _opt("decode grammar-forced text token by token", default=False)
    speculative: str = _opt(
        "off | ngram: draft tokens from the request's own tokens and the radix tree's cached sequences,"
        " verified in one forward (greedy outputs unchanged, sampling exact)",
        default="off",
    )
    speculative_tokens: int = _opt(
        "draft tokens per request and step at most (1-32) with --speculative ngram", default=8
    )
    grammar_time_limit: float = _opt("seconds a grammar may take to compile", default=10.0)
    seed: int = _opt("base seed for unseeded sampling", default=0)
    log_level: str = _opt("debug | info | warning", default="info")
    ipc_dir: str = _opt("private dir for ipc:// sockets (default: a fresh 0700 temp dir)", default="")

    def __post_init__(self) -> None:
        file_keys = read_api_key_file(self.api_key_file) if self.api_key_file else []
        keys = tuple(dict.fromkeys(([self.api_key] if self.api_key else []) + list(self.api_keys) + file_keys))
        object.__setattr__(self, "api_keys", keys)
        object.__setattr__(self, "api_key", keys[0] if keys else None)
        if any(not k or k != k.strip() or "\n" in k for k in keys):
            raise ValueError("API keys must be non-empty, one line each, without surrounding spaces")
        if self.eviction_policy not in EVICTION_POLICIES:
            raise ValueError(f"eviction_policy must be one of {EVICTION_POLICIES}, got {self.eviction_policy!r}")
        if not self.max_pin_s > 0 or not 0.0 <= self.max_pinned_fraction <= 1.0:
            raise ValueError("max_pin_s must be > 0 and max_pinned_fraction in [0, 1]")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.batch_invariant not in ("auto", "on", "off"):
            raise ValueError(f"batch_invariant must be auto, on or off, got {self.batch_invariant!r}")
        if self.speculative not in SPECULATIVE_MODES:
            raise ValueError(f"speculative must be one of {SPECULATIVE_MODES}, got {self.speculative!r}")
        if not 1 <= self.speculative_tokens <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(
                f"speculative_tokens must be in [1, {MAX_SPECULATIVE_TOKENS}], got {self.speculative_tokens}"
            )
        if self.schedule_policy not in POLICIES:
            raise ValueError(f"schedule_policy must be one of {POLICIES}, got {self.schedule_policy!r}")
        for name in (
            "cuda_graph_max_bs",
            "max_running_requests",
            "chunked_prefill_size",
            "max_wait_passes",
            "max_body_bytes",
            "max_prompts_per_request",
            "max_requests_per_connection",
            "max_grammar_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 <= self.decode_reserve_ratio <= 1.0:
            raise ValueError("decode_reserve_ratio must be in [0, 1]")
        if self.kv_slots < 0 or not 0.0 < self.mem_fraction <= 1.0:
            raise ValueError("kv_slots must be >= 0 and mem_fraction in (0, 1]")
        if self.cache_save_interval < 0:
            raise ValueError("cache_save_interval must be >= 0")
        if self.cache_dir and self.disable_radix_cache:
            raise ValueError("cache_dir needs the radix cache (drop disable_radix_cache)")
        if self.max_queued_requests < 0 or self.client_timeout <= 0 or self.shutdown_grace < 0:
            raise ValueError("max_queued_requests and shutdown_grace must be >= 0, client_timeout > 0")

    @property
    def max_in_flight(self) -> int:
        """Requests (sampled sequences) the frontend accepts at once: running plus queued."""
        return self.max_running_requests + self.max_queued_requests

    @property
    def zmq_address(self) -> str:
        return f"tcp://{self.host}:{self.zmq_port or self.port + 1}"

    def make_ipc_dir(self) -> str:
        """A directory only this user can enter, for the ipc:// sockets; raises OSError otherwise."""
        path = self.ipc_dir or tempfile.mkdtemp(prefix=f"radixrt-{os.getpid()}-")
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise OSError(f"--ipc-dir {path} must be a directory owned by this user (not a link)")
        os.chmod(path, 0o700)
        return path

    def replace(self, **changes: Any) -> ServerArgs:
        return dataclasses.replace(self, **changes)

    def without_api_keys(self) -> ServerArgs:
        """These arguments with no key in them (for a child process, a log, a public answer)."""
        return dataclasses.replace(self, api_key=None, api_keys=(), api_key_file="")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(ServerArgs):
            flag = "--" + f.name.replace("_", "-")
            if not f.metadata.get("cli", True):
                continue
            text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
            if f.name == "api_key":
                parser.add_argument(flag, action="append", default=None, help=text)
            elif f.type in ("bool", bool):
                parser.add_argument(flag, action="store_true", help=text)
            else:
                kind = {"int": int, "float": float}.get(str(f.type), str)
                parser.add_argument(flag, type=kind, default=f.default, help=text)

    @classmethod
    def from_cli(cls, args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServerArgs:
        """The parsed flags; the API keys come from $RADIXRT_API_KEY when --api-key is not given (and
        from --api-key-file, read when the arguments are made)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        given = values.pop("api_key", None) or []
        keys = list(given) if isinstance(given, list) else [given]
        if not keys:
            keys = envs.api_keys(os.environ if environ is None else environ)
        return cls(**values, api_keys=tuple(keys))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ServerArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown server arguments: {unknown}")
        return cls(**kwargs)


def read_api_key_file(path: str) -> list[str]:
    """Keys of an --api-key-file: one a line; blank lines and lines starting with # are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise ValueError(f"cannot read --api-key-file {path}: {e.strerror}") from None
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise ValueError(f"--api-key-file {path} holds no key")
    return keys
