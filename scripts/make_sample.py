"""Rebuild data/coco_captions_*.parquet from the shared HierarCaps test CSV (see data/README.md)."""

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
rows = list(csv.DictReader(open(ROOT.parent / "shared/data/hierarcaps_test/hierarcaps_test.csv", encoding="utf-8")))[:300]
table = pa.table({"caption": [r["captions"].split(" => ")[-1] for r in rows], "image_url": [r["image_url"] for r in rows]})
pq.write_table(table, ROOT / "data/coco_captions_sample.parquet")
pq.write_table(table.slice(0, 100), ROOT / "data/coco_captions_100.parquet")
