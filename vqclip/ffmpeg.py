"""Which ffmpeg encodes --video: the system's on the PATH, else the static build that the imageio-ffmpeg
wheel (a dependency of vqclip) installs with it, so a plain `pip install` can make videos."""

import shutil


def ffmpeg_exe() -> str | None:
    """The ffmpeg to run, or None when there is none (no ffmpeg on the PATH and no imageio-ffmpeg binary)."""
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError):  # not installed, or no binary for this platform
        return None
