"""KV slot pool (page size 1) and the request-to-token table.

Slot 0 is reserved as a padding slot: it is never handed out, so padded batches (CUDA graphs)
can write their dummy tokens there without touching anyone's cache.
"""

from __future__ import annotations

import torch


class KVPool:
    """Per-layer K and V buffers `[num_slots, n_kv_heads, head_dim]` plus a free list of slot ids."""

    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        if num_slots < 2:
            raise ValueError(f"num_slots must be >= 2 (slot 0 is padding), got {num_slots}")
        self.num_slots = num_slots
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_layers, self.n_kv_heads, self.head_dim = num_layers, n_kv_heads, head_dim
        shape = (num_slots, n_kv_heads, head_dim)
        self.k_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._free = torch.arange(1, num_slots, dtype=torch.int64)
        self._num_free = num_slots - 1
        self._is_free = torch.ones(num_slots, dtype=torch.bool)
        self._is_free[0] = False  # the padding slot is never free

    @property
    def capacity(self) -> int:
        """Slots that can ever be handed out (all but the padding slot)."""
        return self.num_slots - 1

    @property
    def num_free(self) -> int:
        return self._num_free

    def alloc(self, n: int) -> torch.Tensor | None:
        """Take `n` free slots (int64 on CPU), or None when fewer are free; nothing changes then."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} slots")
        if n > self._num_free:
            return None
        start = self._num_free - n
        out = self._free[start : self._num_free].clone()
        self._is_free[out] = False
        self._num_free = start
        return out

    def free(self, slots: torch.Tensor) -> None:
        n = int(slots.numel())
        if n == 0:
            return
        slots = slots.to(torch.int64).cpu()
        if bool(self._is_free[slots].any()) or bool((slots == 0).any()) or slots.unique().numel() != n:
            raise RuntimeError("double free in KVPool")
        self._is_free[slots] = True
        self._free[self._num_free : self._num_free + n] = slots
        self._num_free += n

    # ---- rows: what a lower cache tier copies out and back (radix_cache/tier.py) --------------

    def read_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """K and V of `slots` in every layer, copied to the host: `[layers, 2, len(slots), n_kv_heads, head_dim]`."""
        index = slots.to(self.device, torch.int64)
        rows = torch.empty((self.num_layers, 2, index.numel(), self.n_kv_heads, self.head_dim), dtype=self.dtype,
                           device=self.device)  # fmt: skip
        for layer, (k, v) in enumerate(zip(self.k_buffers, self.v_buffers)):
            torch.index_select(k, 0, index, out=rows[layer, 0])
            torch.index_select(v, 0, index, out=rows[layer, 1])
        return rows.cpu()

    def write_rows(self, slots: torch.Tensor, rows: torch.Tensor) -> None:
        """Store `rows` (the shape `read_rows` returns) as the K and V of `slots`."""
        index = slots.to(self.device, torch.int64)
        expected = (self.num_layers, 2, index.numel(), self.n_kv_heads, self.head_dim)
        if tuple(rows.shape) != expected or rows.dtype != self.dtype:
            raise ValueError(f"rows {tuple(rows.shape)} {rows.dtype} do not fit {expected} {self.dtype}")
        rows = rows.to(self.device)
        for layer, (k, v) in enumerate(zip(self.k_buffers, self.v_buffers)):
            k.index_copy_(0, index, rows[layer, 0])
            v.index_copy_(0, index, rows[layer, 1])

    @staticmethod
    def bytes_per_slot(num_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * n_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


class ReqToToken:
    """`[max_running, max_context]` table of slot ids per running request, plus free rows.

    On a GPU, writes wait on the host and go to the device together, in one copy, when the table
    is next read (a decode step appends one slot to every running request: one small copy each
    would be a host round trip per request). On the CPU they are made at once."""

    def __init__(self, max_running: int, max_context: int, device: torch.device | str = "cpu",
                 deferred: bool | None = None):  # fmt: skip
        self._table = torch.zeros((max_running, max_context), dtype=torch.int64, device=device)
        self.max_context = max_context
        self._free_rows = list(range(max_running - 1, -1, -1))
        self._deferred = self._table.device.type != "cpu" if deferred is None else deferred
        self._pending: list[tuple[int, int, torch.Tensor]] = []

    @property
    def table(self) -> torch.Tensor:
        self.flush()
        return self._table

    @property
    def num_free(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        self._free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        if not self._deferred:
            self._table[row, start : start + slots.numel()] = slots.to(self._table.device)
            return
        self._pending.append((row, start, slots.to("cpu", torch.int64)))

    def flush(self) -> None:
        """Make the waiting writes, in order: of several writes to one entry the last one stays."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        key = torch.cat([row * self.max_context + torch.arange(start, start + s.numel()) for row, start, s in pending])
        values = torch.cat([s for _, _, s in pending])
        entries, which = torch.unique(key, return_inverse=True)
        if entries.numel() < key.numel():  # index_put_ leaves repeated indices' order unspecified
            last = torch.full((entries.numel(),), -1, dtype=torch.int64)
            last.scatter_reduce_(0, which, torch.arange(key.numel()), "amax")
            key, values = key[last], values[last]
        packed = torch.stack([key, values])
        if self._table.device.type == "cuda":
            packed = packed.pin_memory()
        key, values = packed.to(self._table.device, non_blocking=True)
        self._table.view(-1).index_put_((key,), values)

    def read(self, row: int, length: int) -> torch.Tensor:
        return self.table[row, :length]
