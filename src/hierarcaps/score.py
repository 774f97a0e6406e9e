"""`hierarcaps nli`: score any premise / hypothesis pairs with the profile's NLI back-end.

Input: CSV, TSV, JSONL or parquet (optionally gzipped text) with columns `premise` and `hypothesis`; other columns
are kept. Output: parquet with the input columns, then `entailment`, `neutral`, `contradiction` (probabilities
summing to 1) and `label` (the most probable), rows in input order. The whole input is checked before any model
is loaded, and the output is written through a temporary file, so a bad row or a failed run leaves no partial file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hierarcaps import shards
from hierarcaps.config import NLIConfig
from hierarcaps.engines.base import NLI_LABELS, NLIModel
from hierarcaps.engines.nli import load_nli, score_pairs

PAIR_FORMATS = (".csv", ".tsv", ".jsonl", ".parquet", ".csv.gz", ".tsv.gz", ".jsonl.gz")
COLUMNS = ("premise", "hypothesis")


class PairsError(ValueError):
    """The pairs file cannot be scored; the message names the file (and the row) and what is wrong."""


def _format(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(PAIR_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix.removesuffix(".gz").lstrip(".")
    raise PairsError(f"{path}: unsupported file type; use one of {', '.join(PAIR_FORMATS)}")


def read_pairs(path: str | Path) -> pa.Table:
    """The file as a table whose `premise` / `hypothesis` are non-empty text in every row (rows numbered from 1)."""
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"{path}: file not found")
    kind = _format(path)
    try:
        if kind == "parquet":
            table = pq.read_table(path)
        else:
            raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
            with io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
                if kind == "jsonl":
                    records = []
                    for lineno, line in enumerate(fh, start=1):
                        if line.strip():
                            value = json.loads(line)
                            if not isinstance(value, dict):
                                raise PairsError(f"{path}: line {lineno}: not a JSON object")
                            records.append(value)
                else:
                    records = list(csv.DictReader(fh, delimiter="\t" if kind == "tsv" else ","))
            table = pa.Table.from_pylist(records)
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, pa.ArrowInvalid, OSError) as err:
        raise PairsError(f"{path}: not a readable {kind} file: {err}") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise PairsError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(table.column_names) or 'none'}")
    taken = [c for c in (*NLI_LABELS, "label") if c in table.column_names]
    if taken:
        raise PairsError(f"{path}: column(s) {', '.join(taken)} would be overwritten by the scores; rename them")
    for column in COLUMNS:
        for row, value in enumerate(table.column(column).to_pylist(), start=1):
            if not isinstance(value, str) or not value.strip():
                raise PairsError(f"{path}: row {row}: {column} is {'empty' if isinstance(value, str) or value is None else type(value).__name__}; every row needs both texts")
    return table


def score_table(table: pa.Table, model: NLIModel) -> pa.Table:
    pairs = list(zip(table.column("premise").to_pylist(), table.column("hypothesis").to_pylist()))
    scores = score_pairs(model, pairs)  # each distinct pair once
    probs = np.array([scores[(p, h)] for p, h in pairs]).reshape(len(pairs), len(NLI_LABELS))
    for k, label in enumerate(NLI_LABELS):
        table = table.append_column(label, pa.array(probs[:, k], pa.float64()))
    return table.append_column("label", pa.array([NLI_LABELS[k] for k in probs.argmax(1)] if len(pairs) else [], pa.string()))


def score_file(input: str | Path, out: str | Path, cfg: NLIConfig, model: NLIModel | None = None) -> dict:
    """Score `input` into the parquet `out`; returns {"rows", "labels": counts, "model"}."""
    table = read_pairs(input)
    model = model or load_nli(cfg)
    scored = score_table(table, model)
    shards.write_table(scored, Path(out))
    labels = scored.column("label").to_pylist()
    return {"rows": scored.num_rows, "labels": {label: labels.count(label) for label in NLI_LABELS}, "model": model.model_id}
