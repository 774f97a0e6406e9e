"""Stage `filter`: the student's rows through `judge.Judge` (structural checks, then one NLI pass per shard).

The rules and the reject details are described in hierarcaps.judge, which the seed and augment stages share. The
filter alone on an existing HierarCaps file (`hierarcaps filter`) lives in `stages/refilter.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from hierarcaps import schema
from hierarcaps.config import Profile
from hierarcaps.engines.base import NLIModel
from hierarcaps.judge import Judge
from hierarcaps.stage import ShardOutput, ShardTask, Stage, plan_row_range, read_task_rows
from hierarcaps.stats import Stats


class FilterStage(Stage):
    name = "filter"
    upstream = ("generate",)
    output_schema = schema.FILTERED

    def __init__(self, profile: Profile, run_dir: str | Path, upstream: str = "generate", nli: NLIModel | None = None):
        super().__init__(profile, run_dir)
        self.upstream = (upstream,)
        self.judge = Judge(profile, nli)

    def fingerprint_parts(self) -> dict[str, Any]:
        return self.judge.fingerprint_parts()

    def models(self) -> dict[str, str]:
        return {"nli": self.judge.nli.model_id}

    def manifest_extra(self) -> dict[str, Any]:
        return self.judge.manifest_extra(self.name)

    def plan(self) -> list[ShardTask]:
        return plan_row_range(self.name, self.run_dir / self.upstream[0], 0, None)

    def process(self, task: ShardTask) -> ShardOutput:
        rows = read_task_rows(task).to_pylist()
        stats = Stats()
        kept, rejects = [], []
        for row, verdict in zip(rows, self.judge.judge(rows, stats)):
            if verdict.reason is None:
                kept.append({**{k: row.get(k) for k in schema.HIERARCHIES.names}, **verdict.mins})
            else:
                stats.reject(verdict.reason)
                rejects.append(_reject(row, verdict.reason, verdict.detail))
        self.advance(len(rows))
        out = pa.Table.from_pylist(kept, schema=schema.FILTERED) if kept else schema.empty(schema.FILTERED)
        return ShardOutput(out, schema.rejects_table(rejects), stats)


def _reject(row: dict, reason: str, detail: str) -> dict:
    return {
        "id": row.get("id"),
        "stage": "filter",
        "reason": reason,
        "detail": detail,
        "caption": row.get("caption"),
        "positive": row.get("positive"),
        "negative": row.get("negative"),
    }
