"""The whole offline build, end to end, on a few real captions with the real offline models.

Slow-ish (real SmolLM2, MiniLM): it is the test that every stage's rows add up and that a killed build resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hierarcaps import pipeline, shards

pytestmark = pytest.mark.slow

TINY = {
    "input.rows_per_shard": 4,
    "seed.limit": 4,
    "augment.limit": 4,
    "augment.k": 2,
    "distill.max_steps": 200,
    "distill.checkpoint_every": 100,
    # one sample per tier: the test is about every row being accounted for, not about the offline quality settings
    "generate.negative_candidates": 1,
    "generate.positive_tries": 1,
}


def _caption_file(tmp_path: Path, sample_captions: Path, n: int) -> Path:
    path = tmp_path / "captions.parquet"
    pq.write_table(pq.read_table(sample_captions).slice(0, n), path)
    return path


def _check_stage(run_dir: Path, name: str) -> dict:
    manifest = shards.read_manifest(run_dir / name)
    stats = manifest["stats"]
    assert stats["rows_in"] == stats["rows_out"] + stats["rows_rejected"], name
    out = rej = 0
    for entry in manifest["shards"]:
        shards.verify(run_dir / name / entry["name"], entry["sha256"], entry["rows"])
        if entry["kind"] == "part":
            out += entry["rows"]
        else:
            rej += entry["rows"]
    assert (out, rej) == (stats["rows_out"], stats["rows_rejected"]), name
    return manifest


def test_every_stage_accounts_for_every_row(tmp_path, sample_captions):
    source = _caption_file(tmp_path, sample_captions, 10)
    run = tmp_path / "run"
    manifests = pipeline.build(source, run, "offline", TINY)
    assert list(manifests) == list(pipeline.BUILD_STAGES)
    for name in pipeline.BUILD_STAGES:
        _check_stage(run, name)
    assert manifests["input"]["stats"]["rows_in"] == 10
    assert manifests["seed"]["stats"]["rows_in"] == 4
    assert manifests["augment"]["stats"]["rows_in"] == 4
    # generate runs on every accepted input caption; the filter sees every generated row
    assert manifests["generate"]["stats"]["rows_in"] == manifests["input"]["stats"]["rows_out"]
    assert manifests["filter"]["stats"]["rows_in"] == manifests["generate"]["stats"]["rows_out"]
    # whatever the (tiny, weak) student wrote keeps its source caption as tier 4, through generate and filter
    captions = set(pq.read_table(source)["caption"].to_pylist())
    for stage in ("seed", "augment", "generate", "filter"):
        for path in shards.output_shards(run / stage):
            assert all(p[-1] in captions for p in pq.read_table(path)["positive"].to_pylist()), stage
    # a second build is a no-op: every stage is reported as cached
    again = pipeline.build(source, run, "offline", TINY)
    assert all(m.get("skipped") for m in again.values())


def test_killed_build_resumes_without_duplicates(tmp_path, sample_captions):
    source = _caption_file(tmp_path, sample_captions, 12)
    run = tmp_path / "run"
    overrides = {**TINY, "seed.limit": 12, "seed.retries": 0}  # resume is under test, not retries: shards finish sooner
    args = [sys.executable, "-m", "hierarcaps.cli", "build", "-i", str(source), "-o", str(run), "--stages", "input,seed"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first_done = run / "seed" / "part-00000.done.json"
    deadline = time.time() + 400
    while not first_done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert first_done.exists(), "seed never finished its first shard"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    marker_before = first_done.read_text()
    assert not (run / "seed" / shards.MANIFEST).exists(), "killed too late to test resume"

    manifests = pipeline.build(source, run, "offline", overrides, stages=("input", "seed"))
    assert first_done.read_text() == marker_before, "a finished shard was redone"
    _check_stage(run, "seed")
    out = pa.concat_tables([pq.read_table(p) for p in shards.output_shards(run / "seed")])
    rejects = pa.concat_tables([pq.read_table(p) for p in shards.output_shards(run / "seed", "rejects")])
    ids = out["id"].to_pylist() + rejects["id"].to_pylist()
    assert len(ids) == len(set(ids)) == manifests["seed"]["stats"]["rows_in"] == 12
