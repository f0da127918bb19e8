"""Why radixrt's C++ CPU kernels could not be built, and what runs each op with or without them
(no compiler needed: the cases are made with missing files and a missing CXX)."""

from __future__ import annotations

import torch

from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.attention import AttentionChoice, TorchAttentionBackend
from radixrt.workers.layers.cpu_kernels import elementwise_implementations, missing_prerequisite


def test_missing_sources_are_named_before_anything_else(tmp_path):
    present, absent = tmp_path / "decode_attention.cpp", tmp_path / "simd.h"
    present.write_text("")
    reason = missing_prerequisite([present, absent], {"CXX": str(tmp_path / "no-compiler")})
    assert reason == "their C++ sources are missing from the installed package: simd.h"


def test_a_missing_compiler_is_named(tmp_path):
    source = tmp_path / "decode_attention.cpp"
    source.write_text("")
    assert missing_prerequisite([source], {"CXX": str(tmp_path / "g++-99")}) == (
        f"no C++ compiler: '{tmp_path / 'g++-99'}' not found (install g++ or set $CXX)"
    )
    assert missing_prerequisite([source], {"CXX": "/bin/false"}) is None  # present: the build's own error says why


def test_the_torch_backend_reports_torch_without_kernels_and_the_kernels_with_them():
    assert TorchAttentionBackend(4, 2, 64).implementations() == {
        "decode_attention": "torch",
        "extend_attention": "torch",
        "shared_prefix_decode": "off",
    }
    loaded = object()  # stands for torch.ops.radixrt
    assert TorchAttentionBackend(4, 2, 64, cpu_kernels=loaded, extend_kernel=True).implementations() == {
        "decode_attention": "cpu_kernels",
        "extend_attention": "cpu_kernels",
        "shared_prefix_decode": "cpu_kernels",
    }


def test_the_torch_backend_reports_what_was_measured_and_what_invariant_batches_run():
    loaded = object()
    why = {"extend_attention": "measured 1.80x faster", "decode_attention": "measured 2.50x faster"}
    backend = TorchAttentionBackend(4, 2, 64, None, loaded, True, AttentionChoice("torch", "cpu_kernels", why))
    assert backend.implementations() == {
        "decode_attention": "cpu_kernels (measured 2.50x faster)",
        "extend_attention": "torch (measured 1.80x faster); batch-invariant: cpu_kernels",
        "shared_prefix_decode": "cpu_kernels",  # whichever decode candidate won
    }
    # float32: prefill's kernel is decode_attention (prompt rows as decode rows); both measured slower
    why = {"decode_attention": "measured 1.30x faster", "extend_attention": "measured 1.20x faster"}
    backend = TorchAttentionBackend(4, 2, 64, None, loaded, False, AttentionChoice("torch", "torch", why))
    assert backend.implementations() == {
        "decode_attention": "torch (measured 1.30x faster); batch-invariant: cpu_kernels",
        "extend_attention": "torch (measured 1.20x faster); batch-invariant: cpu_kernels",
        "shared_prefix_decode": "off",
    }


def test_row_wise_ops_use_torch_for_dtypes_and_devices_the_kernels_do_not_take():
    expected = dict.fromkeys(("rms_norm", "silu_and_mul", "rotary"), "torch")
    assert elementwise_implementations(torch.device("cpu"), torch.float16) == expected
    assert elementwise_implementations(torch.device("cuda"), torch.bfloat16) == expected
    built = "cpu_kernels" if cpu_kernels.load() is not None else "torch"
    assert set(elementwise_implementations(torch.device("cpu"), torch.float32).values()) == {built}
