"""Negative tiers that contradict by construction: minimal edits of the part a positive tier adds (issue #18).

Tier i adds something over tier i-1: a colour, a category member, a number, a place, an action, a relation. Changing
that added part into something of the same kind that cannot hold at the same time gives a text that contradicts tier i
and still entails tier i-1, because every word tier i-1 has is kept:

    "dog" => "brown dog"            -> "black dog"
    "brown dog" => "brown dog on a beach"   -> "brown dog in a kitchen"
    "... on a beach" => "A brown dog runs on the beach at sunset."   -> "A brown dog sits on the beach at sunset."

`edit_candidates` lists such single edits of one tier (and takes away what a "with" / "and" phrase adds: "bathroom
with a mirror" -> "bathroom without a mirror"); `hierarcaps.infill` turns nouns a language model proposes for a place
or a one-noun tier 2 into more candidates. The generate stage puts them beside the student's samples and
keeps the one the judge finds contradicting tier i and entailing tier i-1, the most fluent by the student. The word
groups are exclusive within a picture (no synonyms, no part and whole): `edits.EXCLUSIVE_GROUPS`, colours, numbers and
opposites, plus the kinds people swapped in Breaking NLI (rooms, drinks, vegetables, materials, instruments, antonyms;
`../shared/data/nli/breaking_nli.tsv.gz`, where 87% of such swaps are labelled contradictions) and COCO-style places,
sports and actions. A word of tier i-1 is never changed, and a new word already in the caption is never used: "bus" ->
"car" does not contradict "a bus next to a car".
"""

from __future__ import annotations

import re

import numpy as np

from hierarcaps import checks, edits, lexicon
from hierarcaps.places import ARTICLES, INDOOR, NEW_PLACES, OUTDOORS, PLACE_COMPOUND, PLACE_RE, PLACES, ROOM, ROOMS, new_places

# Exclusive groups, each a tuple of surface forms; a form is swapped for another of its own group.
_BREAKING_NLI = (
    ("beer", "wine", "coffee", "tea", "juice", "lemonade", "milk", "soda"),  # not "water": mostly a place in captions
    ("onions", "carrots", "potatoes", "tomatoes", "cucumbers", "peppers"),
    ("wooden", "wood", "metal", "plastic", "glass", "stone", "brick"),
    ("guitar", "piano", "violin", "trumpet", "flute", "drum", "saxophone"),
)
_COCO = (
    ("tennis", "baseball", "soccer", "basketball", "volleyball", "frisbee", "golf"),
    ("skiing", "surfing", "snowboarding", "skateboarding", "swimming", "biking"),
    ("surfboard", "snowboard", "skateboard"),  # not "skis": "riding skateboard" reads as garbage
    ("skier", "surfer", "skateboarder", "snowboarder"),  # one person, one board at a time
    ("skiers", "surfers", "skateboarders", "snowboarders"),
    # no weather group: reviewers read "rainy slope" for "snowy slope" as compatible
    ("day", "night"),
    ("sunset", "noon", "midnight"),
    ("summer", "winter"),
    ("adult", "child"),
)
# Things of one kind that cannot be one another: the generator swaps them, and the judge learns them as contradictions
# (`nli.domain`'s swap_object: one-word siblings such as "table" / "bench" read as entailment to a judge without them).
OBJECT_GROUPS = (
    ("pizza", "sandwich", "cake", "donut", "hot dog", "salad", "soup", "pasta", "burger", "bread", "steak"),
    ("banana", "apple", "orange", "broccoli", "carrot", "strawberry"),
    ("bananas", "apples", "oranges", "carrots", "strawberries", "grapes"),
    ("plate", "bowl", "cup", "box", "bag", "basket", "tray"),
    ("fries", "rice", "noodles", "pie", "cookies", "eggs"),
    ("knife", "fork", "spoon", "scissors"),
    ("lake", "river", "ocean", "pond", "pool"),
    ("house", "church", "barn", "castle", "tent", "tower"),
    # no group of small objects (laptop, book, phone, umbrella, kite, vase...): one picture holds several, and reviewers
    # read "holding a book" for "holding an umbrella" as compatible
    ("toilet", "sink", "bathtub", "shower", "mirror"),
    ("bed", "couch", "table", "chair", "bench", "desk"),
    ("clock tower", "church", "bridge", "lighthouse", "skyscraper"),
    ("stop sign", "traffic light", "fire hydrant", "parking meter"),
    ("microwave", "oven", "refrigerator", "toaster", "dishwasher"),
    ("cattle", "goats", "pigs", "ducks", "horses"),
    ("pigeon", "seagull", "duck", "parrot", "owl", "eagle", "swan", "humming bird"),
    ("desktop computer", "laptop", "tablet"),
)
# Actions that need an object ("riding a bike"); see _NO_OBJECT.
_TRANSITIVE_GROUPS = (
    ("riding", "pushing", "washing", "repairing", "selling"),
    ("eating", "cooking", "cutting", "throwing"),
    ("holding", "throwing", "dropping", "kicking"),
)
# What people and animals do: swapped only in a text about one ("a pizza sitting on a plate" cannot walk).
ACTIONS = (
    # not "flying": mostly transitive in captions ("flying a kite" -> "swimming a kite")
    *(tuple(w for w in group if w != "flying") for group in edits.EXCLUSIVE_GROUPS["action"]),
    *_TRANSITIVE_GROUPS,
    ("smiling", "crying", "yelling"),
    ("playing", "sleeping"),
    ("crouching", "kneeling", "standing", "lying"),
)
ANIMATE = frozenset(w for kind in ("person", "animal") for group in edits.EXCLUSIVE_GROUPS[kind] for w in group) | {
    "person", "people", "player", "players", "skier", "surfer", "skateboarder", "child", "children", "kid", "kids", "lady",
    "guy", "baby", "puppy", "kitten", "snowboarder", "crowd", "team", "couple", "family", "skiers", "surfers", "chef",
    "animal", "animals", "group",
}  # fmt: skip
GROUPS: tuple[tuple[str, ...], ...] = (
    edits.COLOURS,
    edits.NUMBERS,
    *(group for kind, pair in edits.EXCLUSIVE_GROUPS.items() if kind != "action" for group in pair),
    *_BREAKING_NLI,
    *_COCO,
    *OBJECT_GROUPS,
    *ACTIONS,
)
_ACTION_WORDS = frozenset(w for group in ACTIONS for w in group)
# Verbs that need an object: not changed where the text uses them without one ("riding on the snow" -> "washing on ...").
_TRANSITIVE = frozenset(w for group in _TRANSITIVE_GROUPS for w in group)
_NO_OBJECT = re.compile(r"\s+(?:in|on|at|near|by|down|up|through|over|along|across|into|onto|past|around|toward|towards|to|with|away)\b", re.IGNORECASE)
# A word in a list ("trucks and cars") or brought in by "with" ("swimming with a surfboard") is not changed: "trucks and
# motorcycles", "with a skateboard" may be true of the same picture. Colours still are: they change a property.
_LISTED_BEFORE = re.compile(r"(?:\band|\bwith|,)\s+(?:(?:a|an|the|some|two|three|his|her|their)\s+)?(?:[a-z]+\s+)?$", re.IGNORECASE)
_LISTED_AFTER = re.compile(r"\s*(?:,|and\b)", re.IGNORECASE)
_COLOUR_WORDS = frozenset(edits.COLOURS)
_PROPERTIES = _COLOUR_WORDS | frozenset(edits.NUMBERS)
# Words that modify the next one by nature ("brown dog", "glass table", "tennis player"): changed there. Any other word
# next to a noun is half of a compound ("toilet bowl" -> "shower bowl", "panda bear" -> "panda elephant") and is not.
_MODIFIERS = _COLOUR_WORDS | frozenset(edits.NUMBERS) | frozenset(_BREAKING_NLI[2]) | frozenset(_COCO[0]) | frozenset(
    "day night summer winter adult child".split())
_NEXT_WORD = re.compile(r"\s+([a-z]+)\b", re.IGNORECASE)
_LAST_WORD = re.compile(r"\b([a-z]+)\s+$", re.IGNORECASE)
# Tier 1's generic concepts, used only at tier 1 ("a truck and a building" -> "... and a food" is no caption): a tier 1
# is changed into another category that nothing in the caption belongs to. Each category with the tier-1 texts that
# name it and the words that put it in a caption ("a man on a bus": neither "person" nor "vehicle" contradicts it).
CATEGORIES = {
    "animal": (("animal", "animals", "mammal", "wildlife", "pet", "creature"), {"animal", "pet", "bird", "puppy", "kitten"}),
    "food": (("food", "dish", "meal", "snack", "dessert"), {"food", "meal", "dish", "dessert", "snack", "fruit", "vegetable", "plate"}),
    "vehicle": (("vehicle", "vehicles", "transportation", "transportation vehicle", "transportation system", "transport",
                 "motorized vehicle", "motor vehicle"), {"vehicle", "boat", "plane", "airplane", "jet", "bicycle", "bike", "traffic"}),
    "furniture": (("furniture",), {"furniture", "chair", "table", "couch", "sofa", "bed", "bench", "desk", "shelf", "cabinet"}),
    "building": (("building", "buildings", "structure", "architecture"), {"building", "house", "tower", "church", "structure", "city", "street"}),
    "plant": (("plant", "plants", "vegetation"), {"plant", "tree", "flower", "grass", "bush", "vegetable", "fruit", "forest"}),
    "person": (("person", "people", "human"), {"person", "people", "human", "player", "crowd", "team", "child", "kid", "baby", "skier",
                                               "surfer", "rider", "skateboarder", "snowboarder", "chef", "lady", "guy"}),
    "device": (("device", "electronic device", "electronics"), {"device", "computer", "laptop", "phone", "television",
                                                                  "tv", "screen", "monitor", "keyboard", "remote"}),
    "appliance": (("appliance", "appliances", "kitchen appliance"), {"appliance", "stove", "oven", "microwave", "refrigerator",
                                                                     "fridge", "toaster", "dishwasher", "blender"}),
    "room": (("room", "rooms"), {"room", "kitchen", "bathroom", "bedroom", "living room", "office", "classroom"}),
    "sport": (("sport", "sports", "game"), {"sport", "game", "ball", "racket", "player", "skiing", "surfing", "skateboarding"}),
}  # fmt: skip
# Words that are members of a category in edits.EXCLUSIVE_GROUPS ("woman" -> person) count as naming it too.
for _kind in ("person", "animal", "vehicle", "food"):
    CATEGORIES[_kind][1].update(w for group in edits.EXCLUSIVE_GROUPS[_kind] for w in group)
CATEGORIES["animal"][1].update({"cattle", "cow", "goat", "pig", "duck", "pigeon", "seagull", "parrot", "owl", "eagle", "swan"})
CATEGORIES["food"][1].update({"banana", "apple", "orange", "strawberry", "grape", "carrot", "salad", "soup", "pasta", "burger", "bread",
                              "steak", "fries", "rice", "noodle", "pie", "cookie", "egg", "doughnut"})  # "color => orange" is food
CATEGORIES["sport"][1].update(w for group in _COCO[:2] for w in group)  # "play => tennis" -> "sport => tennis"
CATEGORY_NAMES = {name: kind for kind, (names, _) in CATEGORIES.items() for name in names}
# Words that are a kind of a category, with the category word of their number ("fridge" -> "appliance", "men" ->
# "people"): the members of CATEGORIES that are kinds of it (not food / vehicle / building / plant / sport / person,
# whose lists also hold words that merely place the category in a caption: "plate", "street") and of
# edits.EXCLUSIVE_GROUPS. The judge's training pairs (`nli.domain`: "dog" => "animal") and `regrouped` use them.
_KIND_NAMES = {"person": ("person", "people"), "animal": ("animal", "animals"), "vehicle": ("vehicle", "vehicles"), "food": ("food", "food")}
HYPONYMS = {word: CATEGORIES[kind][0][0] for kind in ("animal", "appliance", "furniture", "room", "device")
            for word in CATEGORIES[kind][1] if word not in CATEGORIES[kind][0]}
HYPONYMS |= {word: _KIND_NAMES[kind][number] for kind in _KIND_NAMES for number, group in enumerate(edits.EXCLUSIVE_GROUPS[kind])
             for word in group}
# Opposite relations and states. Not "on" / "under" or "up" / "down": in captions they are mostly idiom ("on top of",
# "close-up", "sitting down"), and the swap reads as garbage ("a clock under the top of a building").
# Not "with" / "without" nor "near" / "far from": "a station without a train" no longer names the train tier i-1 has,
# and "filled without merchandise" is no English.
OPPOSITES = (
    *(pair for pair in edits.OPPOSITES if pair not in {("on", "under"), ("up", "down"), ("with", "without"), ("near", "far from")}),
    ("young", "old"), ("happy", "sad"), ("clean", "dirty"), ("sitting", "standing"), ("asleep", "awake"),
    ("parked", "moving"), ("alone", "together"), ("tall", "short"), ("long", "short"), ("cooked", "raw"),
    ("male", "female"), ("back", "front"), ("hot", "cold"), ("indoor", "outdoor"),
)  # fmt: skip
WORD = re.compile(r"[a-z]+")
# A sport word that names equipment or ground keeps its sport: "tennis racket" -> "basketball racket" is no thing.
_SPORT_WORDS = frozenset(_COCO[0])
_SPORT_THINGS = re.compile(r"\s+(?:rackets?|racquets?|bats?|gloves?|mitts?|nets?|courts?|helmets?|uniforms?|sticks?|clubs?|shoes?)\b", re.IGNORECASE)


def _vocabulary() -> dict[str, tuple[str, ...]]:
    """surface form -> the forms it can be changed into (its group's others, and its opposites)."""
    vocab: dict[str, list[str]] = {}
    for group in GROUPS:
        for word in group:
            vocab.setdefault(word, []).extend(w for w in group if w != word)
    for a, b in OPPOSITES:
        vocab.setdefault(a, []).append(b)
        vocab.setdefault(b, []).append(a)
    return {word: tuple(dict.fromkeys(others)) for word, others in vocab.items()}


VOCAB = _vocabulary()
# The swapped words that are things (not modifiers, actions or opposites): only they can be half of a noun compound.
_NOUNS = frozenset(VOCAB) - _MODIFIERS - _ACTION_WORDS - {w for pair in OPPOSITES for w in pair}
_VOCAB_RE = re.compile(r"(?<![\w-])(%s)(?![\w-])" % "|".join(sorted(map(re.escape, VOCAB), key=len, reverse=True)), re.IGNORECASE)


def words(text: str) -> set[str]:
    """Lower-case words, plural -s dropped, so "dogs" -> "dog" counts as keeping a word and "two horses" as taken."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in WORD.findall(text.lower())}


# Words that say what another says: "inside" keeps tier i-1's "in" ("in a kitchen" -> "outside a kitchen" no longer
# entails it).
_SAME = {"inside": "in", "atop": "on", "within": "in"}


def lemmas(text: str) -> set[str]:
    """words() plus every lemma of each word ("sits", "sitting" -> "sit"; "women" -> "woman"), so a word of tier i-1
    is kept, and a word of the caption is not brought in, in any inflection."""
    from lemminflect import getAllLemmas

    out = words(text)
    for word in WORD.findall(text.lower()):
        out.update(lemma for forms in getAllLemmas(word).values() for lemma in forms)
    return out | {_SAME[w] for w in out if w in _SAME}


def kept(word: str, keep: set[str]) -> bool:
    """Whether `word` is one of tier i-1's (`keep`, its lemmas), or the start of one: "skateboard" of "skateboarder"
    ("snowboard flip" no longer entails "skateboarder")."""
    own = lemmas(word)
    return bool(own & keep) or any(k.startswith(w) for w in own if len(w) >= 5 for k in keep)


def _noun(word: str | None, unknown: bool = False) -> bool:
    """Whether `word` is a noun in its base form (not "runs", "sitting", "parked", nor a function word or a word that
    can be an adjective / adverb: "next", "full", "young"); `unknown` for a word the lexicon lacks ("teddy")."""
    if not word or word in checks.FUNCTION_WORDS or word in _MODIFIERS or word.endswith(("s", "ing", "ed")):
        return False
    kinds = parts_of_speech(word)
    return unknown if not kinds else "NOUN" in kinds and not kinds.keys() & {"ADJ", "ADV", "AUX"}


def _compound(text: str, start: int, end: int) -> bool:
    """Whether the word at start:end is half of a noun compound: a noun comes right after it ("toilet bowl" ->
    "shower bowl") or right before it ("panda bear" -> "panda elephant", "teddy bear")."""
    after, before = _NEXT_WORD.match(text, end), _LAST_WORD.search(text[:start])
    return _noun(after and after.group(1).lower()) or _noun(before and before.group(1).lower(), unknown=True)


def swappable(text: str, start: int, end: int) -> bool:
    """Whether the word at start:end may change: not half of a noun compound, and (unless a colour or a number: they
    change a property, "with two sinks" -> "with three sinks") not one of a list."""
    old = text[start:end].lower()
    if old in _NOUNS and _compound(text, start, end):
        return False
    return old in _PROPERTIES or not (_LISTED_BEFORE.search(text[:start]) or _LISTED_AFTER.match(text, end))


def tier1_options(caption: str, current: str) -> list[str]:
    """Categories a tier-1 negative may name: none the caption mentions a member of, nor the current tier 1's."""
    present = lemmas(caption) | lemmas(current)
    here = {kind for kind, (names, members) in CATEGORIES.items() if present & (members | {n for n in names if " " not in n})}
    here.add(CATEGORY_NAMES.get(current.lower().strip(), ""))
    return [kind for kind in CATEGORIES if kind not in here]


# Members of CATEGORIES that put a category in a caption without being a kind of it ("food => plate", "sport =>
# racket" were invalid positives to reviewers), with what they are a kind of.
NOT_KINDS = {"plate": "dishware", "ball": "equipment", "racket": "equipment", "player": "person", "street": "place", "city": "place"}


def grounded_tier1(tier1: str, tier2: str) -> str:
    """Tier 1, or what it should be when it is not a category of tier 2 (issue #18's positives: "water => fire
    hydrant", "sport => horse", "board => snowboarder"). Kept: a tier 1 that shares a word with tier 2, ends its head
    noun ("room" of "bathroom"), or names a category (or a member word of one: "fruit") that tier 2's head noun belongs
    to. Else the head noun's category ("horse" -> "animal"), what a NOT_KINDS word is ("plate" -> "dishware"), "place"
    for an outdoor place ("water => beach"), the category WordNet gives a head noun that a named category's tier 1 is
    wrong about ("mechanical appliance => cup" -> "container": `_wordnet_category`), else the head noun itself when
    tier 2 says more ("fire hydrant" -> "hydrant"); a one-word tier 2 of no known category keeps its tier 1."""
    found = WORD.findall(tier2.lower())
    end = next((i for i, w in enumerate(found) if i and w in checks.FUNCTION_WORDS), len(found))
    phrase = [w for w in found[:end] if w not in checks.FUNCTION_WORDS]
    own = lemmas(tier1) - checks.FUNCTION_WORDS
    if not phrase or own & lemmas(tier2) or phrase[-1].endswith(tier1.lower().strip()):
        return tier1
    head = lemmas(phrase[-1])
    kinds = [(names, members - NOT_KINDS.keys() | set(names)) for names, members in CATEGORIES.values()
             if head & (members - NOT_KINDS.keys() | set(names))]
    if any(own & named for _, named in kinds):
        return tier1
    other = next((NOT_KINDS[w] for w in sorted(head) if w in NOT_KINDS), "place" if head & OUTDOORS else None)
    if not kinds and other is None:
        other = _wordnet_category(tier1, phrase[-1])
    mended = kinds[0][0][0] if kinds else other or (phrase[-1] if len(found) > 1 else tier1)
    return tier1 if mended == tier2.lower().strip() else mended


# Kinds of food and vehicles that HYPONYMS lacks (it also makes the judge's training pairs, so it stays as trained):
# "bread => bread in a mouth" -> "food => bread", "bike => bike riding" -> "vehicle => bike".
_KINDS_OF = {word: "food" for word in CATEGORIES["food"][1] - set(CATEGORIES["food"][0]) - NOT_KINDS.keys() - {"meal"}} | {
    word: "vehicle" for word in ("bike", "boat", "plane", "jet")}


def _wordnet_category(tier1: str, head: str) -> str | None:
    """For a head noun the tables above do not know: when tier 1 names a kind of CATEGORIES ("transportation system",
    "mechanical appliance") that no sense of the head is, by WordNet, the category the head's common senses agree on
    ("fence" -> "structure", "cup" -> "container"); None where tier 1 names no such kind, WordNet lacks the head, one
    of its senses is of that kind ("device => mouse"), or its senses disagree ("bat")."""
    last = WORD.findall(tier1.lower())[-1:]
    kind = CATEGORY_NAMES.get(tier1.lower().strip()) or (CATEGORY_NAMES.get(last[0]) if last else None)
    known = lexicon.hypernyms(head)
    if kind is None or known is None or known & {kind, *CATEGORIES[kind][0]}:
        return None
    return lexicon.category(head)


def regrouped(tiers: list[str]) -> list[str] | None:
    """[t1, t2, t3] -> [t1's category, t1, t3] where t1 is a kind of a category (`HYPONYMS`) and t2 only adds words
    to it ("bird => birds flying => birds flying in a gray sky" -> "animal => bird => ..."): tier 2 then names a
    member another member contradicts ("dog"), where "birds flying" had no edit. None otherwise."""
    t1, t2, t3 = tiers
    category = HYPONYMS.get(t1.lower().strip()) or _KINDS_OF.get(t1.lower().strip())
    if category is None or t1.lower().strip() == t2.lower().strip() or not lemmas(t1) <= lemmas(t2):
        return None
    return [category, t1, t3]


def tier1_compatible(text: str, caption: str) -> bool:
    """A tier-1 negative that names something the caption mentions (a category of one of its words, or a word of it)
    cannot contradict the picture: "person" for a caption about a man, "water" for a boat on the water."""
    kind = CATEGORY_NAMES.get(text.lower().strip())
    if kind is not None:
        return kind not in tier1_options(caption, "")
    return bool(lemmas(text) & lemmas(caption) - {"a", "an", "the"})


def fix_article(text: str, start: int) -> str:
    """"a" <-> "an" before the word at `start`, by its first letter."""
    m = re.search(r"\b(a|an|A|An)\s+$", text[:start])
    if not m:
        return text
    wanted = "an" if text[start:start + 1].lower() in "aeiou" else "a"
    wanted = wanted.capitalize() if m.group(1)[0].isupper() else wanted
    return text[: m.start(1)] + wanted + text[m.end(1):]


def edits_at(text: str, start: int, end: int, alternatives, old: str) -> list[str]:
    out = []
    for new in alternatives:
        new = new[:1].upper() + new[1:] if old[:1].isupper() else new
        out.append(fix_article(text[:start] + new + text[end:], start))
    return out


def swap_place(text: str, rng: np.random.Generator) -> str | None:
    """One place phrase of `text` changed into another ("on a beach" -> "in a park"); None if it names none."""
    hits = list(PLACE_RE.finditer(text))
    if not hits:
        return None
    m = hits[int(rng.integers(len(hits)))]
    others = [PLACES[p] for p in NEW_PLACES if p != m.group(1).lower() and not words(p) & words(text)]
    return edits_at(text, m.start(), m.end(), [others[int(rng.integers(len(others)))]], m.group(0))[0]


def edit_candidates(positive: list[str], tier: int, rng: np.random.Generator, limit: int = 12) -> list[str]:
    """Single edits of positive tier `tier` (1-based) that change only words tier-1 lacks, into words the caption
    lacks; at most `limit`, drawn over the edited spans in turn so one long group does not crowd out the others."""
    text, caption = positive[tier - 1], positive[-1]
    keep = lemmas(positive[tier - 2]) if tier > 1 else set()
    taken = lemmas(caption) | lemmas(text)
    by_span: list[list[str]] = []
    spans: list[tuple[int, int]] = []
    for m in PLACE_RE.finditer(text):
        noun = m.group(1).lower()
        after = _NEXT_WORD.match(text, m.end())  # "on a park bench" names a bench, not a park
        if words(noun) & keep or PLACE_COMPOUND.match(text, m.end()) or _noun(after and after.group(1).lower()):
            continue
        others = [PLACES[p] for p in new_places(noun, taken) if not words(p) & taken]
        spans.append((m.start(), m.end()))
        by_span.append(edits_at(text, m.start(), m.end(), [others[i] for i in rng.permutation(len(others))], m.group(0)))
    if tier == 1:
        options = tier1_options(caption, text)
        by_span.append([options[i] for i in rng.permutation(len(options))])
    for m in _VOCAB_RE.finditer(text):
        old = m.group(1).lower()
        if kept(old, keep) or any(s < m.end() and m.start() < e for s, e in spans):
            continue
        if old in _ACTION_WORDS and not words(text) & ANIMATE:
            continue
        if old in _SPORT_WORDS and _SPORT_THINGS.match(text, m.end()):
            continue
        if old in _TRANSITIVE and _NO_OBJECT.match(text, m.end()):
            continue
        if not swappable(text, m.start(), m.end()):
            continue
        others = [w for w in VOCAB[old] if not lemmas(w) & taken and _reads(text, m.start(), m.end(), w)]
        if others:
            by_span.append(edits_at(text, m.start(), m.end(), [others[i] for i in rng.permutation(len(others))], m.group(1)))
    if tier == 2:
        rooms = _other_rooms(positive[0], text, taken)
        by_span.append([rooms[i] for i in rng.permutation(len(rooms))])
    if tier > 1:
        by_span += [[e] for e in _without_edits(text, keep) + _but_no_edits(text, keep)]
    out: list[str] = []
    for depth in range(max((len(s) for s in by_span), default=0)):
        out += [s[depth] for s in by_span if depth < len(s)]
    return list(dict.fromkeys(out))[:limit]


def _other_rooms(tier1: str, tier2: str, taken: set[str]) -> list[str]:
    m = ROOM.fullmatch(tier2.strip())
    if CATEGORY_NAMES.get(tier1.lower().strip()) != "room" or m is None:
        return []
    rooms = [r for r in ROOMS if r != m.group(1).lower() and not lemmas(r) - {"room"} & taken]
    return edits_at(tier2.strip(), m.start(1), m.end(1), rooms, m.group(1))


def _reads(text: str, start: int, end: int, new: str) -> bool:
    """Whether `new` reads as English in the place of text[start:end]: only beings are young ("a young picture" for "an
    old picture" is nonsense to reviewers, "a new picture" is not), and no day is a sunny night."""
    after, before = _NEXT_WORD.match(text, end), _LAST_WORD.search(text[:start])
    if new == "young" or text[start:end].lower() == "young":
        return bool(after) and after.group(1).lower() in ANIMATE
    return not (new == "night" and before and before.group(1).lower() == "sunny")


# "with" -> "without" where the "with" phrase is what tier i adds ("bathroom" => "bathroom with a mirror" -> "bathroom
# without a mirror"): the thing is taken away, every word of tier i-1 kept. Not where tier i-1 names the thing (then
# the negative would not entail it), after a participle ("filled with", "topped with": no English without), nor before
# a negation ("with no people").
_COUNTS = ("two", "three", "four", "several", "many")
_WITH = re.compile(r"\bwith\s+(?!(?:no|nothing|none|without|some|lots|%s)\b)" % "|".join(_COUNTS), re.IGNORECASE)
_WITH_MANY = re.compile(r"\bwith\s+((?:several|many|some|lots\s+of)\s+)", re.IGNORECASE)
# A participle ends the phrase too: "with a piece of bread sticking out of his mouth" names the bread, not the mouth.
_PHRASE_END = re.compile(r"\s*(?:,|\.|$|\b(?:and|in|on|at|near|by|under|over|while|that|which|who)\b|\b[a-z]{3,}ing\b)", re.IGNORECASE)


def _without_edits(text: str, keep: set[str]) -> list[str]:
    if "with" in keep:
        return []
    out = []
    for m in _WITH.finditer(text):
        before = WORD.findall(text[: m.start()].lower())
        if not before or before[-1].endswith("ed"):
            continue
        end = _PHRASE_END.search(text, m.end())
        thing = text[m.end() : end.start() if end else len(text)]
        if not _new_thing(thing, keep):
            continue
        out.append(text[: m.start()] + ("Without" if text[m.start()].isupper() else "without") + text[m.start() + 4 :])
    for m in _WITH_MANY.finditer(text):  # "with several blankets" -> "with no blankets" ("without several" is no English)
        end = _PHRASE_END.search(text, m.end())
        thing = text[m.end() : end.start() if end else len(text)]
        if _new_thing(thing, keep) and WORD.findall(text[: m.start()].lower()):
            out.append(text[: m.start(1)] + "no " + text[m.end() :])
    return out


# "and" + a thing -> "but no" + the thing, where the thing is what tier i adds ("bathroom with a sink" => "bathroom with
# a sink and a toilet" -> "... a sink but no toilet"): the same taking away as "without", for a list. Only a noun phrase
# ("walking and riding" is no thing), never one tier i-1 names.
_AND = re.compile(r"\band\s+(?:(?:%s)\s+)?" % "|".join(ARTICLES + _COUNTS), re.IGNORECASE)


def _but_no_edits(text: str, keep: set[str]) -> list[str]:
    out = []
    for m in _AND.finditer(text):
        end = _PHRASE_END.search(text, m.end())
        thing = text[m.end() : end.start() if end else len(text)].strip()
        found = WORD.findall(thing.lower())
        if not found or len(found) > 4 or not _new_thing(thing, keep) or not _ends_in_a_noun(found):
            continue
        if found[0].endswith(("ing", "ed")) or set(parts_of_speech(found[0])) == {"VERB"} or found[0] in checks.FUNCTION_WORDS:
            continue
        out.append(text[: m.start()] + "but no " + text[m.end() :])
    return out


def _new_thing(phrase: str, keep: set[str]) -> bool:
    """Whether the thing a phrase names (its last word) is one tier i-1 does not name: taking away "hardwood cabinets"
    keeps "hardwood floors", taking away the train of "a station with a train" would not."""
    found = WORD.findall(phrase.lower())
    return bool(found) and not lemmas(found[-1]) & keep


def _ends_in_a_noun(found: list[str]) -> bool:
    """A last word lemminflect calls a noun, or one it does not know that is English ("tv")."""
    pos = parts_of_speech(found[-1])
    return "NOUN" in pos or not pos and found[-1] in checks.english_words(3.0)


def parts_of_speech(word: str) -> dict[str, tuple[str, ...]]:
    from lemminflect import getAllLemmas

    return getAllLemmas(word)
