"""The degenerate-text checks (issue #11): each rejects its case with its own reason and a detail naming the tier
and word, keeps real rows of the development share that look like it, and can be switched off."""

from __future__ import annotations

import pytest

from hierarcaps.checks import (
    check_hierarchy,
    copied_example_phrase,
    echoed_word,
    english_words,
    non_words,
    prompt_phrases,
    repeated_content_word,
    restates,
    wrong_sense,
)
from hierarcaps.config import ChecksConfig, load_profile
from hierarcaps.inputs import load_hierarchies
from hierarcaps.judge import Judge

PHRASES = prompt_phrases(["seed_v1", "augment_v1"])

# Real rows of hierarcaps_coco_auto (development share), verbatim: (positive, negative).
BROWN_DOG = (
    ["dog", "brown dog", "a brown dog hangs out of a car window .", "A brown dog hanging it's head out of a car window."],
    ["structure", "dog sitting", "brown dog sitting in the grass",
     "a brown dog , who is a black breed , hangs out of a car window , not long before it is rained ."],
)
COMPUTER = (
    ["computer", "computer table", "computer table with a set of books and a computer screen",
     "An office desk with two computer screens, books diagrams and a phone on it."],
    ["football", "laptop", "close up of a computer table",
     "a table with books and computer screen , a laptop and laptop on white background"],
)
DETOUR = (
    ["detour", "detour sign", "detour sign indicating wegomlegging", "Portable sign stating Wegomlegging which is Detour in Dutch"],
    ["people", "street detour", "person walked along detour sign .", "detour sign on a highway showing wegomlegging"],
)


def _check(row, cfg=None):
    positive, negative = row
    return check_hierarchy(positive, negative, positive[-1], cfg or ChecksConfig(), PHRASES)


@pytest.mark.parametrize("row", [BROWN_DOG, COMPUTER, DETOUR], ids=["brown-dog", "computer", "detour"])
def test_real_rows_that_look_degenerate_are_kept(row):
    # "brown dog" is a prompt example's phrase but the caption has it; "computer" repeats in a long tier;
    # "wegomlegging" is no English word but the caption's own.
    assert _check(row) is None


@pytest.mark.parametrize(
    ("row", "side", "tier", "text", "reason", "named", "switch"),
    [
        (BROWN_DOG, 0, 3, "a brown dog in a red coat with an umbrella", "positive_copied_example", "'red coat'", "copied_example"),
        (BROWN_DOG, 1, 3, "brown dog on the beach at sunset", "negative_copied_example", "'beach at sunset'", "copied_example"),
        (COMPUTER, 0, 3, "a computer with a computer", "positive_repeated_word", "'computer'", "repeated_word"),
        (COMPUTER, 1, 2, "a laptop in front of a laptop", "negative_repeated_word", "'laptop'", "repeated_word"),
        (DETOUR, 1, 2, "street detuor", "negative_non_word", "'detuor'", "non_words"),
        (DETOUR, 0, 3, "detour sign indicating cral stroom", "positive_non_word", "'cral', 'stroom'", "non_words"),
    ],
)
def test_each_degenerate_text_rule_rejects_its_case(row, side, tier, text, reason, named, switch):
    changed = [list(row[0]), list(row[1])]
    changed[side][tier - 1] = text
    got, detail = _check(changed)
    assert got == reason and f"{('positive', 'negative')[side]} tier {tier} {text!r}" in detail and named in detail
    assert _check(changed, ChecksConfig(**{switch: False})) is None  # and only that rule caught it


def test_repeat_detectors():
    # the plain measure counts any repeat; the filter's rule only a word echoed in a short tier
    assert repeated_content_word("a tennis player on a tennis court") == "tennis"
    assert echoed_word("a tennis player on a tennis court") is None
    assert echoed_word("a bus with a bus") == "bus" and echoed_word("a pole in front of a pole") == "pole"
    assert echoed_word("fruit fruit") == "fruit" and echoed_word("a bus with a red bus") is None
    # a word the caption itself says twice may repeat
    assert repeated_content_word("a train on a train track", "A train on a train track.") is None
    assert echoed_word("a train on a train", "A train on a train track.") is None
    assert repeated_content_word("a dog and a cat") is None and repeated_content_word("the dog of the dog") == "dog"


def test_a_negative_made_of_the_positive_tiers_own_words_restates_it():
    assert restates("black bear", "black bears") and restates("train in a station", "white yellow train at an empty station")
    assert restates("a giraffe peeking around the wall", "A giraffe is peeking around the side of a wall at the camera.")
    assert not restates("brown bear", "black bears") and not restates("a dog on a sofa", "a dog on a beach")
    assert not restates("white yellow train at an empty station", "train in a station")  # more specific: not the same
    # a preposition can be all that contradicts
    assert not restates("garage outside the home", "garage inside of a home") and not restates("cat outside", "cat sitting")
    assert not restates("a man without a hat", "a man with a hat") and restates("giraffes in the front of the enclosure", "giraffes in an enclosure")


def test_word_list_and_example_phrases():
    assert len(english_words()) > 100_000 and {"giraffe", "frisbee", "skateboarder"} <= english_words()
    assert non_words("a cral in the stroom", {"cral"}) == ["stroom"] and non_words("a man's dog-sled") == []
    assert {("red", "coat"), ("beach", "sunset"), ("brown", "dog")} <= PHRASES
    assert copied_example_phrase("woman in a red coat with a suitcase", "A man on a horse.", PHRASES) == "red coat"
    assert copied_example_phrase("a dog on the beach at sunset", "Sunset at the beach with two dogs.", PHRASES) is None
    assert copied_example_phrase("a red coat", "A man.", ()) is None


def test_judge_reads_its_phrases_from_the_profiles_prompts(tmp_path):
    prompt = tmp_path / "seed_try.txt"
    prompt.write_text("Caption: A green parrot on a wooden fence.\n1: bird\n2: parrot\n3: green parrot\nNegative:\n"
                      "1: dog\n2: red parrot\n3: green parrot in a cage\n4: A green parrot in a cage.\n\nCaption: $caption\n")
    judge = Judge(load_profile("offline", {"seed.prompt": str(prompt)}))
    assert ("green", "parrot") in judge.phrases and ("red", "coat") not in judge.phrases
    assert "seed_try.txt" in " ".join(judge.fingerprint_parts()["example_prompts_sha256"])


def test_checks_keep_95_percent_of_the_development_share(shared_data):
    table, _ = load_hierarchies(shared_data / "hierarcaps_coco_auto" / "hierarcaps_coco_auto.csv.gz")
    judge = Judge(load_profile("offline"))
    rows = table.slice(0, 3000).to_pylist()
    kept = sum(judge.structural(r["positive"], r["negative"], r["caption"]) is None for r in rows)
    assert kept >= 0.95 * len(rows), f"{kept}/{len(rows)}"


def test_a_positive_tier_that_takes_a_compound_head_in_another_sense_is_rejected():
    hot_dog = ["dog", "dog on a plate", "dog on a plate with glasses", "a hot dog on a plate next to two glasses."]
    negative = ["cat", "dog on a bike", "dog on a plate without glasses", "a hot dog on a plate next to three glasses."]
    got, detail = check_hierarchy(hot_dog, negative, hot_dog[-1], ChecksConfig(), ())
    assert got == "positive_wrong_sense" and "positive tier 1 'dog'" in detail
    assert check_hierarchy(hot_dog, negative, hot_dog[-1], ChecksConfig(wrong_sense=False), ()) is None
    # the compound itself, a category, or a caption that also has the head alone are fine
    assert wrong_sense("hot dog on a plate", hot_dog[-1]) is None and wrong_sense("food on a plate", hot_dog[-1]) is None
    assert wrong_sense("dog", "A dog looks at a hot dog.") is None
    assert wrong_sense("bears on a bed", "Two teddy bears on a bed.") == "bear"
    assert wrong_sense("bird", "Bird cages hanging over an alley.") == "bird" and wrong_sense("bird cage", "Bird cages hanging.") is None
