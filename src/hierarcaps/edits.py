"""Word-level edits that mimic the errors caption-hierarchy generators make.

Each edit takes a text and a numpy Generator and returns the edited text, or None when the text offers no place for
that edit. They feed both the training augmentations (`pairs.py`) and the corruptions of the bench and of threshold
selection (`corrupt.py`):

- `swap_colour`, `swap_number`, `swap_noun`: change a colour, a number word or a common COCO noun into another of the
  same kind ("black cat" -> "white cat", "two dogs" -> "three dogs", "a man" -> "a woman"). The original text
  contradicts the result (or at least does not entail it).
- `insert_word`: add a modifier ("a motorcycle" -> "a rusty motorcycle"). The original does not entail the result,
  while the result entails the original (a more specific text entails the generic one).
- `drop_word`: remove one modifier; the original entails the result.

Nouns are swapped only within a group (people, animals, vehicles, ...) and keep their number, so the edited text
stays fluent: generators produce fluent wrong text, not word salad.
"""

from __future__ import annotations

import re

import numpy as np

COLOURS = ("black", "white", "red", "blue", "green", "yellow", "orange", "pink", "purple", "brown", "gray", "silver")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Singular / plural groups; a word is swapped for another word of its own list.
NOUN_GROUPS = (
    ("man", "woman", "boy", "girl", "child", "lady", "guy", "baby"),
    ("men", "women", "boys", "girls", "children", "ladies", "guys", "babies"),
    ("dog", "cat", "horse", "cow", "sheep", "bird", "elephant", "giraffe", "zebra", "bear"),
    ("dogs", "cats", "horses", "cows", "birds", "elephants", "giraffes", "zebras", "bears"),
    ("car", "truck", "bus", "train", "motorcycle", "bicycle", "airplane", "boat", "van", "scooter"),
    ("cars", "trucks", "buses", "trains", "motorcycles", "bicycles", "airplanes", "boats", "vans"),
    ("pizza", "sandwich", "cake", "donut", "banana", "apple", "broccoli", "salad", "hot dog", "burger"),
    ("pizzas", "sandwiches", "cakes", "donuts", "bananas", "apples", "carrots", "oranges", "hot dogs"),
    ("chair", "couch", "bed", "table", "bench", "desk", "sofa", "toilet", "sink", "counter"),
    ("kitchen", "bathroom", "bedroom", "living room", "street", "beach", "field", "park", "road", "room"),
    ("laptop", "phone", "computer", "television", "umbrella", "kite", "frisbee", "skateboard", "surfboard", "clock"),
    ("tennis", "baseball", "soccer", "football", "basketball", "volleyball"),
)
MODIFIERS = (
    "large", "small", "old", "young", "wooden", "tall", "little", "dirty", "empty", "busy", "modern", "broken",
    "wet", "shiny", "rusty", "crowded", "sleepy", "giant", "tiny", "metal",
)  # fmt: skip

_NOUN_TO_GROUP = {noun: group for group in NOUN_GROUPS for noun in group}
_DROPPABLE = frozenset(COLOURS) | frozenset(MODIFIERS)


def _match_case(word: str, like: str) -> str:
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def _replace_one(text: str, vocab: dict[str, tuple[str, ...]], rng: np.random.Generator) -> str | None:
    """Replace one word of `text` found in `vocab` with another member of its tuple; None if none is present."""
    hits = []
    for size in (2, 1):  # two-word entries ("hot dog") first, so "hot dog" is not read as "dog"
        pattern = r"\b" + r"\s+".join([r"[A-Za-z]+"] * size) + r"\b"
        for m in re.finditer(pattern, text):
            key = " ".join(m.group(0).lower().split())
            if key in vocab and not any(s < m.end() and m.start() < e for s, e in hits):
                hits.append((m.start(), m.end()))
    if not hits:
        return None
    start, end = sorted(hits)[int(rng.integers(len(hits)))]
    old = " ".join(text[start:end].lower().split())
    choices = [w for w in vocab[old] if w != old]
    new = _match_case(choices[int(rng.integers(len(choices)))], text[start:end])
    return text[:start] + new + text[end:]


def swap_colour(text: str, rng: np.random.Generator) -> str | None:
    return _replace_one(text, {c: COLOURS for c in COLOURS}, rng)


def swap_number(text: str, rng: np.random.Generator) -> str | None:
    return _replace_one(text, {n: NUMBERS for n in NUMBERS}, rng)


def swap_noun(text: str, rng: np.random.Generator) -> str | None:
    return _replace_one(text, _NOUN_TO_GROUP, rng)


def insert_word(text: str, rng: np.random.Generator, avoid: str = "") -> str | None:
    """Insert a modifier before a known noun (else before the last word); None for one-word texts.
    Words of `avoid` (e.g. the premise) are not inserted, so the premise cannot entail the result by accident."""
    words = text.split(" ")
    if len(words) < 2:
        return None
    lowered = [w.lower() for w in words]
    nouns = [
        i
        for i, w in enumerate(lowered)
        if i > 0 and w.strip(".,!?") in _NOUN_TO_GROUP and f"{lowered[i - 1]} {w.strip('.,!?')}" not in _NOUN_TO_GROUP
    ]
    at = nouns[int(rng.integers(len(nouns)))] if nouns else len(words) - 1
    present = {w.strip(".,!?") for w in lowered + avoid.lower().split()}
    choices = [m for m in MODIFIERS + COLOURS if m not in present]
    words.insert(at, choices[int(rng.integers(len(choices)))])
    return " ".join(words)


def drop_word(text: str, rng: np.random.Generator) -> str | None:
    """Remove one colour or modifier word; None when the text has none (or would be left with one word)."""
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w.lower().strip(".,!?") in _DROPPABLE and w == w.strip(".,!?")]
    if not spots or len(words) < 3:
        return None
    del words[spots[int(rng.integers(len(spots)))]]
    return " ".join(words)


SWAPS = {"colour": swap_colour, "number": swap_number, "noun": swap_noun}


# Contradiction swaps (nli/domain.py): every word of a group excludes every other in one picture, so unlike
# NOUN_GROUPS (which mimics generator errors) no group holds synonyms ("couch" / "sofa") or a part and its whole
# ("room" / "kitchen").
EXCLUSIVE_GROUPS = {
    "person": (("man", "woman", "boy", "girl"), ("men", "women", "boys", "girls")),
    "animal": (
        ("dog", "cat", "horse", "cow", "sheep", "bird", "elephant", "giraffe", "zebra", "bear"),
        ("dogs", "cats", "horses", "cows", "birds", "elephants", "giraffes", "zebras", "bears"),
    ),
    "vehicle": (
        ("car", "truck", "bus", "train", "motorcycle", "bicycle", "airplane", "boat"),
        ("cars", "trucks", "buses", "trains", "motorcycles", "bicycles", "airplanes", "boats"),
    ),
    "food": (("pizza", "sandwich", "cake", "donut", "banana", "apple", "broccoli", "hot dog"),),
    "place": (("kitchen", "bathroom", "bedroom", "beach", "street", "forest", "airport", "ocean", "desert", "restaurant", "office"),),
    "sport": (("tennis", "baseball", "soccer", "basketball", "volleyball"),),
    "action": (
        ("sitting", "standing", "lying", "walking", "running", "jumping"),
        ("sits", "stands", "lies", "walks", "runs", "jumps"),
        ("sleeping", "eating", "swimming", "flying"),
    ),
}
OPPOSITES = (
    ("on", "under"), ("inside", "outside"), ("above", "below"), ("with", "without"), ("up", "down"),
    ("empty", "full"), ("open", "closed"), ("indoors", "outdoors"), ("day", "night"), ("wet", "dry"),
    ("large", "small"), ("big", "small"), ("old", "new"), ("behind", "in front of"), ("near", "far from"),
)  # fmt: skip


def _group_swap(groups: tuple[tuple[str, ...], ...]):
    vocab = {word: group for group in groups for word in group}
    return lambda text, rng: _replace_one(text, vocab, rng)


def swap_relation(text: str, rng: np.random.Generator) -> str | None:
    vocab: dict[str, tuple[str, ...]] = {}
    for a, b in OPPOSITES:
        vocab.setdefault(a, (a,))
        vocab[a] += (b,)
        if " " not in b:
            vocab.setdefault(b, (b,))
            vocab[b] += (a,)
    return _replace_one(text, vocab, rng)


CONTRADICTION_SWAPS = {
    "colour": swap_colour,
    "number": swap_number,
    **{kind: _group_swap(groups) for kind, groups in EXCLUSIVE_GROUPS.items()},
    "relation": swap_relation,
}
