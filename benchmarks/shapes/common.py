"""What the shapes training scripts share: the command line (seed, threads, output), deterministic set-up,
batches of renders, and writing a weights file with its sha256 and the command that made it.

Determinism: a script's output depends only on its arguments, the thread count (float summation order) and
the versions of torch, numpy and Pillow; every random draw comes from the seed.
"""

import argparse
import hashlib
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vqclip.shapes.scenes import render_array, sample_scene

WEIGHTS = Path(__file__).resolve().parents[2] / "vqclip" / "shapes" / "weights"


def parser(description: str, seed: int, steps: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--threads", type=int, default=1, help="torch threads; the result depends on it")
    p.add_argument("--out", type=Path, default=WEIGHTS, help="folder for the weights")
    return p


def setup(args) -> np.random.Generator:
    """Seed torch, numpy and random; fix the thread count; return the data generator."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    return np.random.default_rng(args.seed)


def renders(rng: np.random.Generator, n: int, size: int = 128, copies=(1,)) -> tuple[torch.Tensor, torch.Tensor]:
    """n random scenes: images (n, 3, size, size) as uint8 and labels (n, 3) (shape, colour, background)."""
    images, labels = [], []
    for _ in range(n):
        scene = sample_scene(rng, copies=int(rng.choice(copies)))
        images.append(render_array(scene, size))
        labels.append(scene.labels)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [0, 1]."""
    return images.float().div(255)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command() -> str:
    """The command line that ran this script, relative to the repository root."""
    script = Path(sys.argv[0]).resolve().relative_to(WEIGHTS.parents[2])
    return shlex.join(["python", str(script), *sys.argv[1:]])


def report(path: Path, started: float, **figures) -> None:
    """Print the written file, its sha256, the command, the wall time and the figures."""
    print(f"wrote {path} sha256 {sha256(path)}")
    print(f"command: {command()}")
    print(f"seconds: {time.perf_counter() - started:.0f}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, value in figures.items():
        print(f"{name}: {value}")


class Log:
    """Prints a training line every `every` steps (and the last one)."""

    def __init__(self, steps: int, every: int = 50):
        self.steps, self.every, self.start = steps, every, time.perf_counter()

    def __call__(self, step: int, **values) -> None:
        if step % self.every == 0 or step == self.steps:
            text = " ".join(f"{k} {v:.4g}" for k, v in values.items())
            print(f"step {step}/{self.steps} {text} ({time.perf_counter() - self.start:.0f} s)", flush=True)
