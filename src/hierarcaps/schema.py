"""Arrow schemas of every shard kind, defined once.

A run directory holds one folder per stage; every stage writes `part-NNNNN.parquet` (accepted rows, in the stage's
output schema) and `rejects-NNNNN.parquet` (REJECTS). Bump SCHEMA_VERSION when a schema changes incompatibly:
the manifest records it so an old run is not silently mixed with new code.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
TIERS = 4
SEPARATOR = " => "  # the official HierarCaps CSV joins tiers with this

# Input captions after validation (stage "input").
CAPTIONS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # sha1 of the caption text, 16 hex chars
        pa.field("caption", pa.string(), nullable=False),
        pa.field("image_url", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),  # 0-based data row in the source file
    ]
)

# A positive hierarchy (generic -> specific, tier 4 = caption) and an optional negative one.
HIERARCHIES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("image_url", pa.string()),
        pa.field("positive", pa.list_(pa.string(), TIERS), nullable=False),
        pa.field("negative", pa.list_(pa.string(), TIERS)),
        pa.field("source", pa.string()),  # seed / augment / generate / external
        pa.field("model", pa.string()),  # model id that wrote the row
    ]
)

# Filter output: HIERARCHIES plus the NLI evidence that let the row through.
FILTERED = HIERARCHIES.append(pa.field("min_entail", pa.float32())).append(pa.field("min_contradict", pa.float32()))

# Training examples the distill stage built (one row per direction/prefix).
DISTILL_PAIRS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # hierarchy id
        pa.field("direction", pa.string(), nullable=False),  # s2g / g2s
        pa.field("source_text", pa.string(), nullable=False),
        pa.field("target_text", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train / eval
    ]
)

# Every rejected row of every stage: enough to see why and to retry by hand.
REJECTS = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # short machine-readable rule name
        pa.field("detail", pa.string()),  # human-readable: failing pair, scores, parse error, ...
        pa.field("caption", pa.string()),
        pa.field("positive", pa.list_(pa.string())),
        pa.field("negative", pa.list_(pa.string())),
        pa.field("raw", pa.string()),  # raw model output, for parse failures
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
    ]
)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def rejects_table(rows: list[dict]) -> pa.Table:
    """Build a REJECTS table from dicts that name only the fields they know."""
    return pa.Table.from_pylist([{name: row.get(name) for name in REJECTS.names} for row in rows], schema=REJECTS)


def join_tiers(tiers: list[str] | None) -> str | None:
    return None if tiers is None else SEPARATOR.join(tiers)


def split_tiers(text: str) -> list[str]:
    return [t.strip() for t in text.split("=>")]
