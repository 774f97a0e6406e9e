"""Human-labelled NLI pairs (`../shared/data/nli/`, see its README) for the `minilm-nli` cross-encoder.

Each file is a gzipped TSV with `premise`, `hypothesis`, `label` (and for some a fourth column). `esnli_test` is the
evaluation set: `load_training` never reads it, only `load_eval` does. Every other file is split by premise, so no
premise is in both parts: `b = int(sha256(premise)[:8], 16) % 100`, dev when `b < DEV_PERCENT`.

JOCI is labelled on a 1-5 likelihood scale; 1 ("impossible") is a contradiction and 2-3 ("technically possible",
"plausible") are neutral. 4-5 ("likely", "very likely") are left out: likely is not entailed, and SNLI-style
annotators call many of them entailment, so either label would teach noise.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from pathlib import Path
from typing import NamedTuple

from hierarcaps.engines.base import NLI_LABELS

_REPO = Path(__file__).resolve().parents[3]
DEFAULT_DIR = _REPO.parent / "shared" / "data" / "nli"
EVAL_FILE = "esnli_test.tsv.gz"
DEV_PERCENT = 10

# file -> (licence, premises are image captions). Only these files are trained on; the card lists them.
TRAINING_FILES = {
    "esnli_dev.tsv.gz": ("CC BY-SA 4.0 (SNLI)", True),
    "cad_train.tsv.gz": ("Apache-2.0", True),
    "cad_dev.tsv.gz": ("Apache-2.0", True),
    "breaking_nli.tsv.gz": ("CC BY-SA 4.0", True),
    "mpe.tsv.gz": ("not stated", True),
    "monli.tsv.gz": ("not stated", True),
    "med.tsv.gz": ("CC BY-SA 4.0", False),
    "mnli_dev_matched.tsv.gz": ("MultiNLI (OANC / CC BY-SA)", False),
    "taxinli.tsv.gz": ("C-UDA 1.0", False),
    "joci.tsv.gz": ("not stated", True),
}
JOCI_LABELS = {"1": "contradiction", "2": "neutral", "3": "neutral"}


class LabelledPair(NamedTuple):
    premise: str
    hypothesis: str
    label: int  # index into NLI_LABELS
    source: str  # file stem, or a derived pair kind


def dev_bucket(premise: str) -> bool:
    return int(hashlib.sha256(premise.encode()).hexdigest()[:8], 16) % 100 < DEV_PERCENT


def read_file(path: Path) -> list[LabelledPair]:
    """Every usable row of one file; a row with a missing text or an unknown label is an error naming it."""
    source = path.name.removesuffix(".tsv.gz")
    out = []
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"premise", "hypothesis", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected premise, hypothesis, label")
        for row, rec in enumerate(reader):
            label = JOCI_LABELS.get(rec["label"]) if source == "joci" else rec["label"].strip().lower()
            if source == "joci" and label is None:
                continue
            if label not in NLI_LABELS:
                raise ValueError(f"{path}: data row {row}: label {rec['label']!r} is not one of {', '.join(NLI_LABELS)}")
            premise, hypothesis = (rec["premise"] or "").strip(), (rec["hypothesis"] or "").strip()
            if not premise or not hypothesis:
                raise ValueError(f"{path}: data row {row}: empty premise or hypothesis")
            out.append(LabelledPair(premise, hypothesis, NLI_LABELS.index(label), source))
    return out


def load_training(folder: Path = DEFAULT_DIR) -> dict[str, list[LabelledPair]]:
    """{"train": [...], "dev": [...]} from every training file (never `esnli_test`), exact duplicates dropped."""
    folder = Path(folder)
    absent = [name for name in TRAINING_FILES if not (folder / name).is_file()]
    if absent:
        raise FileNotFoundError(f"{folder}: missing {', '.join(absent)} (the human-labelled NLI files, see its README)")
    out: dict[str, list[LabelledPair]] = {"train": [], "dev": []}
    seen: set[tuple[str, str]] = set()
    for name in TRAINING_FILES:
        for pair in read_file(folder / name):
            if (pair.premise, pair.hypothesis) in seen:
                continue
            seen.add((pair.premise, pair.hypothesis))
            out["dev" if dev_bucket(pair.premise) else "train"].append(pair)
    return out


def load_eval(folder: Path = DEFAULT_DIR) -> list[LabelledPair]:
    return read_file(Path(folder) / EVAL_FILE)
