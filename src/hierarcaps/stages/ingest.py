"""Stage `input`: validate the user's caption file and cut it into parquet shards (the unit of work downstream)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from hierarcaps import schema, shards
from hierarcaps.inputs import is_hub_source, load_captions
from hierarcaps.stage import ShardOutput, ShardTask, Stage
from hierarcaps.stats import Stats


class IngestStage(Stage):
    name = "input"
    output_schema = schema.CAPTIONS

    def __init__(self, profile, run_dir, source: str | Path):
        super().__init__(profile, run_dir)
        self.source = source if is_hub_source(source) else Path(source)

    @cached_property
    def loaded(self) -> tuple[pa.Table, pa.Table, int]:
        cfg = self.profile.input
        captions, rejects = load_captions(self.source, cfg.caption_column, cfg.max_caption_chars, cfg.dedupe)
        return captions, rejects, captions.num_rows + rejects.num_rows

    def fingerprint_parts(self) -> dict:
        if is_hub_source(self.source):
            # a hub dataset has no file to hash here: its name and the rows read stand for it
            return {"source": str(self.source), "source_sha256": shards.sha256_text(str(self.source)), "source_rows": self.loaded[2]}
        return {"source": str(self.source), "source_sha256": shards.sha256_file(self.source)}

    def plan(self) -> list[ShardTask]:
        total = self.loaded[2]
        size = self.profile.input.rows_per_shard
        return [ShardTask(self.name, i, (str(self.source),), lo, min(lo + size, total)) for i, lo in enumerate(range(0, total, size))]

    def input_rows(self, task: ShardTask) -> int:
        return task.stop - task.start

    def process(self, task: ShardTask) -> ShardOutput:
        captions, rejects, _ = self.loaded

        def in_range(table: pa.Table) -> pa.Table:
            rows = table["source_row"]
            return table.filter(pc.and_(pc.greater_equal(rows, task.start), pc.less(rows, task.stop)))

        out, bad = in_range(captions), in_range(rejects)
        stats = Stats()
        for reason in bad["reason"].to_pylist():
            stats.reject(reason)
        self.advance(task.stop - task.start)
        return ShardOutput(out, bad, stats)
