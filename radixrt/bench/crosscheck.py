"""Outputs cross-checked between systems, program by program.

On a greedy workload radixrt, radixrt-nocache and radixrt-nospec run the same program on the same
weights and kernels; the cache only decides which prompt tokens are computed again, and speculation
only which tokens are verified in one forward (each as its decode step would compute it), so their
outputs must be identical (`MUST_MATCH`): any difference is reported and fails the run. The other systems are
compared with radixrt and their agreement reported (bf16 / Q4_1 numerics on other kernels can
flip a near-tie, after which the texts part ways), as is radixrt running each program alone
against the same program in the batch.
"""

from __future__ import annotations

from typing import Any

BASE = "radixrt"
MUST_MATCH = ("radixrt-nocache", "radixrt-nospec")
_EXCERPT = 60


def compare(base: list[dict[str, Any] | None], other: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Agreement of `other` with `base`, program by program (a program that failed on either
    side counts as compared and not identical)."""
    programs = identical = fields = same_fields = 0
    first: dict[str, Any] | None = None
    for i, (a, b) in enumerate(zip(base, other)):
        programs += 1
        if a is None or b is None:
            first = first or {"program": i, "field": None, "radixrt": _show(a), "other": _show(b)}
            continue
        identical += a == b
        for key in a:
            fields += 1
            same_fields += a[key] == b.get(key)
            if a[key] != b.get(key) and first is None:
                first = {"program": i, "field": key, **_difference(a[key], b.get(key))}
    return {
        "programs": programs,
        "identical_programs": identical,
        "program_agreement": identical / programs if programs else None,
        "field_agreement": same_fields / fields if fields else None,
        "first_difference": first,
    }


def crosscheck(outputs: dict[str, list[dict[str, Any] | None]], greedy: bool) -> dict[str, Any]:
    """Every system's agreement with radixrt on one workload; `failed` names the systems that
    must match radixrt and did not (greedy workloads only)."""
    if not greedy or BASE not in outputs:
        return {"greedy": greedy, "pairs": {}, "failed": []}
    pairs = {name: compare(outputs[BASE], out) for name, out in outputs.items() if name != BASE}
    failed = [
        name for name in MUST_MATCH if name in pairs and pairs[name]["identical_programs"] < pairs[name]["programs"]
    ]
    return {"greedy": True, "pairs": pairs, "failed": failed}


def failure_lines(workload: str, check: dict[str, Any]) -> list[str]:
    """What to print, loudly, for each system that had to match radixrt and did not."""
    lines = []
    for name in check["failed"]:
        pair = check["pairs"][name]
        diff = pair["first_difference"] or {}
        lines.append(
            f"[crosscheck] MISMATCH {workload}: {name} differs from radixrt on "
            f"{pair['programs'] - pair['identical_programs']} of {pair['programs']} programs; first: program "
            f"{diff.get('program')} field {diff.get('field')!r}: radixrt {diff.get('radixrt')!r} vs {diff.get('other')!r}"
        )
    return lines


def _difference(a: Any, b: Any) -> dict[str, Any]:
    """Excerpts of two values around where they first differ."""
    a, b = _flat(a), _flat(b)
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(at - _EXCERPT // 2, 0)
    return {"char": at, "radixrt": a[start : start + _EXCERPT], "other": b[start : start + _EXCERPT]}


def _flat(value: Any) -> str:
    return "\u241e".join(map(str, value)) if isinstance(value, list) else str(value)


def _show(value: Any) -> str:
    return "(failed)" if value is None else _flat(value)[:_EXCERPT]
