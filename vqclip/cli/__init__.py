"""The command line: the only place that prints, draws progress, picks the device and exits.

Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 weights missing or not downloadable,
4 out of memory, 130 interrupted. torch is imported inside the commands, never at import time.

    app.py        the click group, `main()` and the one place errors become exit codes
    options.py    the generation options shared by generate and batch (they fill GenerationConfig)
    progress.py   step and batch progress on stderr (rich bar or JSON lines)
    generate.py   generate, replay, batch
    models.py     models list / download / verify / path
    bench.py      bench
"""

from vqclip.cli import bench, generate, models  # noqa: E402, F401  (importing them registers the commands)
from vqclip.cli.app import cli, main

__all__ = ["cli", "main"]
