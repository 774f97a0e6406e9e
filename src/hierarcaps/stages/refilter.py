"""`hierarcaps filter`: the filter stage alone on an existing HierarCaps CSV or hierarchy parquet (issue #3 item 5).

An `external` stage cuts the file into HIERARCHIES shards, the filter stage reads them as its upstream, and a
per-check report (`filter/check_report.json`: the accept rate of every structural and NLI check) is written.
`pipeline.filter_file` runs the two; this module holds the pieces.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from hierarcaps import schema, shards
from hierarcaps.config import Profile
from hierarcaps.inputs import InputError, load_hierarchies
from hierarcaps.judge import JOINT, RULES, STRUCTURAL
from hierarcaps.stage import ShardOutput, ShardTask, Stage
from hierarcaps.stats import Stats

log = logging.getLogger(__name__)

REPORT = "check_report.json"


class ExternalStage(Stage):
    """Stage `external`: an existing HierarCaps CSV / hierarchy parquet cut into HIERARCHIES shards."""

    name = "external"
    output_schema = schema.HIERARCHIES

    def __init__(self, profile: Profile, run_dir: str | Path, source: str | Path):
        super().__init__(profile, run_dir)
        self.source = Path(source)

    @property
    def cfg(self):
        return self.profile.input  # only rows_per_shard matters here

    @cached_property
    def loaded(self) -> tuple[pa.Table, pa.Table, list[int]]:
        """(rows, rejects, source row of each kept row): load_hierarchies keeps file order."""
        table, rejects = load_hierarchies(self.source)
        bad = set(rejects["source_row"].to_pylist())
        total = table.num_rows + rejects.num_rows
        return table, rejects, [i for i in range(total) if i not in bad]

    def fingerprint_parts(self) -> dict[str, Any]:
        if not self.source.exists():
            raise InputError(f"{self.source}: file not found")
        return {"source": str(self.source), "source_sha256": shards.sha256_file(self.source)}

    def plan(self) -> list[ShardTask]:
        table, rejects, _ = self.loaded
        total, size = table.num_rows + rejects.num_rows, self.profile.input.rows_per_shard
        return [ShardTask(self.name, i, (str(self.source),), lo, min(lo + size, total)) for i, lo in enumerate(range(0, total, size))]

    def input_rows(self, task: ShardTask) -> int:
        return task.stop - task.start

    def process(self, task: ShardTask) -> ShardOutput:
        table, rejects, source_rows = self.loaded
        keep = [k for k, row in enumerate(source_rows) if task.start <= row < task.stop]
        out = table.take(pa.array(keep, pa.int64())) if keep else schema.empty(schema.HIERARCHIES)
        bad = [r for r in rejects.to_pylist() if task.start <= r["source_row"] < task.stop]
        stats = Stats()
        for r in bad:
            stats.reject(r["reason"])
        self.advance(task.stop - task.start)
        return ShardOutput(out, schema.rejects_table(bad), stats)


def check_report(external: dict, filtered: dict, source: str | Path) -> dict:
    """Accept rate of each check: parsing and structural rules on all rows, each NLI rule on the rows it reaches.

    Kinds: `parse` (4 tiers in the file), `structural` (all structural rules together), `structural rule` (one rule;
    the rules run in order and a row counts under the first it breaks), `nli row` (every pair of that rule in a row
    passes), `nli pair` (the pairs of one tier)."""
    ext, flt = external.get("stats", {}), filtered.get("stats", {})
    rows = int(ext.get("rows_in", 0))
    checks = [_rate("load_4_tiers", "parse", rows, int(ext.get("rows_out", 0)))]
    structural_in = int(flt.get(f"checked:{STRUCTURAL}", 0))
    checks.append(_rate(STRUCTURAL, "structural", structural_in, int(flt.get(f"pass:{STRUCTURAL}", 0))))
    nli_reasons = {reason for _, reason, _ in RULES} | {JOINT[1]}
    for key, count in sorted(flt.items()):
        reason = key.split(":", 1)[1] if key.startswith("reject:") else None
        if reason and reason not in nli_reasons:
            # structural rules run in order; a row is counted under the first one it breaks
            checks.append(_rate(reason, "structural rule", structural_in, structural_in - int(count)))
    for rule, _, _ in RULES:
        if flt.get(f"checked:{rule}"):
            checks.append(_rate(rule, "nli row", int(flt[f"checked:{rule}"]), int(flt.get(f"pass:{rule}", 0))))
            for tier in range(1, schema.TIERS + 1):
                checked = int(flt.get(f"pair_checked:{rule}:t{tier}", 0))
                if checked:
                    checks.append(_rate(f"{rule}:t{tier}", "nli pair", checked, int(flt.get(f"pair_pass:{rule}:t{tier}", 0))))
    if flt.get(f"checked:{JOINT[0]}"):
        checks.append(_rate(JOINT[0], "nli row", int(flt[f"checked:{JOINT[0]}"]), int(flt.get(f"pass:{JOINT[0]}", 0))))
    accepted = int(flt.get("rows_out", 0))
    nli_seconds = float(flt.get("nli_seconds", 0.0))
    return {
        "input": str(source),
        "nli_model": filtered.get("models", {}).get("nli"),
        "nli_description": filtered.get("nli_description"),
        "thresholds": filtered.get("thresholds"),
        "rows": rows,
        "accepted": accepted,
        "accept_rate": accepted / rows if rows else None,
        "nli_pairs": int(flt.get("nli_pairs", 0)),
        "nli_unique_pairs": int(flt.get("nli_unique_pairs", 0)),
        "nli_pairs_per_second": flt.get("nli_unique_pairs", 0) / nli_seconds if nli_seconds else None,
        "checks": checks,
        "reject_reasons": {k.split(":", 1)[1]: int(v) for k, v in sorted({**ext, **flt}.items()) if k.startswith("reject:")},
    }


def _rate(check: str, kind: str, checked: int, passed: int) -> dict:
    return {"check": check, "kind": kind, "checked": checked, "passed": passed, "accept_rate": passed / checked if checked else None}


def accepted_rows(run_dir: str | Path, stage: str = "filter") -> pa.Table:
    paths = shards.output_shards(Path(run_dir) / stage)
    tables = [shards.read_table(p) for p in paths]
    return pa.concat_tables(tables) if tables else schema.empty(schema.FILTERED)
