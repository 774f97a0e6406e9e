"""Training hierarchies for fine-tuning: a built run, a published release, or an official-format CSV.

    load_training_data("runs/mine")                      # its filter shards (the accepted rows)
    load_training_data("releases/mine")                  # data/part-*.parquet, every file checked against manifest.json
    load_training_data("../shared/data/hierarcaps_coco_auto")   # a folder holding one CSV, or the .csv / .csv.gz itself

Every row needs a positive and a negative hierarchy of 4 tiers; a row without one is an error naming it. Rows whose
image is in the curated 1K test set are dropped (that set is for evaluation only). Rows are split by image with the
NLI stand-in's rule (`nli.pairs.split_of`: 80% train / 10% dev / 10% eval buckets of sha256(image_url)), so the dev
numbers of a fine-tune are on images it never saw; a row without an image URL is bucketed by its caption.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from hierarcaps import shards
from hierarcaps.inputs import load_hierarchies
from hierarcaps.nli.pairs import SPLIT_RULE, split_of, test_image_urls
from hierarcaps.official import check_recorded

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    source: str
    kind: str  # run | release | csv
    sha256: str  # of the file read, or of the shard checksums of a run / release
    positive: list[tuple[str, ...]]
    negative: list[tuple[str, ...]]
    split: list[str]  # train | dev | eval per row
    dropped_test_rows: int = 0
    split_rule: str = field(default=SPLIT_RULE)

    def rows(self, split: str) -> list[int]:
        """Row indices of one split ("all": every row)."""
        return [i for i, s in enumerate(self.split) if split in ("all", s)]

    def describe(self) -> dict:
        counts = {s: self.split.count(s) for s in ("train", "dev", "eval")}
        return {"source": self.source, "kind": self.kind, "sha256": self.sha256, "rows": len(self.split),
                "rows_by_split": counts, "split_rule": self.split_rule, "dropped_test_rows": self.dropped_test_rows}


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _files(path: Path) -> tuple[str, list[Path], str]:
    """(kind, files to read, sha256 of the data)."""
    if path.is_dir() and (path / "filter").is_dir():
        stage_dir = path / "filter"
        try:
            files = shards.output_shards(stage_dir)
        except shards.ShardError as err:
            raise ValueError(f"{path}: not a finished run ({err})") from None
        listed = {s["name"]: s["sha256"] for s in shards.read_manifest(stage_dir)["shards"]}
        return "run", files, _digest([f"{f.name} {listed[f.name]}" for f in files])
    if path.is_dir() and (path / "manifest.json").is_file():
        from hierarcaps.download import verify_release

        manifest = verify_release(path)
        entries = [s for s in manifest["shards"] if s["kind"] == "part"]
        return "release", [path / s["path"] for s in entries], _digest([f"{s['path']} {s['sha256']}" for s in entries])
    if path.is_dir():
        found = sorted(path.glob("*.csv")) + sorted(path.glob("*.csv.gz"))
        if len(found) != 1:
            raise ValueError(f"{path}: expected a run dir (filter/), a release (manifest.json) or one CSV, found {len(found)} CSVs")
        path = found[0]
    digest = shards.sha256_file(path)
    check_recorded(path, digest)  # the release's train file: its sha256 recorded at download
    return "csv", [path], digest


def load_training_data(data: str | Path) -> TrainingData:
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"finetune data {path} does not exist (a run dir, a release folder, or a HierarCaps CSV)")
    kind, files, digest = _files(path)
    banned = test_image_urls()
    positive, negative, split, dropped = [], [], [], 0
    for file in files:
        table, rejects = load_hierarchies(file)
        if rejects.num_rows:
            first = rejects.slice(0, 1).to_pylist()[0]
            raise ValueError(f"{file}: {rejects.num_rows} row(s) are not 4 tiers, e.g. data row {first['source_row']}: {first['detail']}")
        for row, rec in enumerate(table.select(["positive", "negative", "image_url", "caption"]).to_pylist()):
            if rec["negative"] is None or not all(rec["negative"]):
                raise ValueError(f"{file}: data row {row}: no negative hierarchy (fine-tuning needs positive and negative)")
            if rec["image_url"] in banned:
                dropped += 1
                continue
            positive.append(tuple(rec["positive"]))
            negative.append(tuple(rec["negative"]))
            split.append(split_of(rec["image_url"] or rec["caption"]))
    if dropped:
        log.warning("%s: dropped %d row(s) whose image is in the curated test set (evaluation only)", path, dropped)
    if not positive:
        raise ValueError(f"{path}: no hierarchy rows to train on")
    return TrainingData(str(path), kind, digest, positive, negative, split, dropped)
