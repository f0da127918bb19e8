"""Rotary position embedding (HF "rotate half" layout) with a cos/sin cache.

The model looks up cos/sin for the batch's positions once per forward (`lookup`), and every
layer applies them in place to the q and k heads of its fused qkv output (`apply_`: on the CPU
one C++ op, csrc/elementwise.cpp).
"""

from __future__ import annotations

import math

import torch

from radixrt.workers.layers import cpu_kernels
from radixrt.workers.model_config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """`[head_dim // 2]` float32 inverse frequencies, scaled as the config says."""
    # NOTE: explicit CPU device: models are built under a `meta` device context.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    return _llama3_scale(inv_freq, scaling)


def _llama3_scale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between."""
    old_len = s.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = old_len / s.low_freq_factor
    high_freq_wavelen = old_len / s.high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


class RotaryEmbedding:
    """cos/sin tables `[max_positions, head_dim // 2]`, built lazily per device and dtype."""

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        theta: float = 10000.0,
        scaling: RopeScaling | None = None,
    ):
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.inv_freq = inverse_frequencies(head_dim, theta, scaling)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def _tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0].device != device or self._cache[0].dtype != dtype:
            positions = torch.arange(self.max_positions, dtype=torch.float32, device="cpu")
            freqs = torch.outer(positions, self.inv_freq)  # [max_positions, head_dim / 2]
            self._cache = (freqs.cos().to(device, dtype), freqs.sin().to(device, dtype))
        return self._cache

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for each position, `[T, head_dim // 2]` each.

        Positions must be below `max_positions` (the caller checks; no device sync here).
        """
        cos, sin = self._tables(positions.device, dtype)
        return cos[positions], sin[positions]

    @staticmethod
    def apply_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Rotate `x` `[T, heads, head_dim]` in place (`x` may be a strided view with contiguous
        dims) by `lookup`'s cos and sin."""
        ops = cpu_kernels.elementwise_ops(x)
        if ops is not None and x.stride(-1) == 1 and cos.dtype == x.dtype:
            ops.rotary_(x, cos, sin)
            return
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        x1_orig = x1.clone()
        # x1' = x1 cos - x2 sin ; x2' = x2 cos + x1 sin
        x1.mul_(cos).addcmul_(x2, sin, value=-1)
        x2.mul_(cos).addcmul_(x1_orig, sin)
