"""Prompt syntax (Crowson's VQGAN+CLIP notebook conventions).

"a city at night:1.5:0.2"   text, weight 1.5, stop floor 0.2 (only trailing numeric fields count,
                            so colons inside the text or a URL survive)
"forest | fog:0.5"          several prompts, their losses add
"dawn ^ noon ^ dusk"        story phases, switched every --change-prompt-every steps
"blurry:-1"                 a negative weight pushes the image away from the prompt
"""

import math
from dataclasses import dataclass

from vqclip.errors import UsageError

_NUMBER_CHARS = set("0123456789.+-eE")


@dataclass(frozen=True)
class Prompt:
    text: str
    weight: float = 1.0
    stop: float = float("-inf")


def _number(field: str, whole: str) -> float | None:
    """The float in a trailing field, None if the field is text; an error if it is a broken number."""
    try:
        value = float(field)
    except ValueError:
        stripped = field.strip()
        if stripped and set(stripped) <= _NUMBER_CHARS and any(c.isdigit() for c in stripped):
            raise UsageError(f"Weight {field.strip()!r} in prompt {whole!r} is not a number.") from None
        return None
    if not math.isfinite(value):
        raise UsageError(f"Weight {field.strip()!r} in prompt {whole!r} must be a finite number.")
    return value


def parse_prompt(text: str) -> Prompt:
    """'text:weight:stop' with up to two trailing numeric fields."""
    parts = text.split(":")
    numbers = []
    while len(parts) > 1 and len(numbers) < 2:
        value = _number(parts[-1], text)
        if value is None:
            break
        numbers.insert(0, value)
        parts.pop()
    body = ":".join(parts).strip()
    weight = numbers[0] if numbers else 1.0
    stop = numbers[1] if len(numbers) > 1 else float("-inf")
    return Prompt(body, weight, stop)


def parse_story(text: str) -> list[list[Prompt]]:
    """Phases ('^') of prompts ('|'); empty pieces are dropped."""
    phases = []
    for phase in text.split("^"):
        prompts = [parse_prompt(p) for p in phase.split("|") if p.strip()]
        prompts = [p for p in prompts if p.text]
        if prompts:
            phases.append(prompts)
    return phases


def phase_at(step: int, n_phases: int, steps: int, every: int) -> int:
    """The story phase of a step: every `every` steps, or the steps split evenly when every == 0."""
    if n_phases <= 1:
        return 0
    if every:
        return min(step // every, n_phases - 1)
    return min(step * n_phases // steps, n_phases - 1)  # phase k runs for steps/n steps, rounded
