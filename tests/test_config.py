"""Every profile file loads and validates; overrides are typed; unknown keys are errors, not silently ignored."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hierarcaps.config import available_profiles, load_profile, parse_override


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_validates(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.description


def test_expected_profiles_exist():
    assert {"offline", "small", "paper"} <= set(available_profiles())


def test_paper_profile_names_the_papers_models():
    paper = load_profile("paper")
    assert paper.seed.generator.backend == "vllm"
    assert paper.seed.generator.model == "meta-llama/Llama-2-7b-chat-hf"
    assert paper.distill.student.pretrained == "google/flan-t5-base"
    assert paper.filter.nli.backend == "cross-encoder"


def test_overrides_are_parsed_and_validated():
    profile = load_profile("offline", dict([parse_override("seed.limit=3"), parse_override("seed.generator.model=some/dir")]))
    assert profile.seed.limit == 3 and profile.seed.generator.model == "some/dir"
    with pytest.raises(ValidationError):
        load_profile("offline", {"seed.limit": -1})
    with pytest.raises(ValidationError):
        load_profile("offline", {"seed.no_such_key": 1})


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ValueError, match="offline"):
        load_profile("nope")


def test_section_digest_changes_with_config():
    a, b = load_profile("offline"), load_profile("offline", {"seed.limit": 5})
    assert a.seed.digest() != b.seed.digest()
    assert a.distill.digest() == b.distill.digest()


def test_negative_sample_tiers_name_real_tiers():
    with pytest.raises(ValidationError, match="negative_sample_tiers"):
        load_profile("offline", overrides={"generate.negative_sample_tiers": [1, 5]})
