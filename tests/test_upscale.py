"""Real-ESRGAN upscaling through spandrel, with a tiny RRDBNet saved in the published file layout."""

import json

import pytest
import torch
from PIL import Image

from tests.conftest import tiny_args
from vqclip.upscale import load_upscaler, upscale_tensor


def _rrdbnet_state_dict(nf=8, gc=32, blocks=1, seed=0):
    """Random weights with Real-ESRGAN x4plus's key names and shapes (RRDBNet, new-arch keys; spandrel
    reads the width and depth from the shapes but expects 32 growth channels, as every release has)."""
    g = torch.Generator().manual_seed(seed)

    def conv(cout, cin):
        return {"weight": torch.randn(cout, cin, 3, 3, generator=g) * 0.05, "bias": torch.zeros(cout)}

    layers = {"conv_first": conv(nf, 3)}
    for b in range(blocks):
        for r in (1, 2, 3):
            for i in range(1, 6):
                layers[f"body.{b}.rdb{r}.conv{i}"] = conv(gc if i < 5 else nf, nf + (i - 1) * gc)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layers[name] = conv(nf, nf)
    layers["conv_last"] = conv(3, nf)
    return {f"{k}.{p}": v for k, ps in layers.items() for p, v in ps.items()}


@pytest.fixture
def tiny_esrgan(tmp_path):
    path = tmp_path / "tiny_x4.pth"
    torch.save({"params_ema": _rrdbnet_state_dict()}, path)
    return path


@pytest.fixture
def picture(tmp_path):
    torch.manual_seed(0)
    image = Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy())
    path = tmp_path / "pic.png"
    image.save(path)
    return path


def test_loads_through_spandrel_and_scales_exactly(tiny_esrgan, picture, tmp_path, vq):
    model = load_upscaler(tiny_esrgan)
    assert model.scale == 4
    for scale in ("4", "2"):
        r = vq("upscale", picture, "--model", tiny_esrgan, "--scale", scale, "-q")
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode().strip()
        assert out.endswith(f"pic_x{scale}.png")
        with Image.open(out) as im:
            assert im.size == (48 * int(scale), 40 * int(scale))


def test_tiled_matches_untiled(tiny_esrgan):
    model = load_upscaler(tiny_esrgan)
    torch.manual_seed(1)
    image = torch.rand(1, 3, 72, 88)
    whole = upscale_tensor(model, image, tile=0)
    tiled = upscale_tensor(model, image, tile=32, overlap=16)
    assert whole.shape == tiled.shape == (1, 3, 288, 352)
    assert (whole - tiled).abs().max() < 1e-3


def test_metadata_is_carried_over(tiny_esrgan, tmp_path, vq):
    from vqclip.output import png_info, save_png

    src = save_png(
        Image.new("RGB", (16, 16), (10, 20, 30)),
        tmp_path / "gen.png",
        png_info("a cat\nSteps: 3", {"seed": 5, "config": {"prompt": "a cat"}}),
    )
    r = vq("upscale", src, "--model", tiny_esrgan, "-o", tmp_path / "big.png", "-q")
    assert r.returncode == 0, r.stderr.decode()
    with Image.open(tmp_path / "big.png") as im:
        meta = json.loads(im.text["vqclip"])
        assert meta["seed"] == 5 and meta["upscale"]["factor"] == 4 and len(meta["upscale"]["sha256"]) == 64
        assert im.text["parameters"].startswith("a cat") and "Upscale: x4" in im.text["parameters"]


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("not_image", 2, "is not an image"),
        ("missing", 2, "does not exist"),
        ("corrupt_weights", 3, "is not a weights file: its zip archive is incomplete (truncated)"),
    ],
)
def test_bad_inputs(tiny_esrgan, picture, tmp_path, case, code, message, vq):
    image, weights = picture, tiny_esrgan
    if case == "not_image":
        image = tmp_path / "notes.png"
        image.write_text("hello")
    elif case == "missing":
        image = tmp_path / "nope.png"
    else:
        weights = tmp_path / "broken.pth"
        weights.write_bytes(tiny_esrgan.read_bytes()[:500])
    r = vq("upscale", image, "--model", weights, "-q")
    assert r.returncode == code, r.stderr.decode()
    assert message in r.stderr.decode() and "Traceback" not in r.stderr.decode()


def test_generate_with_upscale_uses_the_registry_entry(fixtures, tiny_clip, tiny_esrgan, tmp_path, isolated, vq):
    # a user entry with the registry's name and a local file: the same resolution path as a download
    (isolated / "config.toml").write_text(f'[models.realesrgan_x4plus]\nkind = "upscaler"\npath = "{tiny_esrgan}"\n')
    args = tiny_args(fixtures / "vqgan_tiny_f16.ckpt", tiny_clip, size=32)
    r = vq("a cat", *args, "--steps", "2", "--seed", "4", "--upscale", "2", "-o", tmp_path / "up.png", "-q")
    assert r.returncode == 0, r.stderr.decode()
    with Image.open(tmp_path / "up.png") as im:
        assert im.size == (64, 64)
        cli_pixels, cli_record = im.convert("RGB").tobytes(), json.loads(im.text["vqclip"])
        assert "Size: 64x64" in im.text["parameters"] and "Upscale: x2 from 32x32" in im.text["parameters"]
    assert cli_record["upscale"]["factor"] == 2
    # the library does what the CLI promises: the same upscaled pixels and the same record
    import vqclip
    from vqclip.config import GenerationConfig
    from vqclip.metadata import record

    cfg = GenerationConfig.from_dict(cli_record["config"])
    result = vqclip.generate(cfg)
    assert result.image.size == (64, 64) and result.image.tobytes() == cli_pixels
    api_record = json.loads(json.dumps(record(result)))  # as stored in the PNG
    assert api_record == cli_record


def test_generate_with_an_unavailable_upscaler_fails_before_the_run(fixtures, tiny_clip, tmp_path, vq):
    args = tiny_args(fixtures / "vqgan_tiny_f16.ckpt", tiny_clip, size=32)
    r = vq("a cat", *args, "--steps", "2", "--upscale", "4", "--offline", "--progress", "json", cwd=tmp_path)
    assert r.returncode == 3, r.stderr.decode()
    assert b"realesrgan_x4plus" in r.stderr and b'"job": "optimize"' not in r.stderr  # no step was run for nothing


def test_an_upscaled_image_replays_with_its_upscale(fixtures, tiny_clip, tiny_esrgan, tmp_path, isolated, vq):
    (isolated / "config.toml").write_text(f'[models.realesrgan_x4plus]\nkind = "upscaler"\npath = "{tiny_esrgan}"\n')
    args = tiny_args(fixtures / "vqgan_tiny_f16.ckpt", tiny_clip, size=32)
    assert vq("a cat", *args, "--steps", "2", "--upscale", "2", "-o", tmp_path / "up.png", "-q").returncode == 0
    r = vq("replay", tmp_path / "up.png", "-o", tmp_path / "again.png", "-q")
    assert r.returncode == 0, r.stderr.decode()
    with Image.open(tmp_path / "up.png") as a, Image.open(tmp_path / "again.png") as b:
        assert b.size == (64, 64) and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()
