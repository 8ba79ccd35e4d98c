"""How busy the machine is while a benchmark runs, from /proc only (Linux; elsewhere the fields are None).

`others_cores` is the CPU time that processes *outside* the watched process tree used on the CPUs this
process may run on (its affinity set), divided by the wall time of the window: 0.5 means half a core was
busy with someone else's work on average. `steal_cores` is time the hypervisor gave to other guests. Both come
from the difference of two samples of /proc/stat (per-CPU lines of the affinity set) and of
/proc/<pid>/stat (utime + stime + cutime + cstime) of every live process of the tree; resolution one clock
tick (usually 10 ms) per sample, so windows shorter than about a second are noisy.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

# A machine counts as busy (results are not README-grade) when, before the run, the 1-minute load average
# exceeds MAX_LOAD1, or when, before or during a measurement, other processes plus steal use more than
# MAX_OTHERS_CORES cores on average.
MAX_LOAD1 = 0.5
MAX_OTHERS_CORES = 0.15

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _proc_stat(cpus: set[int]) -> tuple[int, int] | None:
    """(busy ticks, steal ticks) summed over the per-CPU lines of `cpus`; None without /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = steal = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields] + [0] * 8
        user, nice, system, _idle, _iowait, irq, softirq, st = values[:8]
        busy += user + nice + system + irq + softirq  # guest time is already inside user
        steal += st
    return busy, steal


def _pid_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime + cutime + cstime in ticks) of `pid`, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return int(fields[1]), sum(int(v) for v in fields[11:15])


def tree_ticks(root: int) -> int | None:
    """CPU ticks used so far by `root` and its live descendants (reaped children count in their parent)."""
    if _pid_stat(root) is None:
        return None
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _pid_stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(stats[pid][1] for pid in tree if pid in stats)


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


@dataclass
class Sample:
    wall: float
    busy: int | None
    steal: int | None
    tree: int | None


class LoadWatch:
    """Samples the machine and the process tree rooted at `root` (default: this process)."""

    def __init__(self, root: int | None = None) -> None:
        self.root = root or os.getpid()
        self.cpus = _cpus()

    def sample(self) -> Sample:
        stat = _proc_stat(self.cpus)
        return Sample(time.perf_counter(), *(stat or (None, None)), tree_ticks(self.root))

    def between(self, a: Sample, b: Sample) -> dict:
        """Load of the window from sample `a` to sample `b`."""
        wall = b.wall - a.wall
        if None in (a.busy, b.busy, a.tree, b.tree) or wall <= 0:
            return {"window_s": round(wall, 3), "others_cores": None, "steal_cores": None, "tree_cores": None}
        tree = (b.tree - a.tree) / _TICK
        others = max(0.0, (b.busy - a.busy) / _TICK - tree)
        return {"window_s": round(wall, 3), "others_cores": round(others / wall, 3),
                "steal_cores": round((b.steal - a.steal) / _TICK / wall, 3), "tree_cores": round(tree / wall, 3)}

    def probe(self, seconds: float) -> dict:
        """Load over a quiet window of `seconds` (this process sleeps), with the load average at its start."""
        first, load = self.sample(), loadavg()
        time.sleep(seconds)
        return {"loadavg": load, **self.between(first, self.sample())}


def contention(window: dict) -> float | None:
    """Cores' worth of other work (other processes + steal) in a window, or None if unknown."""
    if window.get("others_cores") is None:
        return None
    return window["others_cores"] + (window.get("steal_cores") or 0.0)


def busy_reasons(before: dict | None, during: list[dict], max_load1: float, max_others: float) -> list[str]:
    """Why the measurement is not README-grade (empty: it is)."""
    reasons = []
    if before is not None:
        if before.get("loadavg") and before["loadavg"][0] > max_load1:
            reasons.append(f"1-min load average {before['loadavg'][0]:.2f} > {max_load1} before the run")
        value = contention(before)
        if value is not None and value > max_others:
            reasons.append(f"other processes + steal used {value:.2f} cores > {max_others} before the run")
    for window in during:
        value = contention(window)
        if value is not None and value > max_others:
            reasons.append(f"{window.get('label', 'a measurement')}: other processes + steal used {value:.2f} cores "
                           f"> {max_others} during the measurement")
    if before is not None and before.get("others_cores") is None:
        reasons.append("machine load unknown (no /proc): cannot vouch for the figures")
    return reasons


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict:
    """The machine, independent of torch (the child processes add the library versions and threads)."""
    return {"cpu_model": cpu_model(), "cpus_usable": len(_cpus()), "cpus_total": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "hostname": platform.node()}


def spread(values: list[float], digits: int = 4) -> dict:
    """Median, min, max and count of `values` (the median of an even count is the mean of the middle two)."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return {"median": None, "min": None, "max": None, "n": 0}
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": round(median, digits), "min": round(ordered[0], digits), "max": round(ordered[-1], digits),
            "n": n}


def _status_kb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """This process's resident set size now (VmRSS), MB."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: clear_refs 5); False if it can't."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_mb() -> float | None:
    """This process's peak resident set size since start or the last reset_peak() (VmHWM), MB."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024
