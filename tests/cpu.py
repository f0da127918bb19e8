"""Facts about this machine's CPU that decide which kernel-level tests apply."""

from __future__ import annotations

from radixrt.workers.layers.cpu_kernels import cpu_flags

# bf16 bit-identity across batch shapes was measured and fixed on AVX512-BF16 CPUs; oneDNN picks
# other kernels (AMX tiles) where AMX exists, so those tests do not claim anything there.
VERIFIED_BF16_KERNELS = "avx512_bf16" in cpu_flags() and "amx_bf16" not in cpu_flags()
