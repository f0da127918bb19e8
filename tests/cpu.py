"""Facts about this machine that decide which kernel-level claims apply."""

from __future__ import annotations

from radixrt.workers.layers import cpu_kernels

# bf16 rows that depend neither on the batch nor on how a prompt was split need the C++ attention
# kernels (extend_attention on AVX512-BF16 CPUs; elsewhere prompt rows attended as decode rows) and
# a row-invariant linear, which the model runner measures at load (our own kernel always is one):
# wherever the kernels build, on every CPU.
BF16_INVARIANT = cpu_kernels.load() is not None
