"""Soak: a 12-line batch run as 3 shards, as real processes, into one shared --outdir; one shard in its own PID
namespace (`unshare -p -f --mount-proc`, as root) or, where that is not allowed, with a PID that nothing here
has (what its temporary files' names carry from another namespace). Shards are killed at random points
(SIGKILL and SIGTERM, while loading, optimising or writing) and restarted with --skip-existing until each
finishes. The folder must then equal a clean run's, image for image (same pixels), with no empty, truncated,
partial or temporary file left, and every manifest line accounted for.

Figures of each run are printed (`pytest -s`): runs, kills by signal, images compared."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import ROOT
from tests.test_shared_folder import _can_unshare, _dead_pid
from vqclip.output import TEMP_PREFIX
from vqclip.pipeline.batch import derive_seed, image_name, read_prompts

PROMPTS = """a red star on a white background
a blue circle on a black background
a green square
# a comment line, skipped
a yellow hexagon on a gray background
a purple triangle
an orange star on a black background

a white circle on a gray background
a black square on a white background
a red hexagon
a blue triangle on a white background
a green star on a gray background
a yellow circle
"""
SHARDS = 3
KILLS_PER_SHARD = 2  # then a shard is left to finish
ARGS = ["--vqgan", "shapes_f8", "--clip", "shapes-a", "--size", "32", "--steps", "6", "--cutn", "2"]
ARGS += ["--precision", "fp32", "--device", "cpu", "--seed", "5"]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
FAKE_PID_MAIN = (
    "import os, sys; os.getpid = lambda: int(os.environ['VQCLIP_SOAK_PID']); from vqclip.cli import main; main()"
)


def _command(prompts: Path, outdir: Path, shard: int, isolated_pid: str | None) -> list[str]:
    vqclip = ["-m", "vqclip"] if isolated_pid != "fake-pid" else ["-c", FAKE_PID_MAIN]
    args = [sys.executable, *vqclip, "batch", str(prompts), "--outdir", str(outdir), "--skip-existing"]
    args += [*ARGS, "--shard", f"{shard}/{SHARDS}", "--progress", "json"]
    if isolated_pid == "pid-namespace":  # the shell is PID 1 there; vqclip a child it waits for (so SIGTERM works)
        return ["unshare", "-p", "-f", "--mount-proc", "sh", "-c", '"$@"; exit $?', "sh", *args]
    return args


def _vqclip_pid(proc: subprocess.Popen) -> int:
    """The vqclip process itself: the Popen's, or under unshare its descendant running vqclip."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids, frontier = [], [proc.pid]
        while frontier:
            pid = frontier.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                frontier += [int(c) for c in task.read_text().split()]
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"vqclip" in cmdline and b"unshare" not in cmdline and not cmdline.startswith(b"sh\0"):
                return pid
        if proc.poll() is not None:
            return proc.pid
        time.sleep(0.05)
    return proc.pid


class Shard(threading.Thread):
    """Runs one shard until it exits 0, killing its first runs at random points."""

    def __init__(self, k, prompts, outdir, isolated_pid, rng):
        super().__init__(daemon=True)
        self.k, self.prompts, self.outdir, self.isolated_pid, self.rng = k, prompts, outdir, isolated_pid, rng
        self.runs, self.kills, self.codes, self.error = 0, {"SIGKILL": 0, "SIGTERM": 0}, [], None

    def run(self):
        try:
            while self.runs < 12:
                self.runs += 1
                kill = sum(self.kills.values()) < KILLS_PER_SHARD
                if self._once(kill) == 0:
                    return
            raise AssertionError(f"shard {self.k} never finished: exit codes {self.codes}")
        except BaseException as err:  # reported by the test
            self.error = err

    def _once(self, kill: bool) -> int:
        env = {**os.environ, **ENV}
        if self.isolated_pid == "fake-pid":
            env["VQCLIP_SOAK_PID"] = str(_dead_pid(4_000_000 + self.k))
        cmd = _command(self.prompts, self.outdir, self.k, self.isolated_pid if self.k == 1 else None)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        timer, sent = None, []
        if kill:
            signame = ("SIGKILL", "SIGTERM")[(self.k + sum(self.kills.values())) % 2]  # both, in every shard
            target = _vqclip_pid(proc)

            def stop():
                if proc.poll() is None and not sent:
                    sent.append(signame)
                    os.kill(target, getattr(signal, signame))
                    self.kills[signame] += 1

            # a random point: while loading (after 0.2-3 s), or after a random number of progress events (steps
            # and images) and a random few milliseconds, which lands some kills inside a PNG write
            events = self.rng.choice([0, self.rng.randrange(1, 24)])
            delay = self.rng.uniform(0.2, 3) if not events else self.rng.uniform(0, 0.05)
            if not events:
                timer = threading.Timer(delay, stop)
                timer.start()
        seen = 0
        for line in proc.stderr:
            seen += line.startswith(b"{")
            if kill and timer is None and seen == events:
                time.sleep(delay)
                stop()
        code = proc.wait()
        if timer is not None:
            timer.cancel()
        self.codes.append(f"{sent[0]}->{code}" if sent else code)
        return code


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def _run_clean(prompts: Path, outdir: Path) -> None:
    cmd = [sys.executable, "-m", "vqclip", "batch", str(prompts), "--outdir", str(outdir), *ARGS, "-q"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]


def test_three_shards_killed_and_resumed_equal_a_clean_run(tmp_path):
    isolated_pid = "pid-namespace" if _can_unshare() else "fake-pid"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    items = read_prompts(PROMPTS)
    assert len(items) == 12
    started = time.monotonic()

    shared = tmp_path / "shared"
    rng = random.Random(int(os.environ.get("VQCLIP_SOAK_SEED", "30")))
    shards = [Shard(k, prompts, shared, isolated_pid, random.Random(rng.random())) for k in range(SHARDS)]
    for shard in shards:
        shard.start()
    clean = tmp_path / "clean"
    _run_clean(prompts, clean)  # meanwhile: the reference, one uninterrupted process
    for shard in shards:
        shard.join(timeout=600)
        assert not shard.is_alive(), f"shard {shard.k} still running"
        if shard.error is not None:
            raise shard.error

    names = sorted(p.name for p in clean.glob("*.png"))
    expected = sorted(image_name(item.line, item.prompt, derive_seed(5, item.line)) for item in items)
    assert names == expected
    files = sorted(p.name for p in shared.iterdir())
    manifests = [f"manifest.shard-{k}-of-{SHARDS}.jsonl" for k in range(SHARDS)]
    assert files == sorted(names + manifests), "extra files (partial, temporary, suffixed) or missing ones"
    assert not list(shared.glob(f"{TEMP_PREFIX}*"))
    for name in names:  # whole, decodable PNGs with the same pixels as the clean run's
        assert (shared / name).stat().st_size > 0
        assert np.array_equal(_pixels(shared / name), _pixels(clean / name)), name

    rows = [json.loads(line) for m in manifests for line in (shared / m).read_text().splitlines()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["line"] for r in ok) == [item.line for item in items]  # each image exactly once
    assert all(Path(r["path"]).name == image_name_for(r, items) for r in ok)
    for r in rows:  # an interrupted attempt is followed by the image, its partial removed
        assert r["status"] in ("ok", "interrupted"), r
        assert r["line"] in {o["line"] for o in ok}
        if r["status"] == "interrupted" and r.get("path"):
            assert not Path(r["path"]).exists()

    runs = sum(s.runs for s in shards)
    kills = {name: sum(s.kills[name] for s in shards) for name in ("SIGKILL", "SIGTERM")}
    print(
        f"\nsoak ({isolated_pid}): {runs} runs of {SHARDS} shards, kills {kills}, exit codes "
        f"{[s.codes for s in shards]}, {len(names)} images compared pixel for pixel, {len(rows)} manifest lines "
        f"({len(ok)} ok, {len(rows) - len(ok)} interrupted), {time.monotonic() - started:.0f} s"
    )
    assert kills["SIGKILL"] >= 2 and kills["SIGTERM"] >= 2  # the soak really killed


def image_name_for(row: dict, items) -> str:
    item = next(i for i in items if i.line == row["line"])
    return image_name(item.line, item.prompt, derive_seed(5, item.line))
