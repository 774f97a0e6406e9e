"""Test-wide settings: never touch the network, keep Prefect and caches inside the test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# The HierarCaps test set (CSV + images/): the shared copy beside the checkout, else where the README downloads it.
TEST_SET_PLACES = (SHARED / "hierarcaps_test", ROOT / "data" / "hierarcaps_test")
GET_TEST_SET = ("the HierarCaps test set is not here: get it with `hierarcaps download official:test --to data/hierarcaps_test` "
                "(or put ../shared beside this checkout)")


@pytest.fixture
def sample_captions() -> Path:
    return ROOT / "data" / "coco_captions_sample.parquet"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED


@pytest.fixture
def test_set() -> Path:
    """The curated 1K test set folder (hierarcaps_test.csv + images/), as `validate --data` reads it."""
    for place in TEST_SET_PLACES:
        if (place / "hierarcaps_test.csv").is_file() and (place / "images").is_dir():
            return place
    pytest.skip(GET_TEST_SET)
