"""Every weights file is read without running pickled code: real-world containers (Lightning metadata with
numpy values, omegaconf hyper-parameters) load, hostile pickles never run (marker files prove it), and
every loader gives the same messages for damaged or refused files."""

import collections
import dataclasses
import os
import shutil
import subprocess
import sys
import types
import typing

import numpy as np
import pytest
import torch

from vqclip import load_vqgan
from vqclip.errors import CheckpointError, ModelLoadError
from vqclip.upscale import load_upscaler
from vqclip.weights.checkpoint import read_checkpoint
from vqclip.weights.clip import load_clip
from vqclip.weights.loading import load_transformer

# ---- real-world containers, pickled from stand-ins of the training libraries' classes -------------


def _install(monkeypatch, module_name: str, *classes_or_functions):
    """Make `module_name` importable with these objects, so pickle names them as the real library would."""
    parts = module_name.split(".")
    for i in range(1, len(parts)):  # the parent packages, as an import needs them
        if ".".join(parts[:i]) not in sys.modules:
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    module = types.ModuleType(module_name)
    for obj in classes_or_functions:
        obj.__module__ = module_name
        setattr(module, obj.__name__, obj)
    monkeypatch.setitem(sys.modules, module_name, module)


@dataclasses.dataclass
class Metadata:  # omegaconf.base.Metadata / ContainerMetadata: the fields that make the pickle interesting
    ref_type: typing.Any = typing.Any
    object_type: typing.Any = dict
    optional: bool = True
    key: typing.Any = None
    flags: dict = dataclasses.field(default_factory=dict)
    resolver_cache: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(dict, {"now": {}}))
    key_type: typing.Any = typing.Any
    element_type: typing.Any = typing.Any


class AnyNode:  # omegaconf.nodes.AnyNode: a value with metadata, pickled by its __dict__
    def __init__(self, value):
        self._val, self._metadata, self._parent = value, Metadata(), None


class DictConfig:  # omegaconf.dictconfig.DictConfig: __getstate__ / __setstate__ of its __dict__
    def __init__(self, content: dict):
        self.__dict__.update(_metadata=Metadata(), _parent=None, _content={k: AnyNode(v) for k, v in content.items()})

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state)


class AttributeDict(dict):  # pytorch_lightning.utilities.parsing.AttributeDict
    pass


class ModelCheckpoint:  # pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint
    pass


@pytest.fixture
def real_world_checkpoint(tmp_path, fixtures, monkeypatch):
    """The tiny VQGAN as a fine-tune saved by Lightning with omegaconf hyper-parameters: numpy scalars and
    dtypes in the callback state, `typing.Any`, `builtins.dict` and a `collections.defaultdict` inside."""
    _install(monkeypatch, "omegaconf.base", Metadata)
    _install(monkeypatch, "omegaconf.nodes", AnyNode)
    _install(monkeypatch, "omegaconf.dictconfig", DictConfig)
    _install(monkeypatch, "pytorch_lightning.utilities.parsing", AttributeDict)
    _install(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint)
    ckpt = read_checkpoint(fixtures / "vqgan_tiny_f16.ckpt")
    ckpt["callbacks"] = {
        ModelCheckpoint: {
            "best_model_score": np.float64(0.25),
            "kth_value": np.float32(1.5),
            "dtype": np.dtype("float32"),
            "scores": np.arange(3, dtype=np.int64),
        }
    }
    ckpt["hyper_parameters"] = AttributeDict(lr=4.5e-6, ddconfig=DictConfig({"ch": 32, "ch_mult": [1, 1, 1, 1, 2]}))
    ckpt["loops"] = collections.defaultdict(list, {"fit": [1, 2]})
    paths = {}
    for legacy in (False, True):
        paths[legacy] = tmp_path / f"finetune{'-legacy' if legacy else ''}.ckpt"
        torch.save(ckpt, paths[legacy], _use_new_zipfile_serialization=not legacy)
        shutil.copy(fixtures / "vqgan_tiny_f16.yaml", paths[legacy].with_suffix(".yaml"))
    for name in [n for n in sys.modules if n.startswith(("omegaconf", "pytorch_lightning"))]:
        monkeypatch.delitem(sys.modules, name)  # as on a user's machine: neither library installed
    return paths


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_real_world_containers_load_as_data(real_world_checkpoint, legacy, reference):
    ckpt = read_checkpoint(real_world_checkpoint[legacy])
    (callback,) = ckpt["callbacks"].values()
    assert callback["best_model_score"] == 0.25 and isinstance(callback["best_model_score"], np.float64)
    assert callback["dtype"] == np.float32 and callback["scores"].tolist() == [0, 1, 2]
    assert ckpt["hyper_parameters"]["lr"] == 4.5e-6
    assert ckpt["loops"] == {"fit": [1, 2]}
    model = load_vqgan(real_world_checkpoint[legacy])
    with torch.no_grad():
        _, idx = model.quantize(model.encode(reference["x"]))
    assert torch.equal(idx, reference["f16_indices"])


def test_lightning_checkpoint_loads_without_pytorch_lightning(fixtures):
    import importlib.util

    assert importlib.util.find_spec("pytorch_lightning") is None
    ckpt = read_checkpoint(fixtures / "vqgan_tiny_f16.ckpt")
    assert "state_dict" in ckpt
    assert any("ModelCheckpoint" in str(k) for k in ckpt["callbacks"])


# ---- hostile pickles ---------------------------------------------------------------------------------


def _touch(path):
    open(path, "w").close()


def touch(path):  # the same, to be placed in a stand-in library module
    open(path, "w").close()


class Payload:
    """Pickles as a call of `target(*args)`: loading it with plain pickle would create the marker file."""

    def __init__(self, target, *args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


HOSTILE = {
    "os.system": (lambda m: Payload(os.system, f"touch {m}"), "system"),
    "eval": (lambda m: Payload(eval, f"open({str(m)!r}, 'w').close()"), "builtins.eval"),
    "exec": (lambda m: Payload(exec, f"open({str(m)!r}, 'w').close()"), "builtins.exec"),
    "subprocess": (lambda m: Payload(subprocess.call, ["touch", str(m)]), "subprocess.call"),
    "any function": (lambda m: Payload(_touch, str(m)), f"{__name__}._touch"),
    "a method": (lambda m: Payload(type(m).touch, m), "builtins.getattr"),
    "torch's own": (lambda m: Payload(torch.save, {}, str(m)), "torch.serialization.save"),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_pickle_never_runs_and_is_refused_by_name(tmp_path, kind, legacy):
    make, named = HOSTILE[kind]
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": make(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert not marker.exists()
    message = err.value.message
    assert named in message and "not plain data" in message
    assert "malicious" not in message.lower() and "\x1b" not in message + err.value.hint
    assert "state_dict()" in err.value.hint  # what a user can do about their own file
    assert err.value.exit_code == 3


def test_stand_in_modules_never_run_their_functions(tmp_path, monkeypatch):
    """A pickle may name a function of a library that gets stand-ins: the stand-in is called, not it."""
    _install(monkeypatch, "pytorch_lightning.utilities", touch)
    marker = tmp_path / "ran"
    path = tmp_path / "sneaky.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(touch, str(marker))}, path)
    monkeypatch.delitem(sys.modules, "pytorch_lightning.utilities")
    read_checkpoint(path)
    assert not marker.exists()


# ---- damaged files, the same message through every loader ----------------------------------------


def _truncated(fixtures, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = (fixtures / "vqgan_tiny_f16.ckpt").read_bytes()
    path = tmp_path / "model.ckpt"
    path.write_bytes(data[: len(data) // 2])
    shutil.copy(fixtures / "vqgan_tiny_f16.yaml", tmp_path / "model.yaml")
    return path


def test_truncated_checkpoint_names_the_file(fixtures, tmp_path):
    path = _truncated(fixtures, tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_vqgan(path)
    assert str(path) in err.value.message
    assert "truncated" in err.value.message
    assert "vqclip models verify" not in err.value.hint  # the user's own file: verify cannot fetch it again


def test_damaged_file_in_the_cache_suggests_verify(fixtures, isolated):
    cached = _truncated(fixtures, isolated / "cache" / "tiny")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(cached)
    assert "vqclip models verify" in err.value.hint


LOADERS = {
    "--vqgan": lambda path, clip: load_vqgan(path),
    "--transformer": lambda path, clip: load_transformer(path),
    "--clip CONFIG.json:WEIGHTS": lambda path, clip: load_clip(f"{clip.rpartition(':')[0]}:{path}"),
    "upscale --model": lambda path, clip: load_upscaler(path),
}
BAD_FILES = {
    "web page": (lambda p: p.write_bytes(b"<!DOCTYPE html><html>Link does not exist.</html>"), "web page (HTML)"),
    "hostile": (lambda p: torch.save({"x": Payload(eval, "1")}, p), "cannot be loaded safely"),
    "legacy hostile": (lambda p: torch.save(Payload(eval, "1"), p, _use_new_zipfile_serialization=False), "eval"),
    "empty": (lambda p: p.write_bytes(b""), "it is empty"),
}


@pytest.mark.parametrize("bad", list(BAD_FILES))
@pytest.mark.parametrize("option", list(LOADERS))
def test_every_weights_option_reads_through_the_same_safe_reader(tmp_path, fixtures, tiny_clip, option, bad):
    write, expected = BAD_FILES[bad]
    path = tmp_path / "weights.pth"
    write(path)
    config = "transformer_tiny_cin.yaml" if option == "--transformer" else "vqgan_tiny_f16.yaml"
    shutil.copy(fixtures / config, tmp_path / "weights.yaml")
    with pytest.raises(CheckpointError) as err:
        LOADERS[option](path, tiny_clip)
    assert str(path) in err.value.message and expected in err.value.message
    assert "weights_only" not in err.value.message + err.value.hint
    assert err.value.exit_code == 3


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated; such files still exist
def test_torchscript_archive_is_named(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match="TorchScript archive") as err:
        read_checkpoint(path)
    assert "ViT-B-32/openai" in err.value.hint


def test_safetensors_weights_are_read(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(4.0)}, path)
    assert torch.equal(read_checkpoint(path)["a"], torch.arange(4.0))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="not a weights file"):
        read_checkpoint(path)


def test_missing_and_wrong_shape_tensors_are_named(fixtures, tmp_path):
    ckpt = read_checkpoint(fixtures / "vqgan_tiny_f16.ckpt")
    sd = dict(ckpt["state_dict"])
    del sd["decoder.conv_out.bias"]
    sd["quant_conv.weight"] = torch.zeros(3, 3, 1, 1)
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ModelLoadError) as err:
        load_vqgan(path, fixtures / "vqgan_tiny_f16.yaml")
    message = err.value.message
    assert "missing: decoder.conv_out.bias" in message
    assert "unexpected: extra.weight" in message
    assert "quant_conv.weight (3, 3, 1, 1)" in message


def test_loss_keys_are_dropped_but_present_in_the_file(fixtures):
    sd = read_checkpoint(fixtures / "vqgan_tiny_f16.ckpt")["state_dict"]
    assert any(k.startswith("loss.") for k in sd)
    load_vqgan(fixtures / "vqgan_tiny_f16.ckpt")  # strict, so the loss keys must have been dropped
