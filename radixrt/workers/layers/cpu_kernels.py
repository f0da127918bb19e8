"""Our C++ CPU kernels (csrc/), compiled on first use for this machine's CPU and cached.

They register torch ops under `torch.ops.radixrt`: `decode_attention`, `shared_prefix_decode`
and `extend_attention` (the torch attention backend's decode and prefill steps),
`rms_norm` / `add_rms_norm_` (layers/norm.py), `silu_and_mul` (the llama MLP), `rotary_` (layers/rotary.py)
`pack_linear_weight` / `packed_linear` (one of the linear candidates, layers/linear_candidates.py) and
`pack_int8_weight` / `int8_linear` (weight-only int8 linears, layers/quantization.py, and GGUF's
Q8_0) and `pack_q4_1_weight` / `q4_1_linear` (GGUF's Q4_1, layers/gguf_linear.py),
and `decode_layers` (every decoder layer of a decode step as one op, layers/fused_decode.py).
`python -m radixrt.workers.layers.cpu_kernels` builds them ahead of time (`make test` and
`make demo` do); a process that finds no C++ compiler logs why once and runs the PyTorch code
they replace.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from radixrt import envs

logger = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).parent / "csrc" / name
    for name in (
        "decode_attention.cpp",
        "extend_attention.cpp",
        "shared_prefix_decode.cpp",
        "tiled_decode_attention.cpp",
        "rms_norm.cpp",
        "elementwise.cpp",
        "linear.cpp",
        "linear_int8.cpp",
        "linear_q4_1.cpp",
        "decode_layer.cpp",
    )
]
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]  # OpenMP: at::parallel_for runs on torch's threads
# what the attention kernels are compiled for
DECODE_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)
DECODE_MAX_GROUP = 16  # query heads per kv head
EXTEND_HEAD_DIMS = (64, 128)  # bf16 on AVX512-BF16 CPUs only
ELEMENTWISE_OPS = ("rms_norm", "silu_and_mul", "rotary")  # the row-wise ops, as /stats names them


def supports_decode(head_dim: int, num_heads: int, num_kv_heads: int) -> bool:
    return head_dim in DECODE_HEAD_DIMS and num_heads // num_kv_heads <= DECODE_MAX_GROUP


def supports_extend(head_dim: int, dtype: torch.dtype) -> bool:
    return head_dim in EXTEND_HEAD_DIMS and dtype == torch.bfloat16 and "avx512_bf16" in cpu_flags()


def elementwise_ops(x: torch.Tensor) -> Any:
    """`torch.ops.radixrt` where its row-wise ops (norms, SiLU-and-multiply, rotary) take `x`'s
    device and dtype, else None (use torch's ops)."""
    return load() if x.is_cpu and x.dtype in _ELEMENTWISE_DTYPES else None  # NOTE: x.device costs more


def elementwise_implementations(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """What runs each row-wise op of a model on `device` in `dtype`: "cpu_kernels" or "torch"."""
    used = _takes_elementwise(device, dtype) and load() is not None
    return dict.fromkeys(ELEMENTWISE_OPS, "cpu_kernels" if used else "torch")


_ELEMENTWISE_DTYPES = (torch.bfloat16, torch.float32)


def _takes_elementwise(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in _ELEMENTWISE_DTYPES


def build_dir() -> Path:
    return envs.kernel_cache_dir()


@functools.cache
def load() -> Any:
    """The namespace of the compiled ops (`torch.ops.radixrt`), or None where they cannot be built
    (the reason is logged once)."""
    if envs.torch_reference_only():
        logger.warning("%s=torch: radixrt's C++ CPU kernels are off; the model runs on the PyTorch path", envs.KERNELS)
        return None
    try:
        return _build()
    except Exception as exc:  # noqa: BLE001  a failed build must not stop the server
        logger.debug("building radixrt's CPU kernels failed", exc_info=exc)
        reason = missing_prerequisite(SOURCES, os.environ) or f"building them failed: {_first_line(exc)}"
    logger.warning("radixrt's C++ CPU kernels unavailable (%s); the model runs on the slower PyTorch path", reason)
    return None


def missing_prerequisite(sources: list[Path], environ: Mapping[str, str]) -> str | None:
    """Why a build failed, when the cause is plain: C++ sources missing from the installed package
    or no C++ compiler. Checked after a failure only: a build made ahead of time loads without one."""
    missing = [s.name for s in sources if not s.exists()]
    if missing:
        return f"their C++ sources are missing from the installed package: {', '.join(missing)}"
    compiler = environ.get("CXX", "c++")  # what torch.utils.cpp_extension runs
    if shutil.which(compiler) is None:
        return f"no C++ compiler: {compiler!r} not found (install g++ or set $CXX)"
    return None


def _first_line(exc: Exception) -> str:
    """torch appends the compiler's whole output to its error; the log line keeps the first line."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0][:300]


def _build() -> Any:
    from torch.utils.cpp_extension import load as load_extension

    if shutil.which("ninja") is None:  # the venv's ninja, when the venv is not activated
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # NOTE: -march=native code must never run on another CPU: the name carries the CPU's identity,
    # and the sources' (torch rebuilds when a listed .cpp file changes, not when a header does).
    name = f"radixrt_cpu_kernels_{build_id()}"
    directory = build_dir() / name
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / f"{name}.so").exists():
        logger.info("compiling radixrt's CPU kernels into %s (once per machine, ~30 s)", directory)
    load_extension(
        name,
        [str(s) for s in SOURCES],
        extra_cflags=CFLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        is_python_module=False,  # the library registers torch ops instead
        verbose=False,
    )
    return torch.ops.radixrt


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build_id() -> str:
    """A short hash of the CPU's model and flags and of the sources and headers in csrc/."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    digest = hashlib.sha256((model + " ".join(sorted(cpu_flags()))).encode())
    for source in sorted(p for p in SOURCES[0].parent.iterdir() if p.suffix in (".cpp", ".h")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:12]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ready = load() is not None
    print("radixrt CPU kernels:", "ready" if ready else "unavailable (see above)", flush=True)
