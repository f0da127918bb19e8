"""Engine.stats()["kernels"] names what runs each op, and a worker without radixrt's C++ CPU
kernels says why in one log line at start-up (on the tiny random llama: head_dim 16, float32)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import radixrt

ROOT = Path(__file__).resolve().parents[2]
NO_KERNELS = {
    "decode_attention": "torch",
    "extend_attention": "torch",
    "shared_prefix_decode": "off",
    "rms_norm": "torch",
    "silu_and_mul": "torch",
    "rotary": "torch",
    "decode_layer": "off",
}
MEASURED_DECODE = (
    r"cpu_kernels \(measured [0-9.]+x (faster|slower, kept within 5%)\)"
    r"|torch \(measured [0-9.]+x faster\); batch-invariant: cpu_kernels"
)
RUN_ENGINE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
import radixrt
with radixrt.Engine(model=sys.argv[1], dtype="float32", device="cpu", kv_slots=256) as engine:
    out = engine.generate("Hello", {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True})
    print(json.dumps({"kernels": engine.stats()["kernels"], "tokens": len(out["output_ids"])}))
"""


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_with_a_compiler_stats_show_the_cpu_kernels_where_they_apply(tiny_model_dir):
    with radixrt.Engine(model=str(tiny_model_dir), dtype="float32", device="cpu", kv_slots=256) as engine:
        engine.generate("Hello", {"max_new_tokens": 2})
        kernels = engine.stats()["kernels"]
    linear = kernels.pop("linear")
    assert "batch-invariant: " in linear and "(" in linear  # the measured choice, per shape
    # the decode kernel or torch's SDPA, whichever measured faster here (the kernel when invariant);
    # float32 prefill the same, its kernel being the prompt rows as decode rows
    assert re.fullmatch(MEASURED_DECODE, kernels.pop("decode_attention"))
    assert re.fullmatch(MEASURED_DECODE, kernels.pop("extend_attention"))
    # shared-prefix decode (bf16 only) is off
    dropped = ("decode_attention", "extend_attention")
    assert kernels == {**{k: v for k, v in NO_KERNELS.items() if k not in dropped}, "rms_norm": "cpu_kernels",
                       "silu_and_mul": "cpu_kernels", "rotary": "cpu_kernels", "decode_layer": "cpu_kernels"}  # fmt: skip


@pytest.mark.parametrize(
    ("cxx", "reason"),
    [("/bin/false", "building them failed"), ("/nonexistent/c++", "no C++ compiler: '/nonexistent/c++' not found")],
)
def test_without_the_kernels_the_engine_says_why_once_and_stats_show_the_torch_path(
    tmp_path, tiny_model_dir, cxx, reason
):
    env = {**os.environ, "CXX": cxx, "RADIXRT_KERNEL_CACHE": str(tmp_path)}  # an empty cache: it must build
    command = [sys.executable, "-c", RUN_ENGINE, str(tiny_model_dir)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "kernels unavailable" in line]
    assert len(said) == 1, done.stderr
    assert said[0].startswith("WARNING") and reason in said[0] and "slower PyTorch path" in said[0]
    reported = json.loads(done.stdout.splitlines()[-1])
    linear = reported["kernels"].pop("linear")
    assert reported == {"kernels": NO_KERNELS, "tokens": 4}
    assert "radixrt" not in linear and "aten" in linear  # measured among the candidates left


def test_radixrt_kernels_torch_runs_the_pytorch_reference_path(tiny_model_dir):
    env = {**os.environ, "RADIXRT_KERNELS": "torch"}
    command = [sys.executable, "-c", RUN_ENGINE, str(tiny_model_dir)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "RADIXRT_KERNELS=torch" in line]
    assert len(said) == 1 and "PyTorch path" in said[0], done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"kernels": {**NO_KERNELS, "linear": "torch"}, "tokens": 4}
