"""Writers sharing one folder (Slurm arrays, torchrun, containers on a shared file system) never destroy each
other's images: a temporary file is judged stale by its lock, not by a PID that means nothing in another PID
namespace or on another machine; the final name only ever holds a complete image; `batch --skip-existing`
accepts only a complete PNG whose vqclip record is that image, and redoes the rest."""

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from vqclip import output
from vqclip.output import TEMP_PREFIX, place, save_png

N_IMAGES = 12
WRITER = """
import os, sys
import numpy as np
from PIL import Image
fake = int(sys.argv[2])
if fake:  # a PID from another namespace: nothing by that number is alive here
    os.getpid = lambda: fake
from vqclip.output import save_png
for i in range(int(sys.argv[3])):
    pixels = np.random.default_rng(i).integers(0, 256, (700, 700, 3), dtype=np.uint8)  # noise: slow to compress
    save_png(Image.fromarray(pixels), os.path.join(sys.argv[1], f"w{i:02d}.png"))
print("saved all", flush=True)
"""


def _expected(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (700, 700, 3), dtype=np.uint8)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _dead_pid(start: int) -> int:
    """The first PID from `start` on that no process here has."""
    pid = start
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def _writer_command(folder: Path, how: str) -> list[str]:
    python = [sys.executable, "-c", WRITER, str(folder)]
    if how == "fake-pid":
        return [*python, str(_dead_pid(4_000_000)), str(N_IMAGES)]
    # its own PID namespace: PIDs there count from 1; burn some so the writer's is one that is dead here
    target = _dead_pid(60)
    burn = f"i=0; while [ $i -lt {target - 2} ]; do /bin/true; i=$((i+1)); done; "
    script = burn + " ".join(f"'{a}'" for a in [*python, "0", str(N_IMAGES)])
    return ["unshare", "-p", "-f", "--mount-proc", "sh", "-c", script]


def _can_unshare() -> bool:
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0


@pytest.mark.parametrize("how", ["fake-pid", "pid-namespace"])
def test_a_writer_in_another_pid_namespace_keeps_every_image(how, tmp_path):
    """One process saves 12 images while another saves into the same folder every 20 ms (each save cleans up
    stale temporary files): every image of the first arrives whole, and the user's files are untouched."""
    if how == "pid-namespace" and not _can_unshare():
        pytest.skip("needs root and unshare for a PID namespace")
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    Image.new("RGB", (8, 8), "red").save(folder / "w03.png")  # the user's file under a name the writer wants
    users = _hashes(folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen(
        _writer_command(folder, how), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    n = 0
    try:
        while writer.poll() is None:
            save_png(Image.new("RGB", (16, 16), (n % 256, 0, 0)), folder / f"m{n:04d}.png")
            n += 1
            time.sleep(0.02)
    finally:
        writer.kill() if writer.poll() is None else None
        out, err = writer.communicate()
    assert writer.returncode == 0 and b"saved all" in out, err.decode()[-2000:]
    assert n > 20  # the two really overlapped
    assert {name: digest for name, digest in _hashes(folder).items() if name in users} == users
    for i in range(N_IMAGES):
        name = f"w{i:02d}-1.png" if i == 3 else f"w{i:02d}.png"  # the user's w03.png is kept
        with Image.open(folder / name) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), _expected(i)), name
    assert not [p for p in folder.iterdir() if p.stat().st_size == 0]
    assert not list(folder.glob(f"{TEMP_PREFIX}*"))


def test_a_dead_writers_temporary_file_is_removed_and_a_live_ones_kept(tmp_path):
    """Staleness is the lock: a file nobody holds goes at the next save, one a live process holds stays,
    whatever PID its name carries."""
    dead = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-dead.png"  # even our own PID: nobody holds it
    dead.write_bytes(b"half a png")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from vqclip.output import new_temp\n"
            "fd, path = new_temp(Path(sys.argv[1]), '.png'); print(path, flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )
    try:
        live = Path(holder.stdout.readline().decode().strip())
        save_png(Image.new("RGB", (4, 4)), tmp_path / "x.png")
        assert not dead.exists() and live.exists()
    finally:
        holder.kill()
        holder.wait()
    save_png(Image.new("RGB", (4, 4)), tmp_path / "y.png")  # its writer is gone now
    assert not live.exists()


def test_a_vanished_temporary_file_never_leaves_an_empty_file_at_the_final_name(tmp_path):
    target = tmp_path / "a.png"
    with pytest.raises(FileNotFoundError):
        place(tmp_path / f"{TEMP_PREFIX}1-gone.png", target, overwrite=False)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_stale_temporary_files_without_locks_go_by_age(tmp_path, monkeypatch):
    """A file system without locks: a temporary file is removed only once far older than any write."""
    monkeypatch.setattr(output, "_lock", lambda fd: None)
    young, old = tmp_path / f"{TEMP_PREFIX}1-young.png", tmp_path / f"{TEMP_PREFIX}1-old.png"
    young.write_bytes(b"x")
    old.write_bytes(b"x")
    past = time.time() - output.STALE_AGE - 60
    os.utime(old, (past, past))
    output.remove_stale_temps(tmp_path)
    assert young.exists() and not old.exists()


SHAPES = ["--vqgan", "shapes_f8", "--clip", "shapes-a", "--size", "32", "--steps", "2", "--cutn", "2"]
SHAPES += ["--precision", "fp32", "--device", "cpu", "-q"]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_skip_existing_redoes_empty_truncated_and_interrupted_images(tmp_path, vq):
    """Only a complete PNG with the vqclip record of that prompt and seed counts as done: an empty file, a
    truncated one, an interrupted (partial) image or a foreign PNG at the name is redone (under a free name:
    the file there is kept byte for byte), and a second resume finds everything done."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red star\na blue circle\na green square\na black hexagon\na gray triangle\n")
    clean = tmp_path / "clean"
    assert vq("batch", prompts, "--outdir", clean, *SHAPES).returncode == 0
    names = sorted(p.name for p in clean.glob("*.png"))
    assert len(names) == 5

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(clean / names[0], out / names[0])  # finished: skipped
    (out / names[1]).write_bytes(b"")  # what the old cleanup left at the final name
    data = (clean / names[2]).read_bytes()
    (out / names[3]).write_bytes(data[: len(data) - 40])  # truncated: its record is there, its pixels are not
    Image.new("RGB", (32, 32), "blue").save(out / names[4])  # someone else's PNG, no record
    (out / names[2]).write_bytes(data)
    _mark_interrupted(out / names[2])
    before = _hashes(out)

    result = vq("batch", prompts, "--outdir", out, "--skip-existing", *SHAPES)
    assert result.returncode == 0, result.stderr.decode()
    assert {name: d for name, d in _hashes(out).items() if name in before} == before
    for name in names[1:]:
        redone = out / name.replace(".png", "-1.png")
        assert np.array_equal(_pixels(redone), _pixels(clean / name)), name
    assert not (out / names[0].replace(".png", "-1.png")).exists()
    printed = [Path(line.decode()).name for line in result.stdout.splitlines()]
    assert printed == [names[0]] + [name.replace(".png", "-1.png") for name in names[1:]]  # skipped ones too

    again = vq("batch", prompts, "--outdir", out, "--skip-existing", *SHAPES)
    assert again.returncode == 0 and again.stdout.splitlines() == result.stdout.splitlines()  # all skipped
    assert not list(out.glob("*-2.png"))


def _mark_interrupted(path: Path) -> None:
    """Rewrite a vqclip PNG's record as an interrupted run's (complete: false), as OUTPUT.partial.png holds."""
    import json

    from PIL import PngImagePlugin

    with Image.open(path) as im:
        texts = dict(im.text)
        pixels = im.convert("RGB")
    record = json.loads(texts["vqclip"])
    record["complete"] = False
    info = PngImagePlugin.PngInfo()
    info.add_text("vqclip", json.dumps(record))
    pixels.save(path, pnginfo=info)
