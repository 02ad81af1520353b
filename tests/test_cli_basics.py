"""The CLI's edges: instant --help without torch, the option table, exit codes for bad input."""

import dataclasses
import subprocess
import sys

from click.testing import CliRunner

from vqclip import __version__
from vqclip.cli import cli
from vqclip.cli.generate import generate
from vqclip.cli.options import CONFIG_FIELDS
from vqclip.config import GenerationConfig


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from vqclip.cli import main\n"
        "for argv in (['--help'], ['--version'], ['generate', '--help'], ['models', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage: vqclip" in result.stdout


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_cli_options_match_config():
    """Every generation option is a GenerationConfig field with the same default, and vice versa."""
    fields = {f.name: f for f in dataclasses.fields(GenerationConfig)}
    assert set(CONFIG_FIELDS) == set(fields) - {"prompt"}
    defaults = generate.make_context("generate", []).params  # what the CLI passes when no option is given
    for name in CONFIG_FIELDS:
        assert name in defaults, f"--{name.replace('_', '-')} missing"
        assert defaults[name] == fields[name].default, f"--{name}: {defaults[name]!r} != {fields[name].default!r}"


def test_prompt_without_subcommand_is_generate():
    result = CliRunner().invoke(cli, ["a cat", "--steps", "0"])
    assert result.exit_code == 2
    assert "--steps" in result.output


def test_unknown_model_is_a_usage_error(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("a cat", "--vqgan", "vqgan_imagenet_f16_1638", cwd=tmp_path)
    assert result.returncode == 2
    assert b"Unknown model 'vqgan_imagenet_f16_1638'" in result.stderr
    assert b"vqgan_imagenet_f16_16384" in result.stderr  # the suggestion
    assert result.stdout == b""
