"""The per-step batch handed to the model: new tokens of every request, flattened.

A batch mixes prefill ("extend") and decode requests. Request i contributes
`extend_lens[i]` new tokens whose K/V are written to `out_slots`; it attends to its whole
sequence (cached prefix + new tokens), whose slot ids are `kv_indices[kv_indptr[i]:kv_indptr[i+1]]`.

    tokens:     | req0 new (3) | req1 new (1) | req2 new (5) |      qo_indptr = [0, 3, 4, 9]
    kv slots:   | req0 prefix+new (7) | req1 (12) | req2 (5) |    kv_indptr = [0, 7, 19, 24]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] int64, new tokens of all requests
    positions: torch.Tensor  # [T] int64, position of each new token in its sequence
    out_slots: torch.Tensor  # [T] int64, KV slot that receives each new token's K/V
    qo_indptr: torch.Tensor  # [B+1] int32, new-token offsets per request
    kv_indptr: torch.Tensor  # [B+1] int32, offsets into kv_indices per request
    kv_indices: torch.Tensor  # [sum(seq_lens)] int64, slot ids of every request's full sequence
    extend_lens: list[int]  # new tokens per request
    seq_lens: list[int]  # prefix + new tokens per request
    logits_indices: torch.Tensor  # [R] int64, rows of the T tokens whose logits are returned
    # per request: its new tokens are (re)computed sequence, not the one token it just sampled;
    # a 1-token prefill (the rest of the prompt was cached) runs the prefill kernels, so that its
    # numerics, and the greedy output that follows, match a run that prefilled the whole prompt
    prefill: list[bool] | None = None
    # every row's bits must not depend on the batch or on how its prompt was split (greedy
    # requests): the kernels whose results do are not used for this forward
    invariant: bool = False

    def __post_init__(self) -> None:
        if self.prefill is None:
            self.prefill = [n > 1 for n in self.extend_lens]

    @property
    def batch_size(self) -> int:
        return len(self.extend_lens)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def is_decode(self) -> bool:
        return not any(self.prefill)

    @classmethod
    def build(
        cls,
        new_ids: list[list[int]],
        seq_slots: list[list[int]] | list[torch.Tensor],
        logit_rows: list[list[int]] | None = None,
        device: torch.device | str = "cpu",
        prefill: list[bool] | None = None,
        invariant: bool = False,
    ) -> ForwardBatch:
        """Build a batch from per-request new token ids and full-sequence slot ids.

        `seq_slots[i]` covers prefix + new tokens; its last `len(new_ids[i])` entries are
        where the new K/V go. `logit_rows[i]` lists offsets within request i's new tokens whose
        logits are wanted (default: the last one).
        """
        extend_lens = [len(ids) for ids in new_ids]
        seq_lens = [len(s) for s in seq_slots]
        assert all(0 < e <= s for e, s in zip(extend_lens, seq_lens)), (extend_lens, seq_lens)
        slots = [torch.as_tensor(s, dtype=torch.int64) for s in seq_slots]
        kv_indices = torch.cat(slots) if slots else torch.empty(0, dtype=torch.int64)
        out_slots = torch.cat([s[len(s) - e :] for s, e in zip(slots, extend_lens)])
        positions = torch.cat([torch.arange(s - e, s) for s, e in zip(seq_lens, extend_lens)])
        qo = [0]
        kv = [0]
        for e, s in zip(extend_lens, seq_lens):
            qo.append(qo[-1] + e)
            kv.append(kv[-1] + s)
        if logit_rows is None:
            logit_rows = [[e - 1] for e in extend_lens]
        rows = [qo[i] + r for i, rs in enumerate(logit_rows) for r in rs]
        as_long = lambda x: torch.as_tensor(x, dtype=torch.int64).to(device)  # noqa: E731
        return cls(
            input_ids=as_long([t for ids in new_ids for t in ids]),
            positions=positions.to(device),
            out_slots=out_slots.to(device),
            qo_indptr=torch.tensor(qo, dtype=torch.int32, device=device),
            kv_indptr=torch.tensor(kv, dtype=torch.int32, device=device),
            kv_indices=kv_indices.to(device),
            extend_lens=extend_lens,
            seq_lens=seq_lens,
            logits_indices=as_long(rows),
            prefill=prefill,
            invariant=invariant,
        )

    @classmethod
    def from_table(
        cls,
        new_ids: list[list[int]],
        table: torch.Tensor,
        rows: list[int],
        seq_lens: list[int],
        logit_rows: list[list[int]] | None = None,
        prefill: list[bool] | None = None,
        invariant: bool = False,
    ) -> ForwardBatch:
        """`build`'s batch where request i's slots are the first `seq_lens[i]` entries of
        `table[rows[i]]` (the request-to-token table, on the model's device): the host's numbers go
        to the device in one copy, and the slot ids are gathered there in a few whole-batch ops,
        not sliced request by request (a step's host time stays flat in the batch size)."""
        extend_lens = [len(ids) for ids in new_ids]
        assert all(0 < e <= s for e, s in zip(extend_lens, seq_lens)), (extend_lens, seq_lens)
        if logit_rows is None:
            logit_rows = [[e - 1] for e in extend_lens]
        tokens, batch, total = sum(extend_lens), len(extend_lens), sum(seq_lens)
        qo = [0, *itertools.accumulate(extend_lens)]
        host = [t for ids in new_ids for t in ids] + rows + seq_lens + extend_lens
        host += [qo[i] + r for i, rs in enumerate(logit_rows) for r in rs]
        numbers = torch.tensor(host, dtype=torch.int64)
        if table.device.type == "cuda":
            numbers = numbers.pin_memory().to(table.device, non_blocking=True)
        input_ids, rows_t, seq_t, ext_t, logits_indices = numbers.split(
            [tokens, batch, batch, batch, len(host) - tokens - 3 * batch]
        )
        kv_indptr = torch.nn.functional.pad(torch.cumsum(seq_t, 0), (1, 0))
        qo_indptr = torch.nn.functional.pad(torch.cumsum(ext_t, 0), (1, 0))
        # slot j of request i: table[rows[i], j], for j < seq_lens[i]
        kv_pos = torch.arange(total, device=table.device) - torch.repeat_interleave(
            kv_indptr[:-1], seq_t, output_size=total
        )
        kv_indices = table[torch.repeat_interleave(rows_t, seq_t, output_size=total), kv_pos]
        # new token k of request i sits at position seq_lens[i] - extend_lens[i] + k
        first = torch.repeat_interleave(seq_t - ext_t - qo_indptr[:-1], ext_t, output_size=tokens)
        positions = torch.arange(tokens, device=table.device) + first
        out_slots = table[torch.repeat_interleave(rows_t, ext_t, output_size=tokens), positions]
        return cls(
            input_ids=input_ids,
            positions=positions,
            out_slots=out_slots,
            qo_indptr=qo_indptr.to(torch.int32),
            kv_indptr=kv_indptr.to(torch.int32),
            kv_indices=kv_indices,
            extend_lens=extend_lens,
            seq_lens=list(seq_lens),
            logits_indices=logits_indices,
            prefill=prefill,
            invariant=invariant,
        )
