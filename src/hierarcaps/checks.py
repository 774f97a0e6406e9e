"""Cheap structural checks, run before any NLI: each failing rule returns (reason, detail).

On the original HierarCaps accepted data these rules keep ~all rows, while they reject most structurally broken
generations (reversed tiers, a copied tier, a negative equal to its positive). Tier 1 is exempt from the
word-count rule: "motorized transportation => motorcycle" is a valid, shrinking first step.
"""

from __future__ import annotations

import re

from hierarcaps.config import ChecksConfig
from hierarcaps.schema import TIERS

_WORD = re.compile(r"[a-z0-9]+")
# Leftovers of the generation formats inside one tier ("... 4: woman in a red coat", "a => b"): a model ran on past
# its line. "4:30" in a caption has no space after the colon, so it is not caught.
_MARKUP = re.compile(r"(^|\s)(negative\s*)?[1-4]\s*:\s|=>", re.IGNORECASE)


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def words(text: str) -> int:
    return len(_WORD.findall(text.lower()))


def check_tiers(tiers: list[str] | None, label: str, cfg: ChecksConfig) -> tuple[str, str] | None:
    if tiers is None or len(tiers) != TIERS:
        return f"{label}_not_4_tiers", f"{label} has {0 if tiers is None else len(tiers)} tiers, expected {TIERS}"
    for i, tier in enumerate(tiers, start=1):
        if not tier or not normalize(tier):
            return f"{label}_empty_tier", f"{label} tier {i} is empty"
        if _MARKUP.search(tier):
            return f"{label}_format_leak", f"{label} tier {i} contains generation-format markup: {tier!r}"
        if words(tier) > cfg.max_tier_words:
            return f"{label}_tier_too_long", f"{label} tier {i} has {words(tier)} words (max {cfg.max_tier_words})"
    normalized = [normalize(t) for t in tiers]
    if len(set(normalized)) != TIERS:
        first = next(i for i, t in enumerate(normalized) if normalized.count(t) > 1)
        return f"{label}_repeated_tier", f"{label} tier {first + 1} is repeated: {tiers[first]!r}"
    if cfg.min_words_increase:
        counts = [words(t) for t in tiers]
        for i in range(1, TIERS - 1):
            if counts[i + 1] < counts[i]:
                return (
                    f"{label}_less_specific",
                    f"{label} tier {i + 2} ({counts[i + 1]} words) is shorter than tier {i + 1} ({counts[i]} words)",
                )
    return None


def check_hierarchy(
    positive: list[str] | None, negative: list[str] | None, caption: str | None, cfg: ChecksConfig
) -> tuple[str, str] | None:
    """The first structural rule this row breaks, or None. `negative` may be None (positive-only data)."""
    failed = check_tiers(positive, "positive", cfg)
    if failed:
        return failed
    if cfg.caption_must_match_tier4 and caption is not None and normalize(positive[-1]) != normalize(caption):
        return "tier4_not_caption", f"positive tier 4 {positive[-1]!r} is not the source caption {caption!r}"
    if negative is None:
        return None
    if len(negative) != TIERS or any(not normalize(t) for t in negative):
        return "negative_malformed", f"negative must have {TIERS} non-empty tiers"
    for i, (pos, neg) in enumerate(zip(positive, negative), start=1):
        if _MARKUP.search(neg):
            return "negative_format_leak", f"negative tier {i} contains generation-format markup: {neg!r}"
        if normalize(pos) == normalize(neg):
            return "negative_copies_positive", f"negative tier {i} equals positive tier {i}: {neg!r}"
    return None
