"""The radix tree snapshot and its SVG drawing (no server)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from radixrt.radix_cache.pool import KVPool
from radixrt.radix_cache.tree import RadixCache
from radixrt.radix_cache.tree_debug import snapshot
from radixrt.runtime.http.cache_svg import render_svg

SVG = "{http://www.w3.org/2000/svg}"


class LetterTokenizer:
    """Token id i decodes to the i-th lowercase letter; 26 decodes to markup and a control char."""

    def decode(self, ids: list[int]) -> str:
        return "".join("<&\x00>" if i == 26 else chr(ord("a") + i % 26) for i in ids)


def make_tree(sequences: list[list[int]], capacity: int = 4096) -> RadixCache:
    tree = RadixCache(KVPool(capacity + 1, num_layers=1, n_kv_heads=1, head_dim=1))
    for ids in sequences:
        tree.insert(ids, tree.pool.alloc(len(ids)))
    return tree


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(SVG + "text")]


def test_snapshot_lists_nodes_breadth_first_with_tokens_hits_and_locks():
    tree = make_tree([[0, 1, 2, 3], [0, 1, 7]])
    match = tree.match_prefix([0, 1, 7])
    tree.lock(match.last_node)
    snap = snapshot(tree, LetterTokenizer())
    root, shared, *leaves = snap["nodes"]
    assert root["parent"] == -1 and root["text"] == "<root>"
    assert shared == {"parent": 0, "depth": 1, "tokens": 2, "text": "ab", "hits": 1, "lock": 1}
    assert sorted((n["text"], n["lock"]) for n in leaves) == [("cd", 0), ("h", 1)]
    assert snap["total_nodes"] == 3 and snap["total_tokens"] == 5 and not snap["truncated"]


def test_svg_draws_one_box_per_node_labelled_with_its_text_and_counts():
    tree = make_tree([[0, 1, 2, 3], [0, 1, 7], [26, 3]])
    svg = render_svg(snapshot(tree, LetterTokenizer()))
    root = ET.fromstring(svg)  # well-formed XML, markup and control characters escaped
    assert len(list(root.iter(SVG + "rect"))) == 5
    labels = texts(svg)
    assert "ab" in labels and "cd" in labels and "<&\\x00>d" in labels
    assert "2 tok  hits 0  lock 0" in labels
    assert labels[0].startswith("radix cache: 4 nodes, 7 tokens")


def test_wider_boxes_for_nodes_with_more_tokens():
    tree = make_tree([[1] + [2] * 200, [3]])
    rects = list(ET.fromstring(render_svg(snapshot(tree, None))).iter(SVG + "rect"))
    widths = sorted(float(r.get("width")) for r in rects[1:])
    assert widths[0] < widths[1]


def test_a_large_tree_is_drawn_up_to_max_nodes_and_says_so():
    # a chain 600 deep: each insert splits the previous leaf, so nothing here may recurse
    tree = make_tree([list(range(i)) + [5000 + i] for i in range(1, 601)], capacity=200_000)
    snap = snapshot(tree, None, max_nodes=50)
    assert len(snap["nodes"]) == 50 and snap["truncated"] and snap["total_nodes"] > 600
    svg = render_svg(snap)
    assert len(list(ET.fromstring(svg).iter(SVG + "rect"))) == 50
    assert f"showing 49 of {snap['total_nodes']} nodes" in texts(svg)[0]


def test_an_empty_cache_draws_just_the_root():
    tree = RadixCache(KVPool(9, num_layers=1, n_kv_heads=1, head_dim=1))
    svg = render_svg(snapshot(tree, None))
    assert len(list(ET.fromstring(svg).iter(SVG + "rect"))) == 1
    assert "radix cache: 0 nodes, 0 tokens (all nodes shown)" in texts(svg)
