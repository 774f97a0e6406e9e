"""In-domain NLI pairs for the `minilm-nli` cross-encoder, derived from the development share's hierarchies.

Human NLI data (`human.py`) teaches sentences; caption hierarchies also need short tiers and the rule that two true
descriptions of one picture never contradict. From the hierarchies of one split (by image, `pairs.split_of`):

- `tier_entail` (entailment): p[j] => p[i] for j > i, the caption => every tier included, except p[2] => p[1];
- `tier_link` (entailment): p[2] => p[1] ("woman" => "person", "sandpiper" => "bird"), and a tier-2 word that is a
  member of a category => the category ("woman" => "person"): kept apart so the short tier-1 links are not a
  sliver of `tier_entail`, and balance `neg_tier1`'s one-word hypotheses;
- `tier_generic` (neutral): p[i] => p[j] for i < j, when p[j] has a content word p[i] lacks (a refinement);
- `same_image` (neutral): caption => caption, tier 3 => tier 3, caption => tier 3 of two hierarchies of the same
  image, when the hypothesis has a content word the premise lacks (else it may be entailed);
- `added_detail` (neutral): a tier => the tier with a compatible detail appended ("... at sunset");
- `neg_prev` (entailment): n[i] => p[i-1] of the original negatives;
- `neg_tier1` (contradiction): p[1] vs n[1] (reviewers found ~93% of these valid; deeper original negatives mostly
  are not contradictions, so they are never used as such), except when n[1] is the category of p[1] or p[2] ("man"
  vs "person": the original's most frequent tier-1 negative is "person", which taught an earlier judge that "man"
  contradicts "person"); at most `NEG_TIER1_PER_TEXT` pairs per negative text, so no one word ("person", "water")
  becomes a contradiction whatever the premise;
- `hypernym` (entailment): a tier that names a member of a category => the tier with the category instead ("a man
  on a bench" => "a person on a bench", "dog" => "animal"), and the reverse as neutral;
- `swap_<kind>` (contradiction): the part a tier adds changed into something incompatible of the same kind, with the
  tier itself and the caption as premises: another colour, number, person / animal / vehicle / food, place, posture
  or action, opposite relation or state (`edits.CONTRADICTION_SWAPS`), another thing of the same kind ("table" ->
  "bench", "bowl of pasta" -> "bowl of soup": `negatives.OBJECT_GROUPS`), or another member of tier 1's category for
  tier 2 (`siblings`: tier-2 texts that share a tier 1 and never describe the same image, so synonyms are left out),
  or another place with its preposition (`swap_place_phrase`: "on a beach" -> "in a park", `negatives.swap_place`).

Deterministic: one numpy generator per hierarchy, seeded by (seed, source row).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np

from hierarcaps.checks import normalize
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT, NEUTRAL
from hierarcaps.engines.nli import content_words
from hierarcaps import edits
from hierarcaps.negatives import HYPONYMS, OBJECT_GROUPS, fix_article, swap_place, swappable
from hierarcaps.nli.human import LabelledPair
from hierarcaps.nli.pairs import Hierarchy
from hierarcaps.schema import TIERS

# Details that a caption rarely rules out; appended to a tier they make a compatible refinement (neutral).
DETAILS = (
    "at sunset", "on a sunny day", "during the day", "in the morning", "in the city", "near a building",
    "with other people", "next to a tree", "in the afternoon", "on a cloudy day", "at his home", "in a town",
)  # fmt: skip


NEG_TIER1_PER_TEXT = 20
# "orange" is a colour more often than a fruit in captions ("orange sign" -> "broccoli sign")
_OBJECTS = {w: group for group in OBJECT_GROUPS for w in group if w not in edits.COLOURS}
_OBJECT_RE = re.compile(r"\b(%s)\b" % "|".join(sorted(map(re.escape, _OBJECTS), key=len, reverse=True)), re.IGNORECASE)


def swap_object(text: str, rng: np.random.Generator) -> str | None:
    """One thing changed into another of its kind ("man on a bench" -> "man on a couch"), as the generator would:
    never half of a compound ("wedding cake") or one of a list ("a tub and a sink")."""
    hits = [m for m in _OBJECT_RE.finditer(text) if swappable(text, m.start(), m.end())]
    if not hits:
        return None
    m = hits[int(rng.integers(len(hits)))]
    old = m.group(1).lower()
    choices = [w for w in _OBJECTS[old] if w != old]
    new = choices[int(rng.integers(len(choices)))]
    return fix_article(text[: m.start()] + (new.capitalize() if m.group(1)[0].isupper() else new) + text[m.end():], m.start())


SWAPS = edits.CONTRADICTION_SWAPS | {"object": swap_object}
# Things that share a scene: a swapped tier contradicts the tier, not the caption ("bathroom with a tub and a sink"
# does not rule out "toilet")
TIER_PREMISE_ONLY = {"object"}


def hypernym(text: str, rng: np.random.Generator) -> str | None:
    """`text` with one member of a category replaced by the category ("a man on a bench" -> "a person on a bench")."""
    hits = [m for m in re.finditer(r"\b(?:[Hh]ot dogs?|[A-Za-z]+)\b", text) if m.group(0).lower() in HYPONYMS]
    if not hits:
        return None
    m = hits[int(rng.integers(len(hits)))]
    new = HYPONYMS[m.group(0).lower()]
    return fix_article(text[: m.start()] + (new.capitalize() if m.group(0)[0].isupper() else new) + text[m.end():], m.start())


def siblings(hierarchies: list[Hierarchy], min_count: int = 3) -> dict[str, list[str]]:
    """tier-2 text -> other tier-2 texts under the same tier 1 that never describe the same image (one or two words;
    never a text that is itself a frequent tier 1, such as "animal")."""
    categories = {t for t, c in Counter(normalize(h.positive[0]) for h in hierarchies).items() if c >= min_count}
    by_parent: dict[str, Counter] = defaultdict(Counter)
    per_image: dict[str, set[str]] = defaultdict(set)
    for h in hierarchies:
        t1, t2 = normalize(h.positive[0]), normalize(h.positive[1])
        if len(t2.split()) <= 2:
            by_parent[t1][t2] += 1
            per_image[h.image_url].add(t2)
    together: set[tuple[str, str]] = {(a, b) for texts in per_image.values() for a in texts for b in texts}
    out: dict[str, set[str]] = defaultdict(set)
    for counts in by_parent.values():
        common = sorted(t for t, c in counts.items() if c >= min_count and t not in categories)
        for a in common:
            for b in common:
                if a != b and (a, b) not in together and not (set(a.split()) & set(b.split())):
                    out[a].add(b)
    return {a: sorted(b) for a, b in out.items()}


def _adds_content(premise: str, hypothesis: str) -> bool:
    return bool(content_words(hypothesis) - content_words(premise))


def hierarchy_pairs(h: Hierarchy, same_image: list[Hierarchy], sibs: dict[str, list[str]], rng: np.random.Generator) -> list[LabelledPair]:
    p, n = h.positive, h.negative
    out: list[LabelledPair] = []
    for i in range(TIERS):
        for j in range(i + 1, TIERS):
            out.append(LabelledPair(p[j], p[i], ENTAILMENT, "tier_link" if (i, j) == (0, 1) else "tier_entail"))
            if _adds_content(p[i], p[j]):
                out.append(LabelledPair(p[i], p[j], NEUTRAL, "tier_generic"))
    category = HYPONYMS.get(normalize(p[1]))
    if category is not None and category != normalize(p[0]):
        out.append(LabelledPair(p[1], category, ENTAILMENT, "tier_link"))
    out += [LabelledPair(n[i], p[i - 1], ENTAILMENT, "neg_prev") for i in range(1, TIERS)]
    if normalize(n[0]) != normalize(p[0]) and normalize(n[0]) not in {HYPONYMS.get(normalize(t)) for t in p[:2]}:
        out.append(LabelledPair(p[0], n[0], CONTRADICTION, "neg_tier1"))
    t = int(rng.integers(0, TIERS))
    general = hypernym(p[t], rng)
    if general is not None:
        out += [LabelledPair(p[t], general, ENTAILMENT, "hypernym"), LabelledPair(general, p[t], NEUTRAL, "hypernym")]
    for other in same_image:
        q = other.positive
        for premise, hypothesis in ((p[3], q[3]), (p[2], q[2]), (p[3], q[2])):
            if normalize(premise) != normalize(hypothesis) and _adds_content(premise, hypothesis):
                out.append(LabelledPair(premise, hypothesis, NEUTRAL, "same_image"))
    t = int(rng.integers(1, TIERS))
    detail = DETAILS[int(rng.integers(len(DETAILS)))]
    if not set(detail.split()) & set(p[3].lower().split()):
        out.append(LabelledPair(p[t], f"{p[t].rstrip('. ')} {detail}", NEUTRAL, "added_detail"))
    for kind, edit in SWAPS.items():
        # the new words must be new to the caption too: "bus" -> "car" is no contradiction of "a bus and a car"
        options = [(t, e) for t in range(1, TIERS) if (e := edit(p[t], rng)) is not None and _adds_content(p[t], e) and _adds_content(p[3], e)]
        if options:
            t, edited = options[int(rng.integers(len(options)))]
            premises = [p[t]] if t == TIERS - 1 or kind in TIER_PREMISE_ONLY else [p[t], p[3]]
            out += [LabelledPair(prem, edited, CONTRADICTION, f"swap_{kind}") for prem in premises]
    options = [(t, e) for t in range(1, TIERS) if (e := swap_place(p[t], rng)) is not None and _adds_content(p[3], e)]
    if options:
        t, edited = options[int(rng.integers(len(options)))]
        out += [LabelledPair(prem, edited, CONTRADICTION, "swap_place_phrase") for prem in ([p[t]] if t == TIERS - 1 else [p[t], p[3]])]
    alternatives = sibs.get(normalize(p[1]), [])
    alternatives = [a for a in alternatives if _adds_content(p[3], a)]
    if alternatives:
        other = alternatives[int(rng.integers(len(alternatives)))]
        out += [LabelledPair(p[1], other, CONTRADICTION, "swap_sibling"), LabelledPair(p[3], other, CONTRADICTION, "swap_sibling")]
    return out


def build_domain_pairs(hierarchies: list[Hierarchy], seed: int = 0, sibling_source: list[Hierarchy] | None = None) -> list[LabelledPair]:
    """Pairs of one split's hierarchies (same-image partners from the same list); duplicates dropped, order fixed."""
    by_image: dict[str, list[Hierarchy]] = defaultdict(list)
    for h in hierarchies:
        by_image[h.image_url].append(h)
    sibs = siblings(sibling_source if sibling_source is not None else hierarchies)
    out: list[LabelledPair] = []
    seen: set[tuple[str, str]] = set()
    negative_texts: Counter = Counter()
    for h in hierarchies:
        rng = np.random.default_rng([seed, h.row])
        others = [o for o in by_image[h.image_url] if o.row != h.row]
        for pair in hierarchy_pairs(h, others[:2], sibs, rng):
            key = (normalize(pair.premise), normalize(pair.hypothesis))
            if key in seen or key[0] == key[1]:
                continue
            if pair.source == "neg_tier1":
                if negative_texts[key[1]] >= NEG_TIER1_PER_TEXT:
                    continue
                negative_texts[key[1]] += 1
            seen.add(key)
            out.append(pair)
    return out
