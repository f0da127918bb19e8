"""Facts about this machine that decide which kernel-level claims apply."""

from __future__ import annotations

from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.attention.torch_backend import packs_prompt_rows

# bf16 rows that depend neither on the batch nor on how a prompt was split need the C++ attention
# kernels (extend_attention on AVX512-BF16 CPUs; elsewhere prompt rows attended as decode rows) and
# a row-invariant linear, which the model runner measures at load (our own kernel always is one):
# wherever the kernels build, on every CPU.
BF16_INVARIANT = cpu_kernels.load() is not None

# On AVX2 builds without AVX-512, decode_attention packs long chains of prompt rows, from thresholds
# measured at start; /stats describes them so
PACKS_PROMPT_ROWS = packs_prompt_rows(cpu_kernels.load())
MEASURED_PACKING = r"(chains of >= \d+ rows|no chain on its own), (>= \d+|none) after a shared prefix \(measured\)"
