import math

import pytest

from vqclip.config import GenerationConfig, parse_size, round_size
from vqclip.errors import UsageError
from vqclip.output import default_name, slug
from vqclip.pipeline.validate import validate
from vqclip.prompts import Prompt, parse_prompt, parse_story, phase_at


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a cat", Prompt("a cat", 1.0)),
        ("a cat:2", Prompt("a cat", 2.0)),
        ("a cat:-1.5:0.2", Prompt("a cat", -1.5, 0.2)),
        ("time: 10:30 pm", Prompt("time: 10:30 pm", 1.0)),
        ("https://example.org/a.png:0.5", Prompt("https://example.org/a.png", 0.5)),
        ("style: 1920s", Prompt("style: 1920s", 1.0)),
        ("ratio 16:9:2", Prompt("ratio 16", 9.0, 2.0)),  # only two trailing numbers are parsed
    ],
)
def test_parse_prompt(text, expected):
    got = parse_prompt(text)
    assert (got.text, got.weight) == (expected.text, expected.weight)
    assert got.stop == expected.stop or (math.isinf(got.stop) and math.isinf(expected.stop))


@pytest.mark.parametrize("text", ["a cat:1..5", "a cat:--2", "a cat:nan", "a cat:inf"])
def test_unparsable_weight(text):
    with pytest.raises(UsageError, match="Weight"):
        parse_prompt(text)


def test_story_and_phases():
    story = parse_story("dawn | fog:0.5 ^ noon ^ dusk:-1")
    assert [[p.text for p in phase] for phase in story] == [["dawn", "fog"], ["noon"], ["dusk"]]
    assert story[2][0].weight == -1
    assert [phase_at(i, 3, 30, 0) for i in (0, 9, 10, 29)] == [0, 0, 1, 2]
    assert [phase_at(i, 3, 30, 4) for i in (0, 4, 8, 29)] == [0, 1, 2, 2]


@pytest.mark.parametrize("n_phases, steps", [(5, 12), (11, 100), (31, 300), (5, 5), (3, 1000)])
def test_an_even_split_runs_every_phase_in_order_for_about_steps_over_n(n_phases, steps):
    phases = [phase_at(i, n_phases, steps, 0) for i in range(steps)]
    assert phases == sorted(phases) and set(phases) == set(range(n_phases))
    lengths = [phases.count(k) for k in range(n_phases)]
    assert max(lengths) - min(lengths) <= 1, lengths


def test_sizes():
    assert parse_size("512") == (512, 512)
    assert parse_size("640x360") == (640, 360)
    assert round_size((650, 370), 16) == (656, 368)
    assert round_size((5, 5), 16) == (16, 16)
    with pytest.raises(UsageError):
        parse_size("big")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"prompt": "x", "size": (4, 4)}, "too small"),
        ({"prompt": "x", "size": (100000, 512)}, "too large"),
        ({"prompt": "x", "augment": ("blur",)}, "augment"),
        ({"prompt": "x", "clip": ()}, "--clip"),
    ],
)
def test_config_rejects(kwargs, message):
    with pytest.raises(UsageError, match=message):
        GenerationConfig(**kwargs)


def test_names():
    assert slug("City during a rainy night") == "city-during-a-rainy-night"
    assert (
        validate(GenerationConfig("City during a rainy night:1.5 | fog", seed=1)).name_stem
        == "City during a rainy night"
    )
    assert default_name("a/b\\c", 7) == "a-b-c_s7.png"
    assert slug("!!!") == "image"
