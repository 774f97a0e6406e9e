"""The shared stage machinery: atomic shards, accounting, resume after a crash, fingerprints, shard claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from hierarcaps import pipeline, shards
from hierarcaps.config import load_profile
from hierarcaps.stage import ShardOutput, Stage, StageError, plan_row_range, read_task_rows
from hierarcaps.stats import Stats
from hierarcaps.executor import run_stage


def _profile(**overrides):
    return load_profile("offline", {"input.rows_per_shard": 10, **overrides})


def _ingest(run_dir, source, **overrides):
    return pipeline.run_stage("input", run_dir, _profile(**overrides), source=source)


def test_input_stage_accounting_and_manifest(tmp_path, sample_captions):
    manifest = _ingest(tmp_path, sample_captions)
    stats = manifest["stats"]
    assert stats["rows_in"] == 300 == stats["rows_out"] + stats["rows_rejected"]
    parts = [s for s in manifest["shards"] if s["kind"] == "part"]
    assert [s["name"] for s in parts] == [f"part-{i:05d}.parquet" for i in range(30)]
    for entry in manifest["shards"]:
        shards.verify(tmp_path / "input" / entry["name"], entry["sha256"], entry["rows"])
    assert not list((tmp_path / "input").glob(".tmp-*")) and not list((tmp_path / "input").glob("*.lock"))


def test_rerun_is_a_noop_and_config_change_redoes(tmp_path, sample_captions):
    first = _ingest(tmp_path, sample_captions)
    again = _ingest(tmp_path, sample_captions)
    assert again.get("skipped") and again["fingerprint"] == first["fingerprint"]
    changed = _ingest(tmp_path, sample_captions, **{"input.max_caption_chars": 30})
    assert changed["fingerprint"] != first["fingerprint"]
    assert changed["stats"]["rows_rejected"] > 0
    assert changed["stats"]["rows_in"] == changed["stats"]["rows_out"] + changed["stats"]["rows_rejected"]


class _Upper(Stage):
    """A minimal downstream stage; crashes on one shard when asked, like a killed worker."""

    name = "upper"
    upstream = ("input",)
    from hierarcaps.schema import CAPTIONS as output_schema

    crash_on: int | None = None
    processed: list[int] = []

    @property
    def cfg(self):
        return self.profile.input

    def plan(self):
        return plan_row_range(self.name, self.run_dir / "input", 0, None)

    def process(self, task):
        if task.index == self.crash_on:
            raise KeyboardInterrupt("killed")
        type(self).processed.append(task.index)
        rows = read_task_rows(task)
        return ShardOutput(rows, shards.read_table(self.run_dir / "input" / "rejects-00000.parquet").slice(0, 0), Stats())


def test_crash_mid_stage_resumes_without_redoing_or_losing(tmp_path, sample_captions):
    _ingest(tmp_path, sample_captions)
    stage = _Upper(_profile(), tmp_path)
    _Upper.crash_on, _Upper.processed = 3, []
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage)
    assert _Upper.processed == [0, 1, 2]
    assert not (tmp_path / "upper" / "part-00003.parquet").exists()
    assert not (tmp_path / "upper" / shards.MANIFEST).exists()
    _Upper.crash_on, _Upper.processed = None, []
    manifest = run_stage(_Upper(_profile(), tmp_path))
    assert _Upper.processed == list(range(3, 30))
    rows = sum(pq.ParquetFile(tmp_path / "upper" / s["name"]).metadata.num_rows for s in manifest["shards"] if s["kind"] == "part")
    assert rows == 300 == manifest["stats"]["rows_in"]


def test_stage_refuses_to_lose_rows(tmp_path, sample_captions):
    _ingest(tmp_path, sample_captions)

    class Lossy(_Upper):
        def process(self, task):
            out = super().process(task)
            return ShardOutput(out.out.slice(1), out.rejects, out.stats)

    Lossy.crash_on, Lossy.processed = None, []
    with pytest.raises(StageError, match="loses rows"):
        run_stage(Lossy(_profile(), tmp_path))
    assert not (tmp_path / "upper" / "part-00000.parquet").exists()


def test_missing_upstream_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="run stage 'input'"):
        _Upper(_profile(), tmp_path).fingerprint()


def test_changed_shard_on_disk_is_not_trusted(tmp_path, sample_captions):
    _ingest(tmp_path, sample_captions)
    (tmp_path / "input" / "part-00002.parquet").unlink()
    stage = pipeline.make_stage("input", _profile(), tmp_path, sample_captions)
    assert not shards.shard_is_done(stage.dir, 2, stage.fingerprint())
    assert shards.shard_is_done(stage.dir, 1, stage.fingerprint())


def test_claims_are_exclusive_and_dead_owners_are_taken_over(tmp_path):
    stage_dir = tmp_path / "s"
    assert shards.claim(stage_dir, 0)
    lock = stage_dir / "part-00000.lock"
    # a live process on this host that is not us holds shard 1
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock1 = stage_dir / "part-00001.lock"
        lock1.write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        assert not shards.claim(stage_dir, 1)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert shards.claim(stage_dir, 1)  # its owner is dead now: stale lock taken over
    shards.release(stage_dir, 0)
    assert not lock.exists()


def test_write_table_is_atomic_on_failure(tmp_path, monkeypatch):
    import pyarrow as pa

    target = tmp_path / "part-00000.parquet"
    shards.write_table(pa.table({"a": [1]}), target)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        shards.write_table(pa.table({"a": [2]}), target)
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".tmp-*"))


def test_checks_reject_format_leaks_but_not_times_of_day():
    from hierarcaps.checks import check_hierarchy
    from hierarcaps.config import ChecksConfig

    positive = ["clock", "a tower clock", "a tower clock showing 4:30", "A tower clock showing 4:30 in the afternoon."]
    assert check_hierarchy(positive, None, positive[-1], ChecksConfig()) is None
    negative = ["watch", "a tower clock at night", "a tower clock 4: a tower clock at night", "A wall clock in a kitchen."]
    assert check_hierarchy(positive, negative, positive[-1], ChecksConfig())[0] == "negative_format_leak"
    leaked = [*positive[:2], "a tower clock => a clock", positive[3]]
    assert check_hierarchy(leaked, None, None, ChecksConfig())[0] == "positive_format_leak"
