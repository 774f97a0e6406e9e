"""Labelled NLI pairs derived from accepted HierarCaps hierarchies, for the distilled `minilm-head` model.

Data: `../shared/data/hierarcaps_coco_auto/hierarcaps_coco_auto.csv.gz` (rows `positive,negative,image_url`, tiers
joined by " => ", generic -> specific, positive tier 4 = the COCO caption). These rows passed the original pipeline's
MNLI filter, so the relations that filter enforced hold for them (up to its errors) and can be distilled.

Split rule (by image, never by row, deterministic, no state): `b = int(sha256(image_url)[:8], 16) % 100`;
b < 80 -> "train", 80 <= b < 90 -> "dev" (early stopping, temperature, thresholds), b >= 90 -> "eval" (bench only,
never used for any choice). Images of the curated test set (`../shared/data/hierarcaps_test`) are dropped if any
appear (none do).

Pairs from the structure of one hierarchy (p1..p4 positive, n1..n4 negative), label in parentheses:
- pos_adjacent (entailment): p[i+1] => p[i]           - pos_skip (entailment): p[j] => p[i], j >= i+2
- neg_prev (entailment): n[i] => p[i-1]                - pos_neg (contradiction): p[i] vs n[i]
- specific_neg (contradiction): p[j] vs n[i], j > i    (covers "tier 3 exchanged with negative tier 3")
- generic_specific (neutral): p[i] => p[j], i < j      - generic_neg (neutral): p[i-1] => n[i]
- cross_image (neutral): p4 / p3 of this image => p2 / p3 of another image of the same split whose tiers 1 and 2
  differ (tier 1 words such as "animal" are shared by many images, so they are never used as cross hypotheses)
Augmentations that mimic generator errors (edits.py), on one random tier t in 2..4 that admits the edit, with the
caption and p[t+1] as premises: aug_colour / aug_number / aug_noun (contradiction: a colour, number word or noun of
the tier changed), aug_insert (neutral: a modifier the premise lacks inserted into the tier), aug_drop (entailment:
p[t] => p[t] with a modifier removed), aug_insert_rev (entailment: the inserted version => the original tier).
Denser versions from a second generator per hierarchy (so the draws above are unchanged): aug_colour_all (contradiction:
up to two wrong colours on every tier 2..4 holding a colour), aug_drop_all (entailment: p[t] => p[t] minus a modifier,
every tier holding one) and aug_drop_rev (neutral: the reverse, a generic text => a more specific one).
Labels are noisy: the data is uncurated (~75% fully valid per the paper) and cross-image pairs are sometimes entailed.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from hierarcaps.checks import normalize
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT, NEUTRAL
from hierarcaps import edits
from hierarcaps.schema import SEPARATOR, TIERS

log = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[3]
DEFAULT_DATA = _REPO.parent / "shared" / "data" / "hierarcaps_coco_auto" / "hierarcaps_coco_auto.csv.gz"
TEST_DATA = _REPO.parent / "shared" / "data" / "hierarcaps_test" / "hierarcaps_test.csv"
SPLIT_RULE = "b = int(sha256(image_url)[:8], 16) % 100; train b < 80, dev 80 <= b < 90, eval b >= 90"
SPLITS = ("train", "dev", "eval")

PAIR_LABELS = {
    "pos_adjacent": ENTAILMENT,
    "pos_skip": ENTAILMENT,
    "neg_prev": ENTAILMENT,
    "aug_drop": ENTAILMENT,
    "aug_insert_rev": ENTAILMENT,
    "pos_neg": CONTRADICTION,
    "specific_neg": CONTRADICTION,
    "aug_colour": CONTRADICTION,
    "aug_number": CONTRADICTION,
    "aug_noun": CONTRADICTION,
    "generic_specific": NEUTRAL,
    "generic_neg": NEUTRAL,
    "cross_image": NEUTRAL,
    "aug_insert": NEUTRAL,
    "aug_colour_all": CONTRADICTION,
    "aug_drop_all": ENTAILMENT,
    "aug_drop_rev": NEUTRAL,
}
PAIR_TYPES = tuple(PAIR_LABELS)


@dataclass(frozen=True)
class Hierarchy:
    row: int  # 0-based data row in the source file
    image_url: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


class Pair(NamedTuple):
    premise: str
    hypothesis: str
    label: int
    pair_type: str


def split_of(image_url: str) -> str:
    bucket = int(hashlib.sha256(image_url.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "dev" if bucket < 90 else "eval"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_image_urls(path: Path = TEST_DATA) -> set[str]:
    """Image URLs of the curated test set (empty if it is not beside the checkout)."""
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        return {row["image_url"] for row in csv.DictReader(f)}


def _tiers(text: str | None, path: Path, row: int, column: str) -> tuple[str, ...]:
    tiers = tuple(t.strip() for t in (text or "").split(SEPARATOR))
    if len(tiers) != TIERS or not all(tiers):
        raise ValueError(f"{path}: data row {row}: column {column!r} must hold {TIERS} non-empty tiers joined by {SEPARATOR!r}")
    return tiers


def load_hierarchies(path: Path = DEFAULT_DATA, max_hierarchies: int | None = None) -> list[Hierarchy]:
    """The file's rows in order (the first `max_hierarchies` if given), minus any image of the curated test set."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; pass the hierarcaps_coco_auto CSV (positive,negative,image_url)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"positive", "negative", "image_url"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected positive,negative,image_url")
        out = []
        for row, rec in enumerate(reader):
            if max_hierarchies is not None and len(out) >= max_hierarchies:
                break
            if not rec["image_url"]:
                raise ValueError(f"{path}: data row {row}: empty image_url (needed for the by-image split)")
            out.append(Hierarchy(row, rec["image_url"], _tiers(rec["positive"], path, row, "positive"), _tiers(rec["negative"], path, row, "negative")))
    banned = test_image_urls()
    kept = [h for h in out if h.image_url not in banned]
    if len(kept) != len(out):
        log.warning("dropped %d rows whose image is in the curated test set", len(out) - len(kept))
    return kept


def split_hierarchies(hierarchies: Iterable[Hierarchy]) -> dict[str, list[Hierarchy]]:
    out: dict[str, list[Hierarchy]] = {s: [] for s in SPLITS}
    for h in hierarchies:
        out[split_of(h.image_url)].append(h)
    return out


def structural_pairs(h: Hierarchy) -> list[Pair]:
    p, n = h.positive, h.negative
    out = []
    for i in range(TIERS):
        for j in range(i + 1, TIERS):
            out.append(Pair(p[j], p[i], ENTAILMENT, "pos_adjacent" if j == i + 1 else "pos_skip"))
            out.append(Pair(p[i], p[j], NEUTRAL, "generic_specific"))
            out.append(Pair(p[j], n[i], CONTRADICTION, "specific_neg"))
        out.append(Pair(p[i], n[i], CONTRADICTION, "pos_neg"))
        if i > 0:
            out.append(Pair(n[i], p[i - 1], ENTAILMENT, "neg_prev"))
            out.append(Pair(p[i - 1], n[i], NEUTRAL, "generic_neg"))
    return out


def augmented_pairs(h: Hierarchy, rng: np.random.Generator) -> list[Pair]:
    p = h.positive
    out = []

    def premises(t: int) -> list[str]:  # the caption, and the tier right above t when that is not the caption
        return [p[3]] if t == 3 else [p[3], p[t + 1]]

    for kind, edit in edits.SWAPS.items():
        options = [(t, e) for t in range(1, TIERS) if (e := edit(p[t], rng)) is not None and normalize(e) != normalize(p[t])]
        if options:
            t, edited = options[int(rng.integers(len(options)))]
            out += [Pair(prem, edited, CONTRADICTION, f"aug_{kind}") for prem in premises(t)]
    t = int(rng.integers(1, TIERS))
    inserted = edits.insert_word(p[t], rng, avoid=p[3])
    if inserted is not None:
        out += [Pair(prem, inserted, NEUTRAL, "aug_insert") for prem in premises(t)]
        out.append(Pair(inserted, p[t], ENTAILMENT, "aug_insert_rev"))
    drops = [(t, d) for t in range(1, TIERS) if (d := edits.drop_word(p[t], rng)) is not None]
    if drops:
        t, dropped = drops[int(rng.integers(len(drops)))]
        out.append(Pair(p[t], dropped, ENTAILMENT, "aug_drop"))
    return out


def extra_augmented_pairs(h: Hierarchy, rng: np.random.Generator) -> list[Pair]:
    """Denser colour and modifier-drop pairs (own generator, so `augmented_pairs` draws are unchanged): on EVERY tier
    2..4 holding a colour, up to two wrong colours (contradiction, premises as in `augmented_pairs`); on every tier
    holding a droppable modifier, p[t] => p[t] minus it (entailment) and the reverse (neutral: a generic text does not
    entail a more specific one, as for `generic_specific`)."""
    p = h.positive
    out = []
    for t in range(1, TIERS):
        swaps = {s for _ in range(2) if (s := edits.swap_colour(p[t], rng)) is not None and normalize(s) != normalize(p[t])}
        for swapped in sorted(swaps):
            out += [Pair(prem, swapped, CONTRADICTION, "aug_colour_all") for prem in ([p[3]] if t == 3 else [p[3], p[t + 1]])]
        dropped = edits.drop_word(p[t], rng)
        if dropped is not None:
            out += [Pair(p[t], dropped, ENTAILMENT, "aug_drop_all"), Pair(dropped, p[t], NEUTRAL, "aug_drop_rev")]
    return out


def cross_image_pairs(h: Hierarchy, pool: list[Hierarchy], rng: np.random.Generator) -> list[Pair]:
    """p4 => p2, p4 => p3, p3 => p2 with hypotheses from another image of the same split (neutral)."""
    for _ in range(8):
        other = pool[int(rng.integers(len(pool)))]
        if other.image_url != h.image_url and all(
            normalize(other.positive[k]) != normalize(h.positive[k]) for k in (0, 1)
        ):
            p, q = h.positive, other.positive
            return [Pair(p[3], q[1], NEUTRAL, "cross_image"), Pair(p[3], q[2], NEUTRAL, "cross_image"), Pair(p[2], q[1], NEUTRAL, "cross_image")]
    return []


def build_pairs(hierarchies: list[Hierarchy], seed: int = 0, augment: bool = True) -> list[Pair]:
    """All pairs of `hierarchies` (one split: cross-image partners come from this same list). Deterministic: each
    hierarchy draws from its own generator seeded by (seed, source row), so a subset yields a subset of the pairs
    (cross-image partners aside)."""
    out: list[Pair] = []
    for h in hierarchies:
        rng = np.random.default_rng([seed, h.row])
        out += structural_pairs(h)
        if augment:
            out += augmented_pairs(h, rng)
        if len(hierarchies) > 1:
            out += cross_image_pairs(h, hierarchies, rng)
        if augment:
            out += extra_augmented_pairs(h, np.random.default_rng([seed, h.row, 2]))
    return out


def texts_of(pairs: Iterable[Pair]) -> list[str]:
    """Distinct texts of the pairs, sorted (a canonical order for encoding)."""
    return sorted({t for pair in pairs for t in (pair.premise, pair.hypothesis)})
