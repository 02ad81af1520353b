"""The thread count the CLI picks before torch loads (vqclip.threads): the free cores, never a count the user
pinned. The speed it buys is measured by benchmarks/busy.py, not asserted here."""

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from vqclip.threads import _busy_ticks, busy_cores, choose_threads, fit_threads_to_free_cores

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
needs_two_cores = pytest.mark.skipif(CORES < 2 or not os.path.exists("/proc/stat"), reason="needs 2 cores, Linux")


@pytest.mark.parametrize(
    ("cores", "busy", "threads"),
    [
        (2, 0.0, 2),
        (2, 0.3, 2),
        (2, 0.6, 1),
        (2, 1.0, 1),
        (2, 2.0, 1),
        (2, 5.0, 1),
        (16, 1.0, 15),
        (16, 3.4, 13),
        (1, 1, 1),
    ],
)
def test_threads_are_the_free_cores(cores, busy, threads):
    assert choose_threads(cores, busy) == threads


def test_busy_ticks_leave_out_idle_and_iowait():
    stat = "cpu  100 5 20 1000 50 3 2 7 0 0\ncpu0 50 2 10 500 25 1 1 3 0 0\n"
    assert _busy_ticks(stat) == (100 + 5 + 20 + 3 + 2 + 7, 1187)


def test_a_pinned_thread_count_or_a_loaded_torch_is_left_alone():
    environ = {"OMP_NUM_THREADS": "3"}
    assert fit_threads_to_free_cores(environ) is None and environ == {"OMP_NUM_THREADS": "3"}
    import torch  # noqa: F401  (loaded: libgomp has read its settings, changing them now would mislead)

    environ = {}
    assert fit_threads_to_free_cores(environ) is None and environ == {}


@pytest.fixture
def hog():
    """One CPU-bound process, as another user's job would be."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    yield process
    process.kill()
    process.wait()


@needs_two_cores
def test_a_busy_core_is_counted(hog):
    assert busy_cores() >= 0.7  # the hog's core (and whatever else runs): at least most of one core


@needs_two_cores
def test_the_cli_leaves_a_busy_core_to_its_process(hog, tmp_path):
    """`main()` sets OMP_NUM_THREADS before any command imports torch (here a command that fails at once)."""
    code = (
        "import os, sys\nfrom vqclip.cli import main\ntry:\n    main(['upscale', 'missing.png'])\n"
        "except SystemExit:\n    pass\nprint(os.environ.get('OMP_NUM_THREADS'), 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    threads, torch_loaded = done.stdout.split()
    assert 1 <= int(threads) <= CORES - 1 and torch_loaded == "False", done.stderr
    pinned = subprocess.run(
        [sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "2"}, cwd=tmp_path, capture_output=True, text=True
    )
    assert pinned.stdout.split()[0] == "2"
