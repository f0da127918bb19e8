"""Debug views and invariant checks of radix tree nodes (used by `RadixCache`), and `snapshot`: a
bounded picture of one salt's tree as plain data, which the worker sends for `GET /debug/cache`
(CacheManager.view; the frontend draws it, runtime/http/cache_svg.py).

The snapshot holds at most `max_nodes` nodes, breadth first so that the top of the tree is always
shown, each with its parent's index, token count, the start of its text, and hit and lock counts.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from radixrt.radix_cache.tree import TreeNode


def check_node(node: TreeNode) -> None:
    parent = node.parent
    problems = []
    if parent is not None and node.depth != parent.depth + len(parent.key):
        problems.append(f"depth {node.depth} vs parent's end {parent.depth + len(parent.key)}")
    if not node.key or len(node.key) != node.value.numel():
        problems.append(f"key length {len(node.key)} vs {node.value.numel()} slots")
    if parent is None or parent.children.get(node.key[0] if node.key else None) is not node:
        problems.append("not linked from its parent under its first token")
    upper_lock = parent.lock_ref if parent is not None and parent.key else None
    if node.lock_ref < 0 or (upper_lock is not None and upper_lock < node.lock_ref):
        problems.append(f"lock_ref {node.lock_ref} vs parent's {upper_lock}")
    if problems:
        raise AssertionError(f"{node!r}: " + "; ".join(problems))


def check_slots(values: list[torch.Tensor]) -> None:
    if not values:
        return
    slots = torch.cat(values)
    if bool((slots == 0).any()):
        raise AssertionError("the tree holds the padding slot 0")
    unique = int(torch.unique(slots).numel())
    if unique != slots.numel():
        raise AssertionError(f"{slots.numel() - unique} slots are held twice by the tree")


def node_dict(node: TreeNode, tokenizer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": node.id,
        "key": list(node.key),
        "slots": node.value.tolist(),
        "lock_ref": node.lock_ref,
        "last_access": node.last_access,
        "hit_count": node.hit_count,
    }
    if tokenizer is not None:
        out["text"] = tokenizer.decode(list(node.key))
    out["children"] = [node_dict(c, tokenizer) for _, c in sorted(node.children.items())]
    return out


def draw(d: dict[str, Any], depth: int, lines: list[str]) -> None:
    if depth == 0:
        label = "<root>"
    else:
        label = repr(d["text"]) if "text" in d else " ".join(map(str, d["key"]))
    lines.append(
        f"{'  ' * depth}{label}  [id={d['id']} n={len(d['key'])} lock={d['lock_ref']} "
        f"t={d['last_access']} hits={d['hit_count']}]"
    )
    for child in d["children"]:
        draw(child, depth + 1, lines)


LABEL_TOKENS = 12  # tokens decoded for a node's label
LABEL_CHARS = 48  # of a node's text in a snapshot


def snapshot(tree: Any, tokenizer: Any, max_nodes: int = 500, salt: str = "") -> dict[str, Any]:
    """`salt`'s tree as plain data: `nodes` (breadth first, root first, each with its parent's index),
    `total_nodes` and `total_tokens` of that whole tree, and whether nodes were left out."""
    nodes: list[dict[str, Any]] = []
    total_nodes = total_tokens = 0
    queue: deque[tuple[Any, int, int]] = deque([(tree.root_of(salt), -1, 0)])
    while queue:
        node, parent, depth = queue.popleft()
        total_nodes += 1
        total_tokens += len(node.key)
        drawn = len(nodes) < max_nodes  # breadth first: a drawn node's parent is drawn too
        if drawn:
            nodes.append(_node_entry(node, parent, depth, tokenizer))
        for _, child in sorted(node.children.items()):
            queue.append((child, len(nodes) - 1 if drawn else -2, depth + 1))
    return {"nodes": nodes, "total_nodes": total_nodes - 1, "total_tokens": total_tokens,
            "truncated": len(nodes) < total_nodes}  # fmt: skip


def _node_entry(node: Any, parent: int, depth: int, tokenizer: Any) -> dict[str, Any]:
    is_root = parent == -1
    text = "<root>" if is_root else _label(tokenizer, list(node.key[:LABEL_TOKENS]))
    return {"parent": parent, "depth": depth, "tokens": len(node.key), "text": text,
            "hits": int(node.hit_count), "lock": int(node.lock_ref)}  # fmt: skip


def _label(tokenizer: Any, ids: list[int]) -> str:
    try:
        text = tokenizer.decode(ids) if tokenizer is not None else " ".join(map(str, ids))
    except Exception:  # noqa: BLE001 - a label is best effort
        text = " ".join(map(str, ids))
    return text[:LABEL_CHARS]
