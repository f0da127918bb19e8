"""Batched token bitmasks: bit (t % 32) of word (t // 32) in a row allows token t.

A row of all ones (-1) leaves its request unconstrained.
"""

from __future__ import annotations

import torch


def allocate_token_bitmask(batch_size: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed int32 bitmask [batch_size, ceil(vocab_size / 32)] on the CPU (pinned with CUDA)."""
    return torch.full(
        (batch_size, (vocab_size + 31) // 32), -1, dtype=torch.int32, pin_memory=torch.cuda.is_available()
    )


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set disallowed logits to -inf in place, for the whole batch at once.

    logits: [B, V] on any device; bitmask: int32 [B, W] with 32 * W >= V (copied to the logits' device).
    """
    batch, vocab = logits.shape
    assert bitmask.dtype == torch.int32 and bitmask.shape[0] == batch and 32 * bitmask.shape[1] >= vocab
    words = bitmask.to(logits.device, non_blocking=True)  # [B, W]
    shifts = torch.arange(32, device=logits.device, dtype=torch.int32)  # [32]
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().view(batch, -1)[:, :vocab]  # [B, V]
    logits.masked_fill_(~allowed, float("-inf"))
