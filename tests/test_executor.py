"""The one loop and its executors: where shards run changes nothing about what is written."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

from typer.testing import CliRunner

from hierarcaps import pipeline, shards
from hierarcaps.cli import app
from hierarcaps.config import load_profile
from hierarcaps.executor import Executor, LocalExecutor, make_executor, run_stage


class ThreadExecutor(Executor):
    """Shards on a thread pool, reported as they come back (the way the Ray executor reports)."""

    name = "threads"

    def run_shards(self, stage, tasks):
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(stage.run_shard, tasks))


def _profile(**overrides):
    return load_profile("offline", {"input.rows_per_shard": 50, **overrides})


def test_another_executor_writes_the_same_shards_and_reports_every_row(tmp_path, sample_captions):
    local = pipeline.run_stage("input", tmp_path / "a", _profile(), source=sample_captions, executor=LocalExecutor())
    seen = []
    stage = pipeline.make_stage("input", _profile(), tmp_path / "b", sample_captions)
    threaded = run_stage(stage, ThreadExecutor(), on_progress=lambda name, done, total: seen.append((done, total)))
    assert threaded["executor"] == "threads" and local["executor"] == "local"
    assert [s["sha256"] for s in threaded["shards"]] == [s["sha256"] for s in local["shards"]]
    assert seen[0] == (0, 300) and seen[-1] == (300, 300)
    assert run_stage(stage, ThreadExecutor())["skipped"]


def test_executor_comes_from_the_runner_config_and_the_cli_flags():
    assert make_executor(_profile().runner).name == "local"
    ray_cfg = _profile(**{"runner.executor": "ray", "runner.ray.address": "10.0.0.1:6379"}).runner
    executor = make_executor(ray_cfg)  # nothing is imported or connected before it is entered
    assert executor.name == "ray" and executor.cfg.ray.address == "10.0.0.1:6379"
    from hierarcaps.cli import _overrides

    assert _overrides(["seed.limit=2"], "ray", "h:1") == {"seed.limit": 2, "runner.executor": "ray", "runner.ray.address": "h:1"}
    bad = CliRunner().invoke(app, ["stage", "input", "-o", "/tmp/none", "--executor", "slurm"])
    assert bad.exit_code == 1 and "executor" in bad.output


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, sample_captions):
    stage = pipeline.make_stage("input", _profile(), tmp_path, sample_captions)
    stage.dir.mkdir(parents=True)
    lock = {"pid": 999999999, "host": socket.gethostname(), "worker": "gone"}
    (stage.dir / "part-00002.lock").write_text(json.dumps(lock))
    manifest = run_stage(stage, LocalExecutor(), poll=0.01)
    assert len([s for s in manifest["shards"] if s["kind"] == "part"]) == 6
    assert not list(stage.dir.glob("*.lock")) and shards.verify_stage(stage.dir) == []
