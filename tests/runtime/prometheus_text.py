"""A strict parser of the Prometheus text exposition format 0.0.4, for tests.

Raises ValueError on anything a Prometheus server would reject or that breaks the format's
rules: bad names or escapes, samples before their TYPE, a family split in two, duplicate
series, negative counters, histogram buckets that are not cumulative or disagree with _count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?$")
LABEL_PAIR = re.compile(rf'\s*({LABEL})="((?:[^"\\]|\\["\\n])*)"\s*(,|$)')
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, sample: str | None = None, **labels: str) -> float:
        """The one sample named `sample` (default: the family name) with exactly these labels."""
        want = sample or self.name
        hits = [v for n, lbl, v in self.samples if n == want and lbl == labels]
        if len(hits) != 1:
            raise KeyError(f"{want}{labels}: {len(hits)} samples")
        return hits[0]


def parse(text: str) -> dict[str, Family]:
    if text and not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    families: dict[str, Family] = {}
    closed: set[str] = set()
    current: str | None = None
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            if line.startswith("#"):
                name = _comment(line, families)
            else:
                name = _sample(line, families, seen)
        except ValueError as e:
            raise ValueError(f"line {number}: {e}: {line!r}") from None
        if name is None:
            continue
        if name != current:
            if name in closed:
                raise ValueError(f"line {number}: family {name} appears in two places")
            if current is not None:
                closed.add(current)
            current = name
    for family in families.values():
        _check_family(family)
    return families


def _comment(line: str, families: dict[str, Family]) -> str | None:
    parts = line.split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
        return None  # a plain comment
    kind, name = parts[1], parts[2]
    if not re.fullmatch(NAME, name):
        raise ValueError(f"bad metric name {name!r}")
    family = families.setdefault(name, Family(name))
    text = parts[3] if len(parts) > 3 else ""
    if kind == "TYPE":
        if text not in TYPES:
            raise ValueError(f"unknown type {text!r}")
        if family.samples or family.type != "untyped":
            raise ValueError("TYPE after samples or twice")
        family.type = text
    else:
        if family.help is not None:
            raise ValueError("HELP twice")
        if not re.fullmatch(r"(?:[^\\]|\\[\\n])*", text):
            raise ValueError("bad escape in HELP")
        family.help = _unescape(text)
    return name


def _sample(line: str, families: dict[str, Family], seen: set) -> str:
    match = SAMPLE.match(line)
    if not match:
        raise ValueError("not a sample line")
    name, raw_labels, raw_value, _ = match.groups()
    labels = _labels(raw_labels or "")
    family = _family_of(name, families)
    key = (name, tuple(sorted(labels.items())))
    if key in seen:
        raise ValueError("duplicate series")
    seen.add(key)
    family.samples.append((name, labels, _float(raw_value)))
    return family.name


def _labels(raw: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        match = LABEL_PAIR.match(raw, pos)
        if not match or match.end() == pos:
            raise ValueError(f"bad labels {raw!r}")
        key, value = match.group(1), match.group(2)
        if key in labels:
            raise ValueError(f"label {key} twice")
        labels[key] = _unescape(value)
        pos = match.end()
    return labels


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def _family_of(name: str, families: dict[str, Family]) -> Family:
    if name in families and families[name].type not in SUFFIXES:
        return families[name]
    for base, family in families.items():
        for suffix in SUFFIXES.get(family.type, ()):
            if suffix and name == base + suffix:
                return family
    if name in families:
        raise ValueError(f"{name}: a {families[name].type} has no plain sample")
    return families.setdefault(name, Family(name))


def _float(raw: str) -> float:
    if raw in ("+Inf", "-Inf", "NaN"):
        return float(raw.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", raw):
        raise ValueError(f"bad value {raw!r}")
    return float(raw)


def _check_family(family: Family) -> None:
    if family.type == "counter" and any(v < 0 or math.isnan(v) for _, _, v in family.samples):
        raise ValueError(f"{family.name}: a counter below zero")
    if family.type == "histogram":
        _check_histogram(family)


def _check_histogram(family: Family) -> None:
    buckets = [(lbl, v) for n, lbl, v in family.samples if n.endswith("_bucket")]
    if any(set(lbl) != {"le"} for lbl, _ in buckets):
        raise ValueError(f"{family.name}: a bucket without le (or with other labels)")
    bounds = [_float(lbl["le"]) for lbl, _ in buckets]
    counts = [v for _, v in buckets]
    if bounds != sorted(bounds) or not bounds or bounds[-1] != math.inf:
        raise ValueError(f"{family.name}: buckets not sorted or no +Inf bucket")
    if counts != sorted(counts):
        raise ValueError(f"{family.name}: buckets are not cumulative")
    if counts[-1] != family.value(family.name + "_count"):
        raise ValueError(f"{family.name}: +Inf bucket != _count")
    family.value(family.name + "_sum")
