"""CPU accounting around a measurement: how busy each core was, and who else used it.

On a shared machine other work (a test suite, a build) steals the cores the benchmark
pinned its processes to, and the numbers mean nothing. So each run records, from
/proc/stat and /proc/PID/stat, how busy the server core and wrk's core were, the
hypervisor's steal, and the "foreign" CPU: time spent by processes that are not this
harness or its descendants (in % of one core). Before a measurement ``wait_quiet`` waits,
within a bound, for the machine to be idle apart from us.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
# A run during which other processes used more than this (% of one core) is "disturbed":
# run again, and left out of medians when an undisturbed run exists.
FOREIGN_LIMIT = 10.0
# /proc/stat per-CPU fields: user nice system idle iowait irq softirq steal
_IDLE, _IOWAIT, _IRQ, _SOFTIRQ, _STEAL = 3, 4, 5, 6, 7


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, utime + stime in ticks) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _own_ticks() -> int:
    """CPU ticks of every live descendant of this process (servers, nginx workers, ...)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(entry)) is not None:
            parents[int(entry)], ticks[int(entry)] = stat
    me = os.getpid()
    total = 0
    for pid, t in ticks.items():
        p, hops = pid, 0
        while p > 1 and p != me and hops < 64:
            p, hops = parents.get(p, 0), hops + 1
        if p == me and pid != me:
            total += t
    return total


@dataclass(frozen=True)
class Snapshot:
    at: float
    cpus: dict[str, list[int]]
    own_ticks: int  # live descendants
    reaped_seconds: float  # children already waited for (wrk) and this process itself

    @classmethod
    def take(cls) -> Snapshot:
        cpus: dict[str, list[int]] = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu":
                    cpus[name] = [int(x) for x in fields[:8]]
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        reaped = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
        return cls(time.monotonic(), cpus, _own_ticks(), reaped)


@dataclass(frozen=True)
class Usage:
    """What the cores did between two snapshots, in percent."""

    server_busy: float | None  # of the server core
    load_busy: float | None  # of wrk's core
    steal: float  # of all cores
    foreign: float  # CPU used by other processes, in % of one core

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot, server: int | None, load: int | None) -> Usage:
        deltas = {c: [y - x for x, y in zip(a.cpus[c], b.cpus[c], strict=True)] for c in b.cpus if c in a.cpus}

        def busy(cpu: int | None) -> float | None:
            d = deltas.get(f"cpu{cpu}") if cpu is not None else None
            if not d or not sum(d):
                return None
            return round(100 * (sum(d) - d[_IDLE] - d[_IOWAIT]) / sum(d), 1)

        total = sum(sum(d) for d in deltas.values()) or 1
        # Process time (user + system) of everyone, minus ours; interrupts belong to no one.
        everyone = sum(sum(d) - d[_IDLE] - d[_IOWAIT] - d[_IRQ] - d[_SOFTIRQ] - d[_STEAL] for d in deltas.values())
        ours = (b.own_ticks - a.own_ticks) + (b.reaped_seconds - a.reaped_seconds) * _TICK
        wall_ticks = (b.at - a.at) * _TICK or 1
        return cls(
            server_busy=busy(server),
            load_busy=busy(load),
            steal=round(100 * sum(d[_STEAL] for d in deltas.values()) / total, 1),
            foreign=round(max(0.0, 100 * (everyone - ours) / wall_ticks), 1),
        )


def wait_quiet(
    log: Callable[[str], None], *, limit: float = 5.0, sample: float = 1.0, patience: float = 120.0
) -> float:
    """Wait until other processes use less than ``limit``% of a core over ``sample``
    seconds, for at most ``patience`` seconds; return the foreign load last seen."""
    deadline = time.monotonic() + patience
    told = False
    while True:
        a = Snapshot.take()
        time.sleep(sample)
        foreign = Usage.between(a, Snapshot.take(), None, None).foreign
        if foreign < limit or time.monotonic() > deadline:
            if told:
                log(f"    (machine {'quiet' if foreign < limit else 'still busy'}: other processes at {foreign}% of a core)")
            return foreign
        if not told:
            log(f"    (other processes use {foreign}% of a core: waiting up to {patience:.0f} s for quiet)")
            told = True
