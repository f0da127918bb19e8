"""How much of this process's CPUs other processes took while kernels were being timed.

Kernel timings are cached per machine and trusted by every later start, so one taken while
something else ran (a compile, another server's start) must not be kept: on 2 cores shared with a
compile, every linear of the embedded model timed ~8 ms a call whatever its shape and candidate
(22 us alone), and the choices made from those numbers were a coin toss. Other load is the CPU time
that the CPUs this process may run on spent busy (or stolen by the hypervisor) beyond this
process's own CPU time, from /proc/stat and getrusage: no privileges, no scheduler statistics.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

MAX_SHARE = 0.2  # more of the CPUs' time than this taken by others: the timings are disturbed
MIN_SECONDS = 0.05  # /proc/stat counts in 10 ms ticks: less than this is rounding, not load
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LoadReading:
    wall_s: float
    cpus: int
    others_s: float  # CPU seconds the CPUs spent on anything but this process

    @property
    def share(self) -> float:
        return self.others_s / (self.wall_s * self.cpus) if self.wall_s > 0 and self.cpus else 0.0

    @property
    def disturbed(self) -> bool:
        return self.others_s > MIN_SECONDS and self.share > MAX_SHARE


class OtherLoad:
    """`with OtherLoad() as load: ...` then `load.reading`; the reading is None where /proc/stat
    cannot be read (not Linux): nothing is known, and nothing is called disturbed."""

    def __init__(self) -> None:
        self.reading: LoadReading | None = None

    def __enter__(self) -> OtherLoad:
        self._cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self._start = (time.perf_counter(), _busy_seconds(self._cpus), _own_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, busy0, own0 = self._start
        busy1 = _busy_seconds(self._cpus)
        if busy0 is None or busy1 is None:
            return
        others = max((busy1 - busy0) - (_own_seconds() - own0), 0.0)
        self.reading = LoadReading(time.perf_counter() - wall0, len(self._cpus), others)


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _busy_seconds(cpus: list[int]) -> float | None:
    """Busy plus stolen seconds of `cpus`, summed over them, from /proc/stat."""
    wanted = {f"cpu{i}" for i in cpus}
    total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name in wanted:
                    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
                    values = [int(v) for v in fields[:8]]
                    total += sum(values) - values[3] - values[4]
    except (OSError, ValueError, IndexError):
        return None
    return total * _TICK_S if wanted else None
