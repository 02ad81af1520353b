"""Checkpoints are read without running pickled code; damage and mismatches are reported by name."""

import os
import shutil
import zipfile

import pytest
import torch

from vqclip import load_vqgan
from vqclip.checkpoint import read_checkpoint
from vqclip.errors import CheckpointError, ModelLoadError


class _RunsCode:
    """Pickles as a call to os.system: loading it with plain pickle would run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_lightning_checkpoint_loads_without_pytorch_lightning(fixtures):
    import importlib.util

    assert importlib.util.find_spec("pytorch_lightning") is None
    ckpt = read_checkpoint(fixtures / "vqgan_tiny_f16.ckpt")
    assert "state_dict" in ckpt
    assert any("ModelCheckpoint" in str(k) for k in ckpt["callbacks"])


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="asks to run code") as err:
        read_checkpoint(path)
    assert "system" in str(err.value)
    assert not marker.exists()


def test_truncated_checkpoint_names_the_file(fixtures, tmp_path):
    path = tmp_path / "model.ckpt"
    data = (fixtures / "vqgan_tiny_f16.ckpt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    shutil.copy(fixtures / "vqgan_tiny_f16.yaml", tmp_path / "model.yaml")
    with pytest.raises(CheckpointError) as err:
        load_vqgan(path)
    assert str(path) in err.value.message
    assert "truncated or corrupt" in err.value.message
    assert "vqclip models verify" in err.value.hint


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


def test_not_a_zip_is_reported(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"<html>Link does not exist.</html>")
    assert not zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        read_checkpoint(path)
