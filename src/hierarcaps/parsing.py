"""Strict parser of the LLM's numbered-line answer, and its inverse (used to show few-shot examples).

The answer format (prompts/seed_v1.txt, augment_v1.txt) is:

    1: dog
    2: brown dog
    3: brown dog on a beach
    Negative:
    1: cat
    2: black dog
    3: brown dog in a park
    4: A brown dog sleeps on a sofa at home.

Tier 4 of the positive side is the source caption, so the model writes tiers 1-3 only; a `4:` line it adds anyway
is accepted and ignored (small models like to copy the caption there). Why numbered lines: SmolLM2-135M writes valid
JSON for 0/10 captions but numbered positive tiers for nearly all (the `Negative:` block is what it misses, which
structured decoding then forces: engines/constrained.py).

Strict means: the numbers must run 1, 2, 3(, 4) and 1, 2, 3, 4 with no chatter between them, a tier must not be empty,
and a fifth tier is an error (it means the model is rambling). Text before the first numbered line and after the
negative block is ignored: models add "Sure! Here is..." and explanations around an otherwise good answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hierarcaps.schema import TIERS

NEGATIVE_HEADER = "Negative:"
_NUMBERED = re.compile(r"^\s*(\d+)\s*[:.)]\s?(.*)$")
_HEADER = re.compile(r"^\s*\**\s*negatives?\b[^:]*:\s*\**\s*$", re.IGNORECASE)
_QUOTES = "\"'`*"


# The start of every answer line, in order: what structured decoding forces (engines/constrained.py) and what
# STRUCTURED_REGEX (vLLM structured outputs) spells out. Tiers are free text without a newline.
LINE_PREFIXES = ("1:", "2:", "3:", NEGATIVE_HEADER + "\n1:", "2:", "3:", "4:")
GROWING_LINES = (2,)  # line indices (0-based) whose word count may not drop: positive tier 3 vs tier 2 (checks.py)
_TIER = r" ?[^\n ][^\n]{0,199}"
STRUCTURED_REGEX = "".join(re.escape(prefix) + _TIER + r"\n" for prefix in LINE_PREFIXES)


class ParseError(ValueError):
    """The answer does not follow the format; `reason` is a short rule name for the rejects shard."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Answer:
    positive: list[str]  # tiers 1-3 as the model wrote them (its tier 4, if any, dropped)
    negative: list[str]  # tiers 1-4

    def hierarchy(self, caption: str) -> list[str]:
        """The full positive hierarchy: the model's tiers 1-3, then the caption itself."""
        return [*self.positive, caption]


def _clean(text: str) -> str:
    return text.strip().strip(_QUOTES).strip()


def _block(lines: list[str], label: str, allowed: tuple[int, ...]) -> list[str]:
    """Numbered lines 1..n at the start of `lines` (blank lines and leading chatter skipped), n in `allowed`."""
    tiers: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        match = _NUMBERED.match(line)
        if match is None:
            if not tiers:
                continue  # chatter before the block
            break  # the block ended; what follows is checked by the caller or ignored
        number, text = int(match[1]), _clean(match[2])
        if number != len(tiers) + 1:
            if tiers and number == 1:
                break  # a second list started: the block is over
            raise ParseError(f"{label}_out_of_order", f"{label} line numbered {number} where {len(tiers) + 1} was expected")
        if not text:
            raise ParseError(f"{label}_empty_tier", f"{label} tier {number} is empty")
        tiers.append(text)
        if len(tiers) > max(allowed):
            raise ParseError(f"{label}_too_many_tiers", f"{label} has more than {max(allowed)} numbered lines")
    if len(tiers) not in allowed:
        raise ParseError(f"{label}_missing_tiers", f"{label} has {len(tiers)} numbered lines, expected {max(allowed)}")
    return tiers


def parse_answer(text: str | None) -> Answer:
    """Raw model output -> Answer, or ParseError saying what is wrong."""
    if text is None or not text.strip():
        raise ParseError("empty", "the model returned no text")
    lines = [line.rstrip("\r") for line in text.strip().split("\n")]  # not splitlines(): it also splits on \x1c, \x85, ...
    headers = [i for i, line in enumerate(lines) if _HEADER.match(line)]
    if not headers:
        raise ParseError("no_negative_block", f"no {NEGATIVE_HEADER!r} line in the answer")
    split = headers[0]
    before, after = lines[:split], lines[split + 1 :]
    if not any(_NUMBERED.match(line) for line in before):
        raise ParseError("positive_missing_tiers", f"no numbered positive lines before {NEGATIVE_HEADER!r}")
    positive = _block(before, "positive", (TIERS - 1, TIERS))
    # Between the positive block and the header only blank lines may stand: anything else is chatter mid-answer.
    last = max(i for i, line in enumerate(before) if _NUMBERED.match(line))
    if len([line for line in before if _NUMBERED.match(line)]) != len(positive):
        raise ParseError("positive_too_many_tiers", "numbered positive lines after the positive block")
    if any(line.strip() for line in before[last + 1 :]):
        raise ParseError("chatter_in_answer", f"text between the positive tiers and {NEGATIVE_HEADER!r}")
    negative = _block(after, "negative", (TIERS,))
    return Answer(positive=positive[: TIERS - 1], negative=negative)


def format_answer(positive: list[str], negative: list[str]) -> str:
    """The answer text a model should write for this hierarchy (inverse of parse_answer; tier 4 is left out)."""
    lines = [f"{i}: {tier}" for i, tier in enumerate(positive[: TIERS - 1], start=1)]
    lines.append(NEGATIVE_HEADER)
    lines += [f"{i}: {tier}" for i, tier in enumerate(negative, start=1)]
    return "\n".join(lines)
