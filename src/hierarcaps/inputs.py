"""Reading user files: captions (parquet / CSV / JSONL with a `caption` column) and official HierarCaps CSVs.

Problems with the file as a whole (missing, truncated, no caption column) raise `InputError` naming the file.
Problems with one row (empty, whitespace, too long, duplicate, not UTF-8) become a reject with the row number,
so one bad caption never stops a build and no row is lost.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hierarcaps import schema

CAPTION_FORMATS = (".parquet", ".csv", ".jsonl", ".json", ".csv.gz", ".jsonl.gz")
HIERARCHY_CSV_SUFFIXES = (".csv", ".csv.gz")  # the official HierarCaps files, as review and view read them
# `hf:<dataset>[:<split>]` reads a dataset through `datasets.load_dataset` (the paper profile's Conceptual Captions:
# `hf:google-research-datasets/conceptual_captions:train`); <dataset> may also be a local dataset folder.
HUB_PREFIX = "hf:"


def is_hub_source(source: str | Path) -> bool:
    return str(source).startswith(HUB_PREFIX)


def _read_hub(source: str) -> list[dict]:
    name, _, split = source[len(HUB_PREFIX):].partition(":")
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, split=split or "train")
    except Exception as err:  # datasets raises many kinds (missing, offline, bad split): all mean "cannot read it"
        raise InputError(f"{source}: cannot load the dataset {name!r} (split {split or 'train'!r}): {err}") from None
    return dataset.to_list()


class InputError(ValueError):
    """The input file cannot be read at all; the message names the file and what is wrong."""


def caption_id(caption: str) -> str:
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()[:16]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(CAPTION_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise InputError(f"{path}: unsupported file type; use one of {', '.join(CAPTION_FORMATS)}")


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    # surrogateescape keeps undecodable bytes so the row can be rejected by number instead of failing the file
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")


def read_records(path: str | Path) -> list[dict]:
    """Every data row of a CSV / JSONL / parquet file (or an `hf:` dataset) as a dict (parquet binary stays bytes)."""
    if is_hub_source(path):
        return _read_hub(str(path))
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    suffix = _suffix(path)
    if suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as err:
            raise InputError(f"{path}: not a readable parquet file (truncated or corrupt?): {err}") from None
    with _open_text(path) as fh:
        if suffix.startswith(".csv"):
            try:
                return list(csv.DictReader(fh))
            except csv.Error as err:
                raise InputError(f"{path}: malformed CSV: {err}") from None
        records = []
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                records.append({"__error__": f"line {lineno}: not valid JSON ({err.msg})"})
                continue
            records.append(value if isinstance(value, dict) else {"__error__": f"line {lineno}: not a JSON object"})
        return records


def _check_caption(value, max_chars: int) -> tuple[str | None, str | None, str]:
    """(caption, reason, detail): caption is None when the row is rejected."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            return None, "not_utf8", f"caption bytes are not valid UTF-8 at byte {err.start}"
    if value is None:
        return None, "empty", "caption is missing/null"
    if not isinstance(value, str):
        return None, "not_text", f"caption is a {type(value).__name__}, not text"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return None, "not_utf8", f"caption is not valid UTF-8 near character {err.start}"
    text = " ".join(value.split())
    if not text:
        return None, "empty", "caption is empty or whitespace only"
    if len(text) > max_chars:
        return None, "too_long", f"caption has {len(text)} characters; the cap is {max_chars} (input.max_caption_chars)"
    return text, None, ""


def _printable(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def load_captions(
    path: str | Path, column: str = "caption", max_chars: int = 1000, dedupe: bool = True
) -> tuple[pa.Table, pa.Table]:
    """(captions in schema.CAPTIONS, rejects in schema.REJECTS); len(both) == data rows of the file."""
    path = str(path) if is_hub_source(path) else Path(path)
    records = read_records(path)
    if not records:
        raise InputError(f"{path}: no data rows")
    if not any(column in r for r in records):
        found = sorted({k for r in records[:50] for k in r if k != "__error__"})
        raise InputError(f"{path}: no {column!r} column (found: {', '.join(found) or 'none'})")
    kept, rejects, seen = [], [], {}
    for row_number, record in enumerate(records):
        base = {"stage": "input", "source_file": str(path), "source_row": row_number}
        if "__error__" in record:
            rejects.append({**base, "reason": "unparsable_row", "detail": record["__error__"]})
            continue
        caption, reason, detail = _check_caption(record.get(column), max_chars)
        if caption is not None and dedupe and caption in seen:
            reason, detail = "duplicate", f"same caption as row {seen[caption]}"
        if reason:
            rejects.append({**base, "reason": reason, "detail": f"row {row_number}: {detail}", "caption": _printable(record.get(column))})
            continue
        seen[caption] = row_number
        url = record.get("image_url")
        kept.append({"id": caption_id(caption), "caption": caption, "image_url": None if url is None else str(url), **base})
    captions = pa.Table.from_pylist([{k: r[k] for k in schema.CAPTIONS.names} for r in kept], schema=schema.CAPTIONS)
    return captions, schema.rejects_table(rejects)


def load_hierarchies(path: str | Path) -> tuple[pa.Table, pa.Table]:
    """Read the official HierarCaps CSV (`positive,negative,image_url` or `id,captions,image_url`) or a
    hierarchy parquet shard, as schema.HIERARCHIES rows plus rejects for rows that are not 4 tiers."""
    path = Path(path)
    table = read_records(path)
    if not table:
        raise InputError(f"{path}: no data rows")
    columns = set(table[0])
    key = "positive" if "positive" in columns else "captions" if "captions" in columns else None
    if key is None:
        raise InputError(f"{path}: expected a 'positive' (and 'negative') or a 'captions' column; found {sorted(columns)}")
    kept, rejects = [], []
    for row_number, record in enumerate(table):
        base = {"stage": "input", "source_file": str(path), "source_row": row_number}
        positive = _as_tiers(record.get(key))
        negative = _as_tiers(record.get("negative")) if record.get("negative") not in (None, "") else None
        bad = positive is None or len(positive) != schema.TIERS or (negative is not None and len(negative) != schema.TIERS)
        if bad:
            rejects.append({**base, "reason": "not_4_tiers", "detail": f"row {row_number}: expected 4 tiers joined by ' => '",
                            "caption": _printable(record.get(key))})
            continue
        row_id = str(record["id"]) if record.get("id") not in (None, "") else caption_id(schema.join_tiers(positive) + "|" + (schema.join_tiers(negative) or ""))
        kept.append({"id": row_id, "caption": positive[-1], "image_url": record.get("image_url"), "positive": positive,
                     "negative": negative, "source": record.get("source") or "external", "model": record.get("model")})
    return pa.Table.from_pylist(kept, schema=schema.HIERARCHIES), schema.rejects_table(rejects)


def _as_tiers(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    return schema.split_tiers(str(value))


def write_hierarchies_csv(table: pa.Table, path: str | Path) -> None:
    """Write rows in the official HierarCaps CSV format: positive,negative,image_url."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["positive", "negative", "image_url"])
        for row in table.select(["positive", "negative", "image_url"]).to_pylist():
            writer.writerow([schema.join_tiers(row["positive"]), schema.join_tiers(row["negative"]) or "", row["image_url"] or ""])
