"""Typed errors. Each carries the process exit code and a one-line hint; only `cli.py` turns them into exits.

Exit codes (design section 7): 2 usage, 3 weights missing or not downloadable, 4 out of memory,
130 interrupted, 1 anything else.
"""


class VqclipError(Exception):
    """Base class: a message for the user, an exit code, and an optional hint saying what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(VqclipError):
    """Bad input from the user: a prompt, a size, a path, an option value."""

    exit_code = 2


class WeightsError(VqclipError):
    """Weights that are missing, cannot be downloaded, fail verification or do not fit the model."""

    exit_code = 3


class DownloadError(WeightsError):
    """Every URL of a file failed."""


class ChecksumError(WeightsError):
    """A downloaded or cached file does not have the expected size or sha256."""


class OfflineError(WeightsError):
    """A file is needed but the network is off (--offline, VQCLIP_OFFLINE, HF_HUB_OFFLINE)."""


class CheckpointError(WeightsError):
    """A checkpoint that cannot be read safely: corrupt, truncated, or asking to run code."""


class ModelLoadError(WeightsError):
    """A checkpoint whose tensors do not match the model: missing, unexpected or mis-shaped keys."""


class OutOfMemoryError(VqclipError):
    """The job does not fit in memory even with checkpointing and chunking."""

    exit_code = 4
