"""Cheap structural checks, run before any NLI: each failing rule returns (reason, detail).

On the original HierarCaps accepted data these rules keep ~all rows, while they reject most structurally broken
generations (reversed tiers, a copied tier, a negative equal to its positive). Tier 1 is exempt from the
word-count rule: "motorized transportation => motorcycle" is a valid, shrinking first step.

Three rules catch degenerate text that NLI stand-ins let through (issue #11), each on every tier but the caption:
- `copied_example`: a content-word bigram of the prompt's worked examples ("red coat", "beach ... sunset") that the
  caption does not have: small LLMs copy their examples into unrelated captions.
- `repeated_word`: a short tier that says one content word twice with only function words between ("a bus with a
  bus", "fruit fruit"); long tiers are exempt, where real text does it ("a tennis player on a tennis court").
- `non_word`: a word in neither wordfreq's English list nor the caption ("cral", "stroom").
Measured on the 12,965 development hierarchies (`bench/checks.py`, figures in bench/README.md).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from typing import Collection, Iterable

from hierarcaps.config import ChecksConfig
from hierarcaps.schema import TIERS

_WORD = re.compile(r"[a-z0-9]+")
_ALPHA = re.compile(r"[a-z]+")
# Leftovers of the generation formats inside one tier ("... 4: woman in a red coat", "a => b"): a model ran on past
# its line. "4:30" in a caption has no space after the colon, so it is not caught.
_MARKUP = re.compile(r"(^|\s)(negative\s*)?[1-4]\s*:\s|=>", re.IGNORECASE)
# Words that carry no content of their own: articles, prepositions (spatial ones too, so "a pole in front of a
# pole" is one word said twice), pronouns, auxiliaries.
FUNCTION_WORDS = frozenset(
    "a an the of in on at to and or with without by for from into onto over under near next top up down out off "
    "is are was were be being been it its this that these those there their his her he she they them some while as "
    "has have having who which what other another each front behind side beside inside outside above below during "
    "across along around through against between".split()
)
Phrase = tuple[str, str]


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def words(text: str) -> int:
    return len(_WORD.findall(text.lower()))


def content_words(text: str) -> list[str]:
    """The alphabetic words of `text` that are not function words, lowercased, in order."""
    return [w for w in _ALPHA.findall(text.lower()) if w not in FUNCTION_WORDS]


def caption_words(text: str) -> frozenset[str]:
    """Every alphabetic word of `text`, lowercased: the words a tier may take from its caption (`non_words`)."""
    return frozenset(_ALPHA.findall(text.lower()))


def _said_twice(caption: str | None) -> set[str]:
    return {w for w, n in Counter(content_words(caption or "")).items() if n > 1}


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


# Words that add nothing a negative could contradict with: articles, forms of "be", pronouns, determiners, and the
# prepositions that place a thing without opposing another place ("train in a station" for "train at an empty
# station"). The opposing ones (inside / outside, under / over, up / down, without, behind, ...) count as content:
# "garage outside the home" for "garage inside of a home" is a negative.
_NO_CONTENT = frozenset(
    "a an the is are was were be being been it its this that these those there their his her he she they them some "
    "of in on at to and or with by for from into onto near next top front side".split()
)


def restates(candidate: str, tier: str) -> bool:
    """True when every word of `candidate` (plural -s aside, words in _NO_CONTENT ignored) is in `tier`: "black bear"
    for "black bears", "train in a station" for "white yellow train at an empty station". Such a text says the tier
    again, or part of it, so it cannot be that tier's negative."""
    words_of = lambda text: {_stem(w) for w in _ALPHA.findall(text.lower()) if w not in _NO_CONTENT}  # noqa: E731
    return words_of(candidate) <= words_of(tier)


# ------------------------------------------------------------------ per-tier detectors (the quality bench uses them)


def repeated_content_word(tier: str, caption: str | None = None) -> str | None:
    """The first content word that `tier` has twice or more, or None; a word the caption itself has twice does not
    count. The plain measure ("rows repeating a content word"); the filter's rule is the narrower `echoed_word`."""
    allowed = _said_twice(caption)
    counts = Counter(content_words(tier))
    return next((w for w, n in counts.items() if n > 1 and w not in allowed), None)


def echoed_word(tier: str, caption: str | None = None, max_gap: int = 4, max_content_words: int = 3) -> str | None:
    """A content word said again after at most `max_gap` function words ("a bus with a bus", "fruit fruit"), in a
    tier of at most `max_content_words` content words; a word the caption has twice does not count."""
    if len(content_words(tier)) > max_content_words:
        return None
    allowed = _said_twice(caption)
    tokens = _ALPHA.findall(tier.lower())
    for i, word in enumerate(tokens):
        if word in FUNCTION_WORDS or word in allowed:
            continue
        for nxt in tokens[i + 1 : i + 2 + max_gap]:
            if nxt == word:
                return word
            if nxt not in FUNCTION_WORDS:
                break
    return None


@cache
def english_words(min_zipf: float = 0.0) -> frozenset[str]:
    """wordfreq's large English list (321K words, shipped in its wheel), those at Zipf frequency >= `min_zipf`."""
    from wordfreq import get_frequency_dict

    least = 10 ** (min_zipf - 9)  # Zipf = log10(frequency per billion words)
    return frozenset(w for w, freq in get_frequency_dict("en", wordlist="large").items() if freq >= least)


def non_words(tier: str, allowed_words: Collection[str] = (), min_zipf: float = 0.0) -> list[str]:
    """The alphabetic words of `tier` in neither the English word list nor `allowed_words` (e.g. the caption's)."""
    known = english_words(min_zipf)
    return [w for w in _ALPHA.findall(tier.lower()) if w not in known and w not in allowed_words]


def example_phrases(texts: Iterable[str]) -> frozenset[Phrase]:
    """Content-word bigrams of the worked-example texts (function words between are skipped: "beach at sunset" gives
    ("beach", "sunset")); words are stemmed, so "red coats" matches "red coat"."""
    phrases: set[Phrase] = set()
    for text in texts:
        stems = [_stem(w) for w in content_words(text)]
        phrases.update(zip(stems, stems[1:]))
    return frozenset(phrases)


def prompt_phrases(prompt_names: Iterable[str]) -> frozenset[Phrase]:
    """`example_phrases` of the worked examples ("Caption: ..." then its answer) in these prompt files."""
    from hierarcaps.parsing import parse_answer
    from hierarcaps.prompts import load_prompt

    texts: list[str] = []
    for name in prompt_names:
        for block in load_prompt(name).text.split("Caption:")[1:]:
            if "$" in block:  # the caption to answer, not an example
                continue
            caption, _, answer = block.strip().partition("\n")
            parsed = parse_answer(answer)
            texts += [caption, *parsed.positive, *parsed.negative]
    return example_phrases(texts)


def copied_example_phrase(tier: str, caption: str, phrases: Collection[Phrase]) -> str | None:
    """The shortest span of `tier` that holds an example bigram with a word the caption does not have ("red coat"),
    or None."""
    if not phrases:
        return None
    have = {_stem(w) for w in _ALPHA.findall(caption.lower())}
    tokens = _ALPHA.findall(tier.lower())
    content = [i for i, w in enumerate(tokens) if w not in FUNCTION_WORDS]
    spans = [
        tokens[a : b + 1]
        for a, b in zip(content, content[1:])
        if (pair := (_stem(tokens[a]), _stem(tokens[b]))) in phrases and not set(pair) <= have
    ]
    return " ".join(min(spans, key=len)) if spans else None


# ------------------------------------------------------------------ the rules


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


# Compounds that are another thing than one of their words: a "dog" is no hot dog, a "bear" no teddy bear, a "bird" no
# bird cage. Compound -> the word a tier may not take alone from it.
COMPOUND_SENSES = {
    "hot dog": "dog", "teddy bear": "bear", "stuffed animal": "animal", "baseball bat": "bat", "computer mouse": "mouse",
    "toy car": "car", "toy train": "train", "bear cake": "bear", "dog cake": "dog", "cat cake": "cat", "bird cage": "bird",
    "bird house": "bird", "dog house": "dog", "dog bed": "dog", "cat food": "cat", "dog food": "dog",
}  # fmt: skip


def wrong_sense(tier: str, caption: str) -> str | None:
    """The word of `tier` that the caption has only inside a compound of another sense ("dog on a plate" for "a hot
    dog on a plate", "bird" for "bird cages"), or None; plurals count as their singular."""
    said = [_stem(w) for w in _ALPHA.findall(caption.lower())]
    tier_words = {_stem(w) for w in _ALPHA.findall(tier.lower())}
    for compound, word in COMPOUND_SENSES.items():
        parts = compound.split()
        at = parts.index(word)
        if word not in tier_words or any(p in tier_words for p in parts if p != word):
            continue
        spots = [k for k, w in enumerate(said) if w == word]
        if spots and all(k >= at and said[k - at : k - at + len(parts)] == parts for k in spots):
            return word
    return None


def check_text(tiers: list[str], label: str, caption: str, cfg: ChecksConfig, phrases: Collection[Phrase]) -> tuple[str, str] | None:
    """The degenerate-text rules on each tier (the positive's tier 4, the caption itself, is not judged)."""
    judged = tiers[: TIERS - 1] if label == "positive" else tiers
    allowed = caption_words(caption)
    for i, tier in enumerate(judged, start=1):
        if label == "positive" and cfg.wrong_sense and (word := wrong_sense(tier, caption)):
            return f"{label}_wrong_sense", f"{label} tier {i} {tier!r} says {word!r}, which the caption has only in another sense"
        if cfg.copied_example and (phrase := copied_example_phrase(tier, caption, phrases)):
            return f"{label}_copied_example", f"{label} tier {i} {tier!r} has {phrase!r} from the prompt's worked examples, which the caption lacks"
        if cfg.repeated_word and (word := echoed_word(tier, caption, cfg.repeat_max_gap, cfg.repeat_max_content_words)):
            return f"{label}_repeated_word", f"{label} tier {i} {tier!r} repeats {word!r}"
        if cfg.non_words and (odd := non_words(tier, allowed, cfg.word_min_zipf)):
            return f"{label}_non_word", f"{label} tier {i} {tier!r} has non-word(s) {', '.join(repr(w) for w in odd)}"
    return None


def check_hierarchy(
    positive: list[str] | None,
    negative: list[str] | None,
    caption: str | None,
    cfg: ChecksConfig,
    phrases: Collection[Phrase] = (),
) -> tuple[str, str] | None:
    """The first structural rule this row breaks, or None. `negative` may be None (positive-only data); `phrases`
    are the prompt's example bigrams (`example_phrases`), none = no copied-example rule."""
    failed = check_tiers(positive, "positive", cfg)
    if failed:
        return failed
    if cfg.caption_must_match_tier4 and caption is not None and normalize(positive[-1]) != normalize(caption):
        return "tier4_not_caption", f"positive tier 4 {positive[-1]!r} is not the source caption {caption!r}"
    caption = positive[-1] if caption is None else caption
    if negative is not None:
        if len(negative) != TIERS or any(not normalize(t) for t in negative):
            return "negative_malformed", f"negative must have {TIERS} non-empty tiers"
        for i, (pos, neg) in enumerate(zip(positive, negative), start=1):
            if _MARKUP.search(neg):
                return "negative_format_leak", f"negative tier {i} contains generation-format markup: {neg!r}"
            if normalize(pos) == normalize(neg):
                return "negative_copies_positive", f"negative tier {i} equals positive tier {i}: {neg!r}"
    return check_text(positive, "positive", caption, cfg, phrases) or (
        check_text(negative, "negative", caption, cfg, phrases) if negative is not None else None
    )
