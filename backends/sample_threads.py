"""How many intra-op threads the CPU sampler decodes on: every core while the machine is otherwise idle, fewer as
soon as other work keeps cores busy.

Token-by-token decoding is thousands of tiny parallel regions per token, and each waits for its slowest thread.
On an idle machine all cores decode faster than half of them; with one other busy process (a rollout's tool, an
env service), a thread on every core keeps being descheduled and holds the others up, and all cores decode about
twice as slowly as one fewer (bench/cpu_policy.py times both). Neither fixed choice is right for a trainer whose
services come and go, so the sampler looks, between tokens, at how much CPU the rest of the machine used over the
last half second (/proc/stat's busy time minus this process's own) and leaves that many cores alone.
"""

from __future__ import annotations

import math
import os
import time

INTERVAL_S = 0.5  # how often the other processes' CPU use is measured again
STAT = "/proc/stat"


def fixed_sample_threads() -> int | None:
    """`ART_SAMPLE_THREADS` when set (a fixed count), else None: the sampler chooses as it goes."""
    configured = os.environ.get("ART_SAMPLE_THREADS")
    return max(1, int(configured)) if configured else None


def machine_busy_seconds(stat: str = STAT) -> float | None:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq); None off Linux."""
    try:
        with open(stat, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class AdaptiveThreads:
    """`choose()`: all cores minus the cores other processes kept busy over the last `interval_s` (at least one)."""

    def __init__(self, cores: int | None = None, interval_s: float = INTERVAL_S, stat: str = STAT):
        self.cores = cores or os.cpu_count() or 1
        self.interval_s, self.stat = interval_s, stat
        self.threads = self.cores
        self._last: tuple[float, float, float] | None = None  # (monotonic, machine busy s, own CPU s)

    def choose(self) -> int:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.interval_s:
            return self.threads
        busy, own = machine_busy_seconds(self.stat), time.process_time()
        if busy is None:  # no /proc/stat: half the cores leaves room for the rest, as before this measured
            self.threads = max(1, self.cores // 2)
            return self.threads
        if self._last is not None:
            elapsed = now - self._last[0]
            others = max(0.0, (busy - self._last[1]) - (own - self._last[2])) / elapsed
            self.threads = max(1, self.cores - math.floor(others + 0.5))
        self._last = (now, busy, own)
        return self.threads
