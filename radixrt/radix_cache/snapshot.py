"""The radix tree to and from a snapshot: what to save, in what order, and loading what fits.

Saving plans the tree once, parents first, as pieces of at most `piece_tokens` tokens (a long
edge becomes a chain of pieces), then copies pieces into a tier a bounded number of tokens per
call, so a save can run between scheduler steps while the tree keeps changing:

    plan:  root ─ [system prompt: 2,000 tokens] ─┬─ [question a]    pieces, parents first:
                                                 └─ [question b]    P0 P1 P2 P3 (≤ 512 each), a, b

A node evicted or flushed before its rows were copied is dropped with everything below it (its
slots may hold another request's KV by then); a node split meanwhile still holds every slot that
was planned (a split moves no slot), so its rows are the ones planned.

Loading inserts runs into the tree shallow first and, at one depth, the most hit first, while the
pool has free slots; a run that only partly fits is cut and nothing below it is loaded.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import torch

from radixrt.radix_cache.snapshot_file import SnapshotReader, SnapshotWriter
from radixrt.radix_cache.tier import TierError
from radixrt.radix_cache.tree import RadixCache, TreeNode


class _Piece(NamedTuple):
    node: TreeNode  # the node whose slots these are (dropped once it leaves the tree)
    salt: str
    parent: int  # index of the piece this one continues; -1: starts at a root
    ids: list[int]
    slots: torch.Tensor
    hits: int


def plan_pieces(tree: RadixCache, piece_tokens: int) -> list[_Piece]:
    """Every node's run cut into pieces of at most `piece_tokens`, breadth first."""
    pieces: list[_Piece] = []
    todo = deque((salt, child, -1) for salt, root in tree.roots() for child in root.children.values())
    while todo:
        salt, node, parent = todo.popleft()
        for start in range(0, len(node.key), piece_tokens):
            end = start + piece_tokens
            pieces.append(
                _Piece(node, salt, parent, node.key[start:end], node.value[start:end].clone(), node.hit_count)
            )
            parent = len(pieces) - 1
        todo.extend((salt, child, parent) for child in node.children.values())
    return pieces


class SaveJob:
    """Copies a planned tree into a snapshot writer, `advance(budget)` tokens at a time."""

    def __init__(self, tree: RadixCache, writer: SnapshotWriter, piece_tokens: int):
        self.tree = tree
        self.writer = writer
        self.pieces = plan_pieces(tree, piece_tokens)
        self.saved_tokens = 0
        self.dropped_tokens = 0  # evicted or flushed before they were copied
        self._next = 0
        self._run_of: dict[int, int] = {}  # piece -> run in the file; absent: dropped

    @property
    def finished(self) -> bool:
        return self._next == len(self.pieces)

    def advance(self, budget_tokens: int | None) -> None:
        """Copy pieces until `budget_tokens` (None: all) are copied or the writer has no room."""
        copied = 0
        while not self.finished and (budget_tokens is None or copied < budget_tokens) and self.writer.has_room():
            piece = self.pieces[self._next]
            alive = piece.node.parent is not None and (piece.parent < 0 or piece.parent in self._run_of)
            if alive:
                handle = self.writer.save_rows(self.tree.pool, piece.slots)
                parent_run = self._run_of[piece.parent] if piece.parent >= 0 else -1
                self._run_of[self._next] = self.writer.add_run(piece.salt, parent_run, piece.ids, piece.hits, handle)
                self.saved_tokens += len(piece.ids)
                copied += len(piece.ids)
            else:
                self.dropped_tokens += len(piece.ids)
            self._next += 1


class LoadResult(NamedTuple):
    tokens: int  # tokens inserted into the tree
    runs: int  # runs (or their first part) loaded
    skipped_tokens: int  # tokens of runs that did not fit the pool


def load_snapshot(reader: SnapshotReader, tree: RadixCache) -> LoadResult:
    """Insert the snapshot's runs into `tree` while its pool has free slots (none is evicted).

    Raises TierError when a block fails its checksum; the tree is emptied again first, so a
    damaged snapshot never serves a row.
    """
    runs, pool = reader.runs, tree.pool
    depth = [0] * len(runs)
    for i, run in enumerate(runs):  # a parent comes before its children (the reader checks)
        depth[i] = 0 if run.parent < 0 else depth[run.parent] + len(runs[run.parent].ids)
    order = sorted(range(len(runs)), key=lambda i: (depth[i], -runs[i].hits, i))
    paths: dict[int, tuple[list[int], torch.Tensor]] = {-1: ([], torch.empty(0, dtype=torch.int64))}
    tokens = loaded = 0
    try:
        for i in order:
            run = runs[i]
            n = min(len(run.ids), pool.num_free)
            if run.parent not in paths or n == 0:
                continue
            slots = pool.alloc(n)
            assert slots is not None, "n <= num_free"
            try:
                reader.load_rows(run.block, pool, slots)
            except TierError:
                pool.free(slots)
                raise
            parent_ids, parent_slots = paths[run.parent]
            ids, path_slots = parent_ids + run.ids[:n], torch.cat([parent_slots, slots])
            already = tree.insert(ids, path_slots, run.salt)
            if already > len(parent_ids):  # the tree held some of these tokens already
                pool.free(path_slots[len(parent_ids) : already])
            tokens += n
            loaded += 1
            if n == len(run.ids):
                paths[i] = (ids, path_slots)
    except TierError:
        tree.reset()
        raise
    return LoadResult(tokens, loaded, sum(len(r.ids) for r in runs) - tokens)
