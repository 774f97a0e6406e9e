"""Real upstream stage outputs for the distill/generate tests, without running an LLM.

`FakeSeed` / `FakeAugment` are genuine `Stage` subclasses named "seed" / "augment": they write part/rejects shards,
done markers and a manifest through the same machinery as the real stages, from rows of the shared HierarCaps COCO
CSV. So the fixtures downstream stages read are exactly what real upstream stages leave behind.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pyarrow as pa

from hierarcaps import schema
from hierarcaps.inputs import load_hierarchies
from hierarcaps.stage import ShardOutput, ShardTask, Stage
from hierarcaps.executor import run_stage

# The offline profile's student is SmolLM2 + the shipped LoRA adapter; tests of the stage machinery train a scratch T5
# of a few thousand parameters instead (the LoRA student has its own tests in test_student.py).
SCRATCH_T5 = {
    "distill.student.kind": "seq2seq",
    "distill.student.threads": None,
    "distill.epochs": None,
    "distill.batch_size": 32,
    "distill.learning_rate": 1e-3,
    "distill.max_source_len": 64,
    "distill.directions": ["s2g", "g2s", "neg"],
    "distill.s2g_repeat": 4,
}

COCO_AUTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hierarcaps_coco_auto" / "hierarcaps_coco_auto.csv.gz"


@lru_cache(maxsize=1)
def _coco() -> pa.Table:
    table, rejects = load_hierarchies(COCO_AUTO)
    assert rejects.num_rows == 0
    return table


def coco_rows(start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of the shared COCO hierarchies, as schema.HIERARCHIES (source = the fake stage's name)."""
    return _coco().slice(start, stop - start)


class _FakeHierarchyStage(Stage):
    output_schema = schema.HIERARCHIES

    def __init__(self, profile, run_dir, rows: pa.Table):
        super().__init__(profile, run_dir)
        self.rows = rows

    def fingerprint_parts(self) -> dict:
        return {"rows": self.rows.num_rows, "first": self.rows["id"][0].as_py() if self.rows.num_rows else None}

    def plan(self) -> list[ShardTask]:
        return [ShardTask(self.name, 0, ())]

    def input_rows(self, task: ShardTask) -> int:
        return self.rows.num_rows

    def process(self, task: ShardTask) -> ShardOutput:
        source = pa.array([self.name] * self.rows.num_rows, pa.string())
        out = self.rows.set_column(self.rows.schema.get_field_index("source"), "source", source)
        return ShardOutput(out, schema.rejects_table([]))


class FakeSeed(_FakeHierarchyStage):
    name = "seed"


class FakeAugment(_FakeHierarchyStage):
    name = "augment"


def write_upstream(profile, run_dir: Path, seed_rows: pa.Table, augment_rows: pa.Table) -> None:
    run_stage(FakeSeed(profile, run_dir, seed_rows))
    run_stage(FakeAugment(profile, run_dir, augment_rows))
