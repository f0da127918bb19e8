"""`GET /debug/cache`: the radix tree as an SVG drawing.

The worker takes a bounded `snapshot` of its tree (radix_cache/tree_debug.py: plain data, at most
`max_nodes` nodes, breadth first so the top of the tree is always shown); the frontend draws it
with `render_svg`: one box per node, left to right by depth, its width growing with the node's
tokens, labelled with the start of its text and its hit and lock counts.
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape, quoteattr

LABEL_CHARS = 24  # of a node's text drawn in its box
COL_W, ROW_H, HEADER_H, MARGIN = 240, 34, 30, 10
BOX_MIN_W, BOX_MAX_W = 40, COL_W - 40


def render_svg(snap: dict[str, Any]) -> str:
    """An SVG document drawing `snap` (as made by `snapshot`)."""
    nodes = snap["nodes"]
    rows = _rows(nodes)
    depth = max((n["depth"] for n in nodes), default=0)
    width = 2 * MARGIN + (depth + 1) * COL_W
    height = HEADER_H + 2 * MARGIN + max(rows, default=0) * ROW_H + ROW_H
    shown = f"showing {len(nodes) - 1} of {snap['total_nodes']} nodes" if snap["truncated"] else "all nodes shown"
    title = f"radix cache: {snap['total_nodes']} nodes, {snap['total_tokens']} tokens ({shown})"
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace"'
    parts = [
        svg + ' font-size="10">',
        f'<text x="{MARGIN}" y="{MARGIN + 12}" font-size="13">{_xml(title)}</text>',
    ]
    boxes = [_box(n, rows[i]) for i, n in enumerate(nodes)]
    for i, n in enumerate(nodes):
        if n["parent"] >= 0:
            parts.append(_edge(boxes[n["parent"]], boxes[i]))
    for i, n in enumerate(nodes):
        parts.append(_node_svg(n, boxes[i]))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _rows(nodes: list[dict[str, Any]]) -> list[int]:
    """Each node's row: pre-order, a node on the row of its first leaf (no recursion: trees get deep)."""
    children: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        if n["parent"] >= 0:
            children[n["parent"]].append(i)
    rows = [0] * len(nodes)
    row, stack = 0, [0] if nodes else []
    while stack:
        i = stack.pop()
        rows[i] = row
        if children[i]:
            stack.extend(reversed(children[i]))
        else:
            row += 1
    return rows


def _box(node: dict[str, Any], row: int) -> tuple[float, float, float]:
    """(x, y, width): width grows with the log of the node's tokens."""
    w = min(BOX_MAX_W, BOX_MIN_W + 14 * math.log2(1 + node["tokens"]))
    return MARGIN + node["depth"] * COL_W, HEADER_H + MARGIN + row * ROW_H, w


def _edge(parent: tuple[float, float, float], child: tuple[float, float, float]) -> str:
    x1, y1 = parent[0] + parent[2], parent[1] + ROW_H / 2 - 3
    x2, y2 = child[0], child[1] + ROW_H / 2 - 3
    mid = (x1 + x2) / 2
    curve = f"M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
    return f'<path d="{curve}" fill="none" stroke="#999"/>'


def _node_svg(node: dict[str, Any], box: tuple[float, float, float]) -> str:
    x, y, w = box
    fill = "#ddd" if node["parent"] == -1 else ("#f4a261" if node["lock"] else "#8ecae6")
    label = node["text"] if len(node["text"]) <= LABEL_CHARS else node["text"][: LABEL_CHARS - 1] + "…"
    stats = f"{node['tokens']} tok  hits {node['hits']}  lock {node['lock']}"
    tip = f"{node['text']!r}: {stats}"
    return (
        f"<g><title>{_xml(tip)}</title>"
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{ROW_H - 6}" rx="3" fill={quoteattr(fill)}'
        ' stroke="#555"/>'
        f'<text x="{x + 3:.0f}" y="{y + 11:.0f}">{_xml(label)}</text>'
        f'<text x="{x + 3:.0f}" y="{y + 23:.0f}" fill="#333">{_xml(stats)}</text></g>'
    )


def _xml(text: str) -> str:
    """Text safe inside an XML element: control characters (not allowed in XML 1.0) shown escaped."""
    clean = "".join(c if c >= " " or c in "\t" else repr(c)[1:-1] for c in text)
    clean = clean.encode("utf-8", "replace").decode("utf-8")
    return escape(clean)
