"""Negative candidates from nouns a language model proposes (issue #18): the slots one noun fills where the word groups
of `negatives` cover nothing, the prompt that asks for it, and the proposals turned into edits of the positive tier.

    "brown dog on a beach" -> slot "beach" -> the student proposes "kitchen", "lawn", ... -> "brown dog in a kitchen"
    "animal" => "sheep" -> "Kinds of animal: sheep," -> "goat", "horse", ... -> "goat"
    "bowl" => "toilet bowl" -> "Kinds of bowl: toilet bowl," -> "salad", ... -> "salad bowl"

A proposal is kept only where it cannot be true of the same picture (same number, a place only for a place, a room for
an outdoor place, a member of tier 1's category at tier 2, nothing the caption says). `negatable` counts the tiers that
an edit or a slot covers, so generate can prefer positives it can negate.
"""

from __future__ import annotations

import re

import numpy as np

from hierarcaps import checks
from hierarcaps.negatives import CATEGORIES, CATEGORY_NAMES, VOCAB, WORD, edit_candidates, edits_at, kept, lemmas, parts_of_speech
from hierarcaps.places import ARTICLES, INDOOR, OUTDOORS, PLACES, fits

# Slots a language model may fill (issue #18: the tier slots no word group above covers, half at tiers 2-4), where one
# word can only be one thing: the noun that locates the subject ("in the air" -> "in the water"), a tier 2 that is
# one noun ("bird" under "animal" -> "dog"), and the noun that makes tier 1 a kind ("toilet bowl" -> "salad bowl").
# Not other nouns, adjectives or verbs: "next to the grass" -> "next to the water", "tall grass" -> "green grass" may
# both be true of one picture, and "holding" -> "standing a baseball bat" is no English (measured on a sample of 10
# rows' slots, by eye).
_LOCATING = re.compile(r"\b(?:in|on|at|inside|into|onto|atop)\s+(?:(?:a|an|the|some|his|her|their|its)\s+)?$", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:(?:%s)\s+)?" % "|".join(ARTICLES), re.IGNORECASE)
# Words too generic to contradict anything ("a table" -> "an object"), pronouns, and times ("in traffic" -> "in
# winter" is no other place).
_GENERIC = frozenset(
    "thing things object objects item items structure structures area areas place places view views way part parts kind "
    "kinds type types lot lots set piece pieces system unit stuff something someone use image photo picture him me us "
    "winter summer spring autumn fall day night morning evening afternoon noon midnight sunset sunrise daylight time".split()
)
# Ground one outdoor place may have beside another ("on rocks" -> "on cliffs" is compatible): a place, and outdoors.
_GROUND = "rock cliff dirt ground mud gravel pavement concrete ice stone boulder".split()
# Where a thing is, as opposed to what it rests on: a proposal is a place exactly when the word it replaces is one
# ("pizza on a plate" -> "on a beach" may be a picnic; "on a field" -> "on a bench" may be both).
PLACE_WORDS = frozenset(PLACES) | frozenset(
    "air room yard garden sidewalk shore pasture meadow hill hillside countryside town village stadium playground lawn "
    "driveway runway lot jungle woods wood savanna enclosure pen barn church market mall store shop bar cafe kitchen "
    "hospital school library museum studio hallway porch balcony patio deck dock harbor marina pier station bridge "
    "boat ship bus train plane airplane truck car".split()  # a vehicle is where people and things ride
) | frozenset(_GROUND)


# Outdoor places and ground: one may hold another ("a plane in a field" -> "in a park", "grass" -> "forest").
_OUTDOOR_PLACES = OUTDOORS | frozenset(
    "grass tree woods wood meadow pasture wetland wetlands hill hillside lawn garden yard countryside jungle savanna "
    "shore mountain".split()
) | frozenset(_GROUND)
# People, devices, body parts and positions are not filled: "skateboarder" -> "woman" may be the same person, "on the
# phone" and "umbrella in hand" ("in bed") name no place, "on the bottom" is where "on the floor" may be.
_NOT_FILLED = CATEGORIES["person"][1] | CATEGORIES["device"][1] | frozenset(
    "phone cellphone camera hand head mouth arm lap face hair back front side middle top bottom edge center corner end "
    "background foreground distance".split()
)


def infill_slots(positive: list[str], tier: int) -> list[tuple[int, int]]:
    """(start, end) of each word of positive tier `tier` (2..4) that a language model may replace."""
    text = positive[tier - 1]
    keep = lemmas(positive[tier - 2])
    found = list(WORD.finditer(text.lower()))
    own = len(found) - bool(_ARTICLE.match(text).group(0))
    if tier == 2 and own == 1:
        m = found[-1]
        named = CATEGORY_NAMES.get(positive[0].lower().strip())  # "Kinds of cook: stove," has no answer
        noun = "NOUN" in parts_of_speech(m.group(0)) or named is not None and lemmas(m.group(0)) & CATEGORIES[named][1]  # "fridge"
        return [] if named is None or kept(m.group(0), keep) or not noun else [(m.start(), m.end())]
    if tier == 2 and own == 2 and found[-1].group(0) == positive[0].lower().strip() and positive[0].lower().strip() not in CATEGORY_NAMES:
        m = found[-2]  # the noun that makes tier 1 a kind: "toilet" of "bowl" => "toilet bowl" -> "salad bowl"
        pos = parts_of_speech(m.group(0))
        return [] if kept(m.group(0), keep) or "NOUN" not in pos or "ADJ" in pos or m.group(0) in checks.FUNCTION_WORDS else [(m.start(), m.end())]
    out = []
    for k, m in enumerate(found):
        word = m.group(0)
        following = found[k + 1].group(0) if k + 1 < len(found) else None
        if word in checks.FUNCTION_WORDS or kept(word, keep) or "NOUN" not in parts_of_speech(word) or lemmas(word) & _NOT_FILLED:
            continue
        if following and following not in checks.FUNCTION_WORDS or not _LOCATING.search(text[: m.start()]):
            continue
        out.append((m.start(), m.end()))
    return out


def infill_prompt(positive: list[str], tier: int, start: int, end: int) -> str:
    """What the model continues to propose a word for the slot: the text before it, or for a first word (tier 2's
    "sheep" under "animal", "toilet" of "toilet bowl") a list of tier i-1's kinds that names it ("Kinds of animal:
    sheep,", "Kinds of bowl: toilet bowl,")."""
    text = positive[tier - 1]
    return f"Kinds of {positive[tier - 2]}: {text[start:].strip()}," if _names_a_kind(positive, tier, start) else text[:start].rstrip()


def _names_a_kind(positive: list[str], tier: int, start: int) -> bool:
    """Whether the slot at `start` is a one-noun tier 2 (a kind of tier 1) rather than a place."""
    return tier == 2 and not _LOCATING.search(positive[1][:start])


def infill_edits(positive: list[str], tier: int, start: int, end: int, proposals: list[str], limit: int) -> list[str]:
    """Positive tier `tier` with the noun at start:end replaced by each proposal that is a noun of the same number, in
    order, skipping words tier i-1, the tier or the caption has, rare words and generic ones; a proposal that is one
    of PLACES comes with its own preposition ("on a beach" -> "in a kitchen", not "on a kitchen")."""
    text = positive[tier - 1]
    old = text[start:end]
    taken = lemmas(positive[-1]) | lemmas(text) | lemmas(positive[tier - 2])
    known = checks.english_words(min_zipf=3.0)
    kind = CATEGORY_NAMES.get(positive[0].lower().strip()) if _names_a_kind(positive, tier, start) else None
    out = []
    for new in dict.fromkeys(w.lower() for w in proposals):
        # a kind of tier 1 must be one of its known members: "Kinds of furniture: bench, coffee" meant "coffee table"
        if kind is not None and not lemmas(new) & CATEGORIES[kind][1]:
            continue
        if new in VOCAB.get(positive[tier - 2].lower().strip(), ()):  # a sibling of tier 1 names no kind of it: "cup bowl"
            continue
        if new in checks.FUNCTION_WORDS or new in _GENERIC or new not in known or lemmas(new) & taken:
            continue
        at = _LOCATING.search(text[:start]) if new in PLACES else None  # a known place, with its own preposition
        pos = parts_of_speech(new)  # a noun that is not also an adjective: "on a white" is no place
        if "NOUN" not in pos or "ADJ" in pos or not at and _plural(new) != _plural(old.lower()):
            continue
        if (lemmas(new) & PLACE_WORDS != set()) != (lemmas(old) & PLACE_WORDS != set()) or not fits(new, taken):
            continue
        if lemmas(old) & _OUTDOOR_PLACES and new not in INDOOR:  # as a place swap: "field" -> "park" may be both
            continue
        named = CATEGORY_NAMES.get(old.lower())
        if named is not None and lemmas(new) & CATEGORIES[named][1]:  # "in the room" -> "in the kitchen" says more
            continue
        out.append(edits_at(text, at.start(), end, [PLACES[new]], old)[0] if at else edits_at(text, start, end, [new], old)[0])
        if len(out) == limit:
            break
    return out


def _plural(noun: str) -> bool:
    return noun.endswith("s") and noun not in parts_of_speech(noun).get("NOUN", (noun,))


def negatable(positive: list[str], slots: bool) -> int:
    """How many of tiers 2-4 have a minimal edit (or, with `slots`, a slot a proposed noun fills): a tier without
    either gets no negative where samples are not used, and its row is rejected."""
    rng = np.random.default_rng(0)  # only whether a tier has any edit counts
    return sum(bool(edit_candidates(positive, t, rng, limit=1) or slots and infill_slots(positive, t)) for t in range(2, len(positive) + 1))
