"""Debug views and invariant checks of radix tree nodes (used by `RadixCache`)."""

from __future__ import annotations

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
