"""Facts about this machine that decide which kernel-level claims apply."""

from __future__ import annotations

import torch

from radixrt.workers.layers import cpu_kernels

# bf16 rows that depend neither on the batch nor on how a prompt was split need the C++ prefill
# attention (built where the CPU has AVX512-BF16) and a row-invariant linear, which the model runner
# measures at load (our own kernel always is one): a capability, checked on every CPU that has it.
BF16_INVARIANT = cpu_kernels.load() is not None and cpu_kernels.supports_extend(64, torch.bfloat16)
