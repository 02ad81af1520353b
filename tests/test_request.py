"""One resolved request, models that stay as loaded, one stage signature.

Validation resolves a run once (the prompt parsed, the seed fixed, the user's TOML read, the input images
read and hashed); every later step reads the `Request`. A run never changes the `Models` it is given. The
plain and the canvas stage both stop after `stop_after` steps, so an interrupted `--transformer` run's
partial replays to the same pixels. Each test was seen to fail on the code before this layout: the parser
ran in 7 modules, the TOML was read 4 times per image, the models lost their text towers and had their
decoder's checkpointing flag flipped, and the canvas ignored `stop_after`.
"""

import hashlib
import json
import sys
from dataclasses import replace

import pytest
from PIL import Image

from vqclip.config import GenerationConfig
from vqclip.memory import Plan
from vqclip.pipeline.load import load_models
from vqclip.pipeline.prepare import prepare
from vqclip.pipeline.run import run
from vqclip.pipeline.validate import validate


@pytest.fixture
def f16(fixtures):
    return fixtures / "vqgan_tiny_f16.ckpt"


def _spy_everywhere(monkeypatch, module, names, calls):
    """Replace `module.NAME` and every vqclip module's imported copy of it by a wrapper that records the
    calling module; modules imported later take the wrapper from `module`."""
    for name in names:
        original = getattr(module, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, sys._getframe(1).f_globals["__name__"]))
            return _original(*args, **kwargs)

        for mod_name, mod in list(sys.modules.items()):
            if mod_name.startswith("vqclip") and getattr(mod, name, None) is original:
                monkeypatch.setattr(mod, name, wrapper)


def test_a_generation_and_a_batch_parse_each_prompt_once_and_read_the_toml_once(
    f16, tiny_clip, tmp_path, isolated, vq, monkeypatch
):
    import vqclip.pipeline.validate  # noqa: F401 (imported before the spies go in)
    import vqclip.weights.registry as registry

    (isolated / "config.toml").write_text(f'[models.tiny]\nkind = "vqgan"\npath = "{f16}"\n')
    parses, reads = [], []
    _spy_everywhere(monkeypatch, vqclip.prompts, ("parse_story", "parse_prompt"), parses)
    _spy_everywhere(monkeypatch, registry, ("_toml_load",), reads)
    args = ["--vqgan", "tiny", "--clip", tiny_clip, "--size", "32", "--cutn", "2", "--steps", "2"]
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    one = vq("a red cat | fog:0.5", *args, "--image-prompt", f"{tmp_path / 'red.png'}:0.5", "-o", tmp_path / "a.png")
    assert one.returncode == 0, one.stderr.decode()
    (tmp_path / "p.txt").write_text("a fox\na lynx ^ a wolf\na bird:2\n")
    batch = vq("batch", tmp_path / "p.txt", "--outdir", tmp_path / "out", *args)
    assert batch.returncode == 0, batch.stderr.decode()
    manifest = [json.loads(line) for line in (tmp_path / "out/manifest.jsonl").read_text().splitlines()]
    assert [m["status"] for m in manifest] == ["ok"] * 3
    callers = {caller for _, caller in parses}
    assert callers <= {"vqclip.pipeline.validate", "vqclip.prompts"}, callers  # parse_story calls parse_prompt
    assert [n for n, _ in parses].count("parse_story") == 4  # once per image: 1 + 3 lines
    assert len(reads) == 1, reads  # one process, one config file


def _state(models) -> dict:
    """Everything a run could change in the models: every tensor's bytes and dtype, the modules' flags."""
    state = {}
    modules = {"vqgan": models.vqgan, **{f"clip{i}": c.model for i, c in enumerate(models.clips)}}
    for name, module in modules.items():
        for key, t in {**dict(module.named_parameters()), **dict(module.named_buffers())}.items():
            data = t.detach().float().cpu().numpy().tobytes()  # exact for every dtype a model holds
            state[f"{name}.{key}"] = (t.dtype, t.requires_grad, hashlib.sha256(data).hexdigest())
        state[f"{name}.training"] = any(m.training for m in module.modules())
        state[f"{name}.attributes"] = sorted(
            (f"{m.__class__.__name__}.{k}", repr(v))
            for m in module.modules()
            for k, v in vars(m).items()
            if not k.startswith("_") and isinstance(v, bool | int | float | str | None)
        )
    state["clips"] = [(c.has_text_tower, c.input_size, c.vit_forward) for c in models.clips]
    state["vqgan.encoder"] = models.vqgan.has_encoder
    return state


def test_a_run_leaves_the_models_as_loaded(f16, tiny_clip, tiny_clip2, tmp_path):
    """Two different runs on one Models (an init image with its pull and a lean memory plan, then a
    two-phase story with no init): the models' tensors, flags and parts are the same before and after."""
    Image.new("RGB", (48, 40), (200, 40, 40)).save(tmp_path / "init.png")
    cfg = GenerationConfig(
        "a cat", vqgan=str(f16), clip=(tiny_clip, tiny_clip2), size=(32, 32), steps=2, cutn=2, seed=3
    )
    models = load_models(cfg)
    before = _state(models)
    with_init = validate(replace(cfg, init_image=str(tmp_path / "init.png"), init_weight=0.5))
    run(prepare(with_init, models, plan=Plan(True, 1, 0, 0)), models)  # checkpointing and chunks of 1
    run(prepare(validate(replace(cfg, prompt="a dog ^ a bird", size=(48, 32), seed=4)), models), models)
    assert _state(models) == before


def test_a_stage_stops_after_the_steps_it_is_told(f16, tiny_clip):
    cfg = GenerationConfig("a cat", vqgan=str(f16), clip=(tiny_clip,), size=(32, 32), steps=5, cutn=2, seed=3)
    models = load_models(cfg)
    request = validate(cfg)
    full = run(prepare(request, models), models)
    part = run(prepare(request, models, stop_after=2), models)
    assert (full.steps_done, full.complete) == (5, True) and (part.steps_done, part.complete) == (2, False)
    assert run(prepare(validate(replace(cfg, steps=2)), models), models).image.tobytes() == part.image.tobytes()


@pytest.mark.parametrize("stop_at", [2, 5])  # in the base stage; in the refinement after the GPT pass
def test_an_interrupted_transformer_run_replays_to_the_same_pixels(fixtures, tiny_clip, tmp_path, vq, stop_at):
    from vqclip.errors import Interrupted
    from vqclip.output import OutputOptions
    from vqclip.pipeline.write import write

    cfg = GenerationConfig(
        "a goldfish",
        transformer=str(fixtures / "transformer_tiny_cin.ckpt"),
        clip=(tiny_clip,),
        size=(128, 96),
        base_size=64,
        steps=3,
        refine_steps=3,
        cutn=2,
        seed=4,
    )
    request = validate(cfg)
    models = load_models(request)

    def progress(event):
        if event.job == "optimize" and event.done + (3 if event.stage == "refine" else 0) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as err:
        write(prepare(request, models), models, OutputOptions(tmp_path / "fish.png"), progress=progress)
    partial = err.value.saved
    with Image.open(partial) as im:
        assert f"Steps: {stop_at} of 3 (interrupted)" in im.text["parameters"]
        pixels, size = im.convert("RGB").tobytes(), im.size
    assert size == ((64, 48) if stop_at <= 3 else (128, 96))  # the base image, or the refined canvas
    again = vq("replay", partial, "-o", tmp_path / "again.png", "-q")
    assert again.returncode == 0, again.stderr.decode()
    with Image.open(tmp_path / "again.png") as im:
        assert im.convert("RGB").tobytes() == pixels


def test_models_for_another_run_are_one_sentence(f16, tiny_clip, tiny_clip2, tmp_path, vq):
    from vqclip.errors import UsageError

    cfg = GenerationConfig("a cat", vqgan=str(f16), clip=(tiny_clip,), size=(32, 32), steps=1, cutn=2, seed=3)
    models = load_models(cfg)
    with pytest.raises(UsageError, match="names 2 CLIPs, the models hold 1"):
        prepare(validate(replace(cfg, clip=(tiny_clip, tiny_clip2))), models)
    with pytest.raises(UsageError, match="without the upscaler"):
        prepare(validate(replace(cfg, upscale=4)), models)


def test_the_request_holds_what_validation_read(f16, tiny_clip, tmp_path):
    Image.new("RGB", (20, 10), (0, 0, 255)).save(tmp_path / "blue.png")
    cfg = GenerationConfig(
        "a cat:2 | fog:-1 ^ a dog",
        vqgan=str(f16),
        clip=(tiny_clip,),
        image_prompts=(f"{tmp_path}/./blue.png:0.5:0.1",),
        noise_prompts=("42:0.25",),
    )
    request = validate(cfg)
    assert request.cfg.seed is not None and validate(request.cfg).cfg.seed == request.cfg.seed
    assert [[(p.text, p.weight) for p in phase] for phase in request.story] == [
        [("a cat", 2), ("fog", -1)],
        [("a dog", 1)],
    ]
    blue = request.image_prompts[0]
    assert blue.path == str((tmp_path / "blue.png").resolve()) and (blue.weight, blue.stop) == (0.5, 0.1)
    assert blue.sha256 == hashlib.sha256((tmp_path / "blue.png").read_bytes()).hexdigest()
    assert blue.image.size == (20, 10) and request.cfg.image_prompts == (f"{blue.path}:0.5:0.1",)
    assert (request.noise_prompts[0].seed, request.noise_prompts[0].weight) == (42, 0.25)
    assert request.inputs == {blue.path: blue.sha256} and request.texts == ["a cat", "fog", "a dog"]
    assert request.vqgan.path == f16 and request.clips[0].name == tiny_clip


def test_old_module_paths_still_import_with_a_warning(monkeypatch):
    import importlib

    import vqclip.pipeline.prepare
    import vqclip.weights.loading

    for old, new in (("vqclip.loading", vqclip.weights.loading), ("vqclip.job", vqclip.pipeline.prepare)):
        monkeypatch.delitem(sys.modules, old, raising=False)
        with pytest.warns(DeprecationWarning, match=f"{old} moved to {new.__name__}"):
            assert importlib.import_module(old) is new
    from vqclip.pipeline import generate

    assert generate is vqclip.generate
