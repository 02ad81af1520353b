"""Typed errors and the exit codes they stand for. Each error carries its exit code and a one-line hint;
only `vqclip.cli` turns them into exits."""

from enum import IntEnum


class ExitCode(IntEnum):
    """The process exit codes vqclip documents."""

    OK = 0
    FAILURE = 1  # unexpected: re-run with --debug
    USAGE = 2  # bad input
    WEIGHTS = 3  # weights or the cache: missing, not downloadable, not writable, not what they claim
    OUT_OF_MEMORY = 4
    HANGUP = 129  # SIGHUP: 128 + 1
    INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2
    TERMINATED = 143  # SIGTERM: 128 + 15


class VqclipError(Exception):
    """Base class: a message for the user, an exit code, and an optional hint saying what to do."""

    exit_code = ExitCode.FAILURE
    saved = None  # where the image was kept when the error came after it existed (a Path, or None)

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(VqclipError):
    """Bad input from the user: a prompt, a size, a path, an option value."""

    exit_code = ExitCode.USAGE


class WeightsError(VqclipError):
    """Weights that are missing, cannot be downloaded, fail verification or do not fit the model."""

    exit_code = ExitCode.WEIGHTS


class DownloadError(WeightsError):
    """Every URL of a file failed. `causes`: the kinds of failure met ("network", "missing", "web page",
    "mismatch"), so a caller can tell a file that is nowhere from a network that is down."""

    causes: frozenset = frozenset()


class ChecksumError(DownloadError):
    """Every URL gave a file without the expected size, sha256 or content."""


class OfflineError(WeightsError):
    """A file is needed but the network is off (--offline, VQCLIP_OFFLINE, HF_HUB_OFFLINE)."""


class CacheError(WeightsError):
    """The cache folder cannot hold the file: not writable, not a folder, or its disk is full."""


class CheckpointError(WeightsError):
    """A checkpoint that cannot be read safely: corrupt, truncated, or asking to run code."""


class ModelLoadError(WeightsError):
    """A checkpoint whose tensors do not match the model: missing, unexpected or mis-shaped keys."""


class OutOfMemoryError(VqclipError):
    """The job does not fit in memory even with checkpointing and chunking."""

    exit_code = ExitCode.OUT_OF_MEMORY


class Interrupted(VqclipError):
    """The run was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP). `saved` is where the latest image went."""

    def __init__(self, signal_name: str, exit_code: int, saved=None, steps_done: int | None = None):
        message = f"Interrupted ({signal_name})"
        if saved is not None:
            message += f" after {steps_done} steps; the latest image is in {saved}"
        super().__init__(message + ".")
        self.signal_name, self.exit_code, self.saved, self.steps_done = signal_name, exit_code, saved, steps_done


_RECEIVED: list[tuple[str, int]] = []  # signals the CLI's handlers saw, until main() returns


def note_signal(signal_name: str, exit_code: int) -> None:
    """Record a signal as the CLI's handler raises its exception (vqclip.cli.app)."""
    _RECEIVED.append((signal_name, exit_code))


def forget_signals() -> None:
    _RECEIVED.clear()


def stop_if_signalled() -> None:
    """Raise Interrupted for a signal already received. A handler's exception can be lost on its way up
    (raised where Python only reports exceptions, such as a finaliser); checked once per step, this still
    stops the run at the next step instead of letting it go on."""
    if _RECEIVED:
        raise Interrupted(*_RECEIVED[-1])


class FramePipeClosed(VqclipError):
    """The reader of the frame stream went away (`| head`): the run ends quietly, the latest image kept."""

    exit_code = ExitCode.OK


class OutputError(VqclipError):
    """A result could not be written where it was asked for (a full disk, a vanished folder)."""
