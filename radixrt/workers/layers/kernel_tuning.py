"""Time the candidates of a CPU linear on this machine and remember the result.

For one weight shape and dtype, each candidate (layers/linear_candidates.py) is
  - checked against a float64 reference (a wrong candidate is never chosen),
  - checked for row invariance: a row computed alone and inside batches of other sizes must be
    bit-identical (what a radix-cache hit or a batch needs so that it never changes an output),
  - timed at the row counts in `ROWS`: candidates take turns, and the median of their rounds counts.
    Calls rotate over the model's linears of that shape (as many as exceed twice the last-level
    cache), so that weights come from memory as they do in a forward, not from a warm cache.
The measurements are cached in `$RADIXRT_KERNEL_CACHE/linear_tuning.json` under a key naming the
CPU, its flags, the compiled kernels, torch's version and the thread count, so later starts on the
same machine measure nothing; timings taken while other processes took the CPUs (other_load.py)
serve their own start only and are never cached.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from radixrt.workers.layers import cpu_kernels, linear_candidates
from radixrt.workers.layers.other_load import OtherLoad

logger = logging.getLogger(__name__)

ROWS = (1, 4, 16, 64, 256)  # decode batches and a prefill chunk
INVARIANCE_ROWS = (2, 3, 5, 8, 9, 17, 48, 64, 100, 256)
ROUNDS = 5
MIN_SAMPLE_S = 2e-3  # calls are repeated until a sample lasts this long
TUNING_VERSION = 4  # bumped whenever how candidates are measured changes (4: disturbed timings are not kept)
GIVE_UP_FACTOR = 4.0  # a candidate this much slower than the best at its first sample is dropped


@dataclass(frozen=True)
class Measurement:
    """Of the `tried` candidates, the correct ones: seconds[candidate][rows] (missing where it was
    given up as too slow) and invariant[candidate]."""

    tried: tuple[str, ...]
    seconds: dict[str, dict[int, float]]
    invariant: dict[str, bool]

    def to_json(self) -> dict:
        seconds = {c: {str(m): s for m, s in t.items()} for c, t in self.seconds.items()}
        return {"tried": list(self.tried), "seconds": seconds, "invariant": self.invariant}

    @classmethod
    def from_json(cls, data: dict) -> Measurement:
        seconds = {c: {int(m): float(s) for m, s in t.items()} for c, t in data["seconds"].items()}
        return cls(tuple(data["tried"]), seconds, {c: bool(v) for c, v in data["invariant"].items()})


def shape_key(n: int, k: int, dtype: torch.dtype, has_bias: bool) -> str:
    return f"{n}x{k}:{str(dtype).removeprefix('torch.')}:{'bias' if has_bias else 'nobias'}"


def machine_key() -> str:
    return f"v{TUNING_VERSION}|{cpu_kernels.build_id()}|torch={torch.__version__}|threads={torch.get_num_threads()}"


def cache_file() -> Path:
    return cpu_kernels.build_dir() / "linear_tuning.json"


Instance = tuple[torch.Tensor, "torch.Tensor | None"]  # (plain weight [N, K], bias)


def measure(instances: list[Instance], candidates: list[str]) -> Measurement:
    """Check `candidates` on the first (weight, bias) of one shape and time them over all given."""
    weight, bias = instances[0]
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(max(ROWS + INVARIANCE_ROWS), weight.shape[1], generator=gen) * 0.5).to(weight.dtype)
    runs = {c: _runner(c, linear_candidates.PREPARE[c](weight), bias) for c in candidates}
    correct = [c for c in candidates if _is_correct(runs[c], x[: max(ROWS)], weight, bias)]
    for c in set(candidates) - set(correct):
        logger.warning("linear candidate %s gives wrong results for %s; never chosen", c, tuple(weight.shape))
    invariant = {c: _is_row_invariant(runs[c], x) for c in correct}
    timed = _cold_set(instances)
    rotating = {c: _rotating(c, timed) for c in correct}
    seconds = {c: {} for c in correct}
    keep = {c for c in correct if invariant[c]}  # batch-invariant mode needs their every row
    for m in ROWS:
        for c, s in _time_rows(rotating, x[:m].contiguous(), keep).items():
            seconds[c][m] = s
    return Measurement(tuple(candidates), seconds, invariant)


def cached_measure(instances: list[Instance], candidates: list[str]) -> Measurement:
    """`measure`, or what an earlier start on this machine measured for the same shape."""
    weight, bias = instances[0]
    key, shape = machine_key(), shape_key(*weight.shape, weight.dtype, bias is not None)
    table = read_table(cache_file())
    entry = table.get(key, {}).get(shape)
    try:
        found = None if entry is None else Measurement.from_json(entry)
    except (KeyError, TypeError, ValueError):
        found = None  # written by another version: measure again
    if found is not None and found.tried == tuple(candidates):
        return found
    with OtherLoad() as load:
        result = measure(instances, candidates)
    if undisturbed(load, "linear kernel timings"):
        save_entry(cache_file(), key, shape, result.to_json(), "linear kernel timings")
    return result


_warned: set[str] = set()


def undisturbed(load: OtherLoad, what: str) -> bool:
    """Whether timings taken under `load` may be cached; where others took the CPUs meanwhile they
    serve this start only (a warning says so, once per kind), and the next start measures again."""
    reading = load.reading
    if reading is None or not reading.disturbed:
        return True
    if what not in _warned:
        _warned.add(what)
        logger.warning("%s were taken while other processes used %.0f%% of this process's CPUs: they serve this "
                       "start only and are not cached; a start on a quiet machine measures again", what,
                       100 * reading.share)  # fmt: skip
    return False


def _runner(name: str, state: object, bias: torch.Tensor | None):
    run = linear_candidates.RUN[name]
    return lambda x: run(x, state, bias)


def _cold_set(instances: list[Instance]) -> list[Instance]:
    """Enough of `instances` that their weights together exceed twice the last-level cache."""
    chosen, size = [], 0
    for weight, bias in instances:
        if size > 2 * last_level_cache_bytes():
            break
        chosen.append((weight, bias))
        size += weight.numel() * weight.element_size()
    return chosen


def _rotating(name: str, instances: list[Instance]):
    """A call of candidate `name` that takes the next instance's weights each time."""
    run = linear_candidates.RUN[name]
    states = itertools.cycle([(linear_candidates.PREPARE[name](w), b) for w, b in instances])

    def call(x: torch.Tensor) -> torch.Tensor:
        state, bias = next(states)
        return run(x, state, bias)

    return call


@functools.cache
def last_level_cache_bytes() -> int:
    """The largest CPU cache's size from sysfs (32 MiB where it cannot be read)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        sizes.append(int(text.rstrip("KMGkmg")) * unit)
    return max(sizes, default=32 << 20)


def _is_correct(run, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    expected = torch.nn.functional.linear(x.double(), weight.double(), None if bias is None else bias.double())
    got = run(x).double()
    tolerance = (2**-7 if weight.dtype == torch.bfloat16 else 1e-5) * expected.abs().max().item() + 1e-3
    return got.shape == expected.shape and (got - expected).abs().max().item() <= tolerance


def _is_row_invariant(run, x: torch.Tensor) -> bool:
    """Rows 0 and m-1 of an m-row call equal the same rows computed alone, for every m tried."""
    first = run(x[:1].contiguous())[0]
    for m in INVARIANCE_ROWS:
        out = run(x[:m].contiguous())
        if not (torch.equal(out[0], first) and torch.equal(out[m - 1], run(x[m - 1 : m].contiguous())[0])):
            return False
    return True


def _time_rows(runs: dict, x: torch.Tensor, keep: set[str] = frozenset()) -> dict[str, float]:
    """Median seconds per call of each run on `x`; candidates alternate so that noise hits all.
    One far slower than the best at its first sample is given up, unless it is in `keep`."""
    reps, samples = {}, {}
    for name, run in runs.items():
        run(x)  # warm up: first-touch pages, oneDNN's primitive cache
        once = max(min(_seconds(run, x) for _ in range(3)), 1e-7)  # the least disturbed of 3
        reps[name], samples[name] = max(1, int(MIN_SAMPLE_S / once)), [once]
    best = min(s[0] for s in samples.values())
    alive = [n for n in runs if n in keep or samples[n][0] <= GIVE_UP_FACTOR * best]
    for _ in range(ROUNDS):
        for name in alive:
            start = time.perf_counter()
            for _ in range(reps[name]):
                runs[name](x)
            samples[name].append((time.perf_counter() - start) / reps[name])
    return {n: statistics.median(samples[n][1:]) for n in alive}


def _seconds(run, x: torch.Tensor) -> float:
    start = time.perf_counter()
    run(x)
    return time.perf_counter() - start


def read_table(path: Path) -> dict:
    """A cache file's {machine key: {shape key: entry}}; empty where it is missing or corrupt."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def save_entry(path: Path, key: str, shape: str, entry: dict, what: str) -> None:
    """Merge one entry into the cache file; atomic, so concurrent starts never see half a file."""
    table = read_table(path)
    table.setdefault(key, {})[shape] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}")
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache only costs the next start a measurement
        logger.warning("could not save %s to %s: %s", what, path, e)
