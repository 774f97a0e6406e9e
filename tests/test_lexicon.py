"""The shipped WordNet table: tier 1 checked against what tier 2's head noun is a kind of."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from hierarcaps import lexicon
from hierarcaps.negatives import grounded_tier1

WORDNET = Path("/usr/share/wordnet")


def test_a_tier_1_that_wordnet_does_not_put_above_tier_2_is_mended_to_the_category_its_senses_agree_on():
    assert grounded_tier1("mechanical appliance", "cup") == "container"
    assert grounded_tier1("transportation system", "fence") == "structure"
    assert grounded_tier1("transportation vehicle", "luggage") == "container"
    # a tier 1 one of the head's senses is a kind of stays ("mouse": an animal, and a device), in any inflection
    assert grounded_tier1("electronics", "mouse") == "electronics" and grounded_tier1("appliances", "cups") == "container"
    # only a tier 1 that names a known category is checked: WordNet's tree is not the one captions use ("sports
    # equipment" is no hypernym of "ski" there)
    assert grounded_tier1("sports equipment", "skis") == "sports equipment"
    # senses that disagree ("bat": an animal, a club) mend nothing: a one-word tier 2 keeps its tier 1
    assert lexicon.category("bat") is None and grounded_tier1("vehicle", "bat") == "vehicle"
    # the hand-made categories come first: a dog is an animal whatever WordNet adds
    assert grounded_tier1("sport", "dog") == "animal"


def test_the_table_is_the_one_its_card_describes():
    card = json.loads((lexicon.ARTIFACT.parent / "card.json").read_text())
    assert card["sha256"] == hashlib.sha256(lexicon.ARTIFACT.read_bytes()).hexdigest()
    with gzip.open(lexicon.ARTIFACT, "rt") as f:
        nouns = json.load(f)["nouns"]
    assert len(nouns) == card["nouns"] and "wordnet-base" in card["reproduce"] and "Princeton University" in card["notice"]


@pytest.mark.skipif(importlib.util.find_spec("nltk") is None or not (WORDNET / "data.noun").exists(),
                    reason="remaking the table needs nltk (pip install 'hierarcaps[lexicon]') and Debian's wordnet-base")
def test_the_table_is_remade_from_wordnet(tmp_path):
    words = {"cup", "fence", "bat", "dog", "surfboard"}
    lexicon.build(WORDNET, tmp_path / "t.json.gz", only=words)
    with gzip.open(tmp_path / "t.json.gz", "rt") as f:
        remade = json.load(f)["nouns"]
    with gzip.open(lexicon.ARTIFACT, "rt") as f:
        shipped = json.load(f)["nouns"]
    assert remade == {w: shipped[w] for w in words if w in shipped} and len(remade) == 4  # WordNet has no "surfboard"
