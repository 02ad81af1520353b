"""How many CPU threads a run uses: the cores that are free when it starts (no torch here).

torch's CPU kernels run on GNU OpenMP (libgomp), whose threads spin while they wait for the next parallel
region. A vqclip step is hundreds of small parallel regions, so where another process holds one of the
cores, the thread that shares its core is descheduled for whole time slices while its partner spins: a
shapes-world step at 128x128 took 9-37x its quiet time beside one CPU-bound process on 2 cores (issue 28;
`benchmarks/busy.py`, figures in benchmarks/RESULTS.md). Two remedies were measured:

- OMP_WAIT_POLICY=PASSIVE (threads sleep instead of spinning): busy 1.2-1.9x quiet, but every parallel
  region then waits for a futex wake-up, and the quiet step took 1.5-1.7x longer on a 2-core KVM guest;
- as many threads as there are free cores, with libgomp's spinning left as it is: the quiet step is
  unchanged, and beside a busy process a 2-core machine runs one thread, which has nothing to wait for.

The CLI does the second (`fit_threads_to_free_cores`, first thing in `main()`, before torch loads: libgomp
reads OMP_NUM_THREADS once, when torch's library loads). It counts the cores the process may run on
(os.sched_getaffinity: taskset and cgroup cpusets are honoured) and subtracts those that other processes
kept busy over a short sample of /proc/stat. OMP_NUM_THREADS, when set, is always kept: the pixels depend
on the thread count (matrix sums are split by thread), so a replay that must match bit for bit pins it.
An API caller sets OMP_NUM_THREADS (or calls this function) before it imports torch (README, "Python").
"""

import os
import sys
import time
from pathlib import Path

SAMPLE_S = 0.2  # how long /proc/stat is watched: 20 clock ticks per core at the usual 100 Hz


def choose_threads(cores: int, busy_cores: float) -> int:
    """The thread count for `cores` usable cores of which `busy_cores` (a fraction: CPU seconds per second)
    are taken by other processes: the free ones, at least one. A core counts as busy from half its time."""
    return max(1, cores - int(busy_cores + 0.5))


def _busy_ticks(stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs from /proc/stat's first line (idle and iowait are not busy)."""
    fields = [int(v) for v in stat.splitlines()[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(fields) - fields[3] - fields[4], sum(fields)


def busy_cores(seconds: float = SAMPLE_S, stat: Path = Path("/proc/stat")) -> float | None:
    """How many cores other processes keep busy, sampled over `seconds` while this process sleeps (None
    where /proc/stat cannot be read: macOS, Windows)."""
    try:
        busy0, total0 = _busy_ticks(stat.read_text())
        own0 = sum(os.times()[:2])
        start = time.monotonic()
        time.sleep(seconds)
        busy1, total1 = _busy_ticks(stat.read_text())
        own = sum(os.times()[:2]) - own0
        elapsed = time.monotonic() - start
    except (OSError, ValueError, IndexError):
        return None
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    return max(0.0, (busy1 - busy0) / ticks_per_s - own) / elapsed


def fit_threads_to_free_cores(environ=os.environ) -> str | None:
    """Set OMP_NUM_THREADS to the free cores (choose_threads) unless it is set or torch is already loaded
    (then it is too late to matter). Returns the thread count that was set, or None when nothing was."""
    if "OMP_NUM_THREADS" in environ or "torch" in sys.modules or not hasattr(os, "sched_getaffinity"):
        return None
    cores = len(os.sched_getaffinity(0))
    busy = busy_cores() if cores > 1 else None
    if busy is None:
        return None
    threads = choose_threads(cores, busy)
    if threads == cores:
        return None  # torch's own default: nothing to change
    environ["OMP_NUM_THREADS"] = str(threads)
    return environ["OMP_NUM_THREADS"]
