"""Decompression bombs (a small PNG whose vqclip text chunk inflates to 200 MB, one that declares 100000x100000
pixels) are one sentence and exit 2 wherever vqclip reads an image or its text: `replay`, `upscale`,
`--init-image`, `--image-prompt`, `batch --skip-existing`, and `read_record` from Python."""

import struct
import zlib
from pathlib import Path

import pytest

from vqclip.errors import UsageError
from vqclip.metadata import read_record


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, before_pixels: bytes = b"", after_pixels: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + b"\0" * 3 * width for _ in range(min(height, 8))))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + before_pixels
        + _chunk(b"IDAT", pixels)
        + after_pixels
        + _chunk(b"IEND", b"")
    )


def _inflating_to(n_bytes: int) -> bytes:
    """zlib data of a JSON object `n_bytes` long (spaces), compressed about 1000:1."""
    z = zlib.compressobj(9)
    block = b" " * (1 << 20)
    parts = [z.compress(b"{")] + [z.compress(block) for _ in range(n_bytes >> 20)]
    return b"".join(parts) + z.compress(b"}") + z.flush()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    inflating = _inflating_to(200 << 20)
    ztxt = _chunk(b"zTXt", b"vqclip\0\0" + inflating)
    itxt = _chunk(b"iTXt", b"vqclip\0\1\0\0\0" + inflating)
    files = {
        "ztxt": _png(8, 8, before_pixels=ztxt),
        "itxt": _png(8, 8, before_pixels=itxt),
        "ztxt-after-pixels": _png(8, 8, after_pixels=ztxt),
        "100000x100000": _png(100_000, 100_000),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(data)
    assert all(p.stat().st_size < 300_000 for p in paths.values())
    return paths


def _one_sentence(result, path: Path) -> str:
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err and "Re-run with --debug" not in err
    first = err.splitlines()[0]
    assert first.startswith("Error: Image ") and str(path) in first
    return first


BOMBS = ["ztxt", "itxt", "ztxt-after-pixels", "100000x100000"]


def _expect(name: str) -> str:
    return "has more than 64 megapixels" if name == "100000x100000" else "a text chunk in it inflates beyond"


@pytest.mark.parametrize("name", BOMBS)
def test_replay_of_a_bomb_is_exit_2(name, bombs, vq, tmp_path):
    first = _one_sentence(vq("replay", bombs[name], "--offline", "-q", cwd=tmp_path), bombs[name])
    assert _expect(name) in first
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", BOMBS)
def test_upscale_of_a_bomb_is_exit_2_before_the_model_loads(name, bombs, vq, tmp_path):
    result = vq("upscale", bombs[name], "--offline", "-q", "-o", tmp_path / "big.png")
    assert result.returncode == 2 and not (tmp_path / "big.png").exists()
    assert str(bombs[name]) in result.stderr.decode() and "Traceback" not in result.stderr.decode()


@pytest.mark.parametrize("name", BOMBS)
def test_read_record_of_a_bomb_is_a_usage_error(name, bombs):
    with pytest.raises(UsageError) as err:
        read_record(bombs[name])
    assert _expect(name) in err.value.message


@pytest.mark.parametrize("option", ["--init-image", "--image-prompt"])
def test_a_bomb_as_an_input_image_is_exit_2(option, bombs, vq, tmp_path):
    result = vq("a cat", option, bombs["ztxt"], "--vqgan", "shapes_f8", "--clip", "shapes-a", "-o", tmp_path / "x.png")
    assert result.returncode == 2 and str(bombs["ztxt"]) in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode() and not list(tmp_path.iterdir())


def test_a_bomb_at_a_batch_image_name_is_redone_and_kept(bombs, vq, tmp_path):
    """--skip-existing reads every file at an image's name: a bomb there is not the image, and it is kept."""
    from vqclip.pipeline.batch import derive_seed, image_name

    (tmp_path / "p.txt").write_text("a red star\n")
    out = tmp_path / "out"
    out.mkdir()
    name = image_name(1, "a red star", derive_seed(0, 1))
    (out / name).write_bytes(bombs["ztxt"].read_bytes())
    shapes = ["--vqgan", "shapes_f8", "--clip", "shapes-a", "--size", "32", "--steps", "1", "--cutn", "2", "-q"]
    result = vq("batch", tmp_path / "p.txt", "--outdir", out, "--skip-existing", "--device", "cpu", *shapes)
    assert result.returncode == 0, result.stderr.decode()
    assert (out / name).read_bytes() == bombs["ztxt"].read_bytes()
    assert (out / name.replace(".png", "-1.png")).exists()
