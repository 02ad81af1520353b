"""The command line: the only place that prints, draws progress and exits.

Exit codes (vqclip.errors.ExitCode): 0 ok, 1 unexpected failure, 2 bad input, 3 weights or cache
problems, 4 out of memory, 129 hang-up, 130 interrupted, 143 terminated. torch is imported inside the
commands, never at import time.

    app.py        the click group and `main()`: the one place errors and signals become exit codes
    options.py    the generation options shared by generate and batch (they fill GenerationConfig)
    progress.py   the one reporter: Progress events as rich bars or JSON lines on stderr
    generate.py   generate, replay
    batch.py      batch
    restyle.py    restyle
    upscale.py    upscale
    models.py     models list / download / verify / path
    bench.py      bench
"""

from vqclip.cli import batch, bench, generate, models, restyle, upscale  # noqa: F401  (importing them registers the commands)
from vqclip.cli.app import cli, main

__all__ = ["cli", "main"]
