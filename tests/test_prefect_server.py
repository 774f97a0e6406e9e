"""End to end on a real Prefect server: the README's steps (docs/prefect.md), then one stage rerun; and N workers on one stage.

Starts `prefect server start` on 127.0.0.1 in a temporary PREFECT_HOME, creates the work pools, deploys prefect.yaml,
starts a process worker and runs `build-hierarcaps/offline` on a few captions with `prefect deployment run --watch`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from hierarcaps import shards

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
BUILD_STAGES = ("input", "seed", "augment", "distill", "generate", "filter")
# Small enough for a 2-core CPU: 6 captions in 2 input shards, 2 seed + 2 augmented captions, a 20-step student.
OVERRIDES = {"input.rows_per_shard": 3, "seed.limit": 2, "augment.limit": 2, "distill.max_steps": 20,
             "distill.checkpoint_every": 10, "generate.negative_candidates": 1, "generate.positive_tries": 1}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(cmd: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    # Own process group (like `(exec prefect worker start ...) &`), so teardown can end it and its flow-run children.
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "HF_HUB_OFFLINE": "1",
    }
    proc = _start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, home / "server.log", home)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail("prefect server did not become healthy:\n" + (home / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield env, home
    _stop(proc)


def _prefect(env: dict, *args: str, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run([PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def _snapshot(run: Path, stages: tuple[str, ...]) -> dict[str, int]:
    """mtime of every manifest, done marker and shard of `stages`: a redone shard rewrites all three."""
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for s in stages for p in sorted((run / s).glob("*.json"))
            + sorted((run / s).glob("*.parquet"))}


@pytest.mark.prefect
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_deploy_build_offline_and_rerun_one_stage(server, sample_captions, tmp_path):
    env, home = server
    captions = tmp_path / "captions.parquet"
    pq.write_table(pq.read_table(sample_captions).slice(0, 6), captions)

    # One process, no pool or worker: `hierarcaps serve` registers the offline deployments and runs them itself.
    served = _start([str(BIN / "hierarcaps"), "serve", "--project-dir", str(ROOT)], env, home / "serve.log", tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "being served" not in (home / "serve.log").read_text():
            assert served.poll() is None and time.monotonic() < deadline, (home / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        quick = {"input": str(captions), "out": str(tmp_path / "served"), "stages": "input"}
        _prefect(env, "deployment", "run", "build-hierarcaps/offline", "--params", json.dumps(quick), "--watch")
        assert shards.read_manifest(tmp_path / "served" / "input")["stats"]["rows_out"] == 6
    finally:
        _stop(served)

    _prefect(env, "work-pool", "create", "hierarcaps-local", "--type", "process")
    # Only the offline deployments: no GPU pool needed (`deploy --all` would fail without one).
    local_only = " ".join(_prefect(env, "--no-prompt", "deploy", "--name", "offline", timeout=300).stdout.split())
    for name in ("build-hierarcaps/offline", "seed/offline", "filter/offline", "validate/offline"):
        assert f"Deployment '{name}' successfully created" in local_only, local_only[-3000:]
    assert "/paper'" not in local_only and "/small'" not in local_only
    _prefect(env, "work-pool", "create", "hierarcaps-gpu", "--type", "docker",
             "--base-job-template", str(ROOT / "docker" / "gpu-pool.json"))
    deployed = _prefect(env, "--no-prompt", "deploy", "--all", timeout=300).stdout
    for name in ("build-hierarcaps/offline", "build-hierarcaps/paper", "filter/offline", "generate/paper"):
        assert f"Deployment '{name}' successfully created" in " ".join(deployed.split()), deployed[-3000:]
    paper = json.loads(_prefect(env, "deployment", "inspect", "generate/paper", "--output", "json").stdout)
    assert paper["work_pool_name"] == "hierarcaps-gpu"
    assert paper["job_variables"]["container_create_kwargs"]["device_requests"][0]["capabilities"] == [["gpu"]]

    # The worker starts outside the repo: the deployments' pull step must take the flow runs there.
    worker = _start([PREFECT, "worker", "start", "--pool", "hierarcaps-local"], env, home / "worker.log", tmp_path)
    try:
        run = tmp_path / "runs" / "demo"
        params = {"input": str(captions), "out": str(run), "set": OVERRIDES}
        started = time.monotonic()
        _prefect(env, "deployment", "run", "build-hierarcaps/offline", "--params", json.dumps(params), "--watch",
                 timeout=1200)
        build_seconds = time.monotonic() - started
        stats = {}
        for stage in BUILD_STAGES:
            manifest = shards.read_manifest(run / stage)
            assert manifest is not None, f"{stage}: no manifest"
            for entry in manifest["shards"]:
                shards.verify(run / stage / entry["name"], entry["sha256"], entry["rows"])
            stats[stage] = {k: manifest["stats"].get(k, 0) for k in ("rows_in", "rows_out", "rows_rejected")}
            assert stats[stage]["rows_in"] == stats[stage]["rows_out"] + stats[stage]["rows_rejected"], stage
        assert stats["input"]["rows_in"] == 6 and len(shards.output_shards(run / "input")) == 2
        assert stats["seed"]["rows_in"] == 2 and stats["augment"]["rows_in"] == 2
        assert stats["generate"]["rows_in"] == stats["input"]["rows_out"]
        assert stats["filter"]["rows_in"] == stats["generate"]["rows_out"]
        print("build stats:", json.dumps(stats))
        # Prefect's overhead: the run's wall time (CLI to Completed) minus the time spent inside the shards.
        compute = sum(shards.read_manifest(run / stage)["stats"].get("seconds", 0.0) for stage in BUILD_STAGES)

        # Rerun one stage with a new filter setting: filter is redone, nothing upstream is touched.
        upstream = _snapshot(run, BUILD_STAGES[:-1])
        filter_before = shards.read_manifest(run / "filter")["fingerprint"]
        rerun = {"out": str(run), "set": {**OVERRIDES, "filter.nli.entail_threshold": 0.9}}
        started = time.monotonic()
        _prefect(env, "deployment", "run", "filter/offline", "--params", json.dumps(rerun), "--watch", timeout=300)
        filter_seconds = time.monotonic() - started
        assert _snapshot(run, BUILD_STAGES[:-1]) == upstream
        assert shards.read_manifest(run / "filter")["fingerprint"] != filter_before
        print(f"build-hierarcaps/offline {build_seconds:.1f} s ({compute:.1f} s in shards, "
              f"{build_seconds - compute:.1f} s Prefect); filter/offline rerun {filter_seconds:.1f} s")
    except Exception:
        print((home / "worker.log").read_text()[-6000:])
        raise
    finally:
        _stop(worker)


# ---------------------------------------------------------------- N workers on one stage

WORKER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import pyarrow as pa
    from hierarcaps import schema
    from hierarcaps.config import load_profile
    from hierarcaps.executor import run_stage
    from hierarcaps.stage import ShardOutput, ShardTask, Stage

    run_dir, go, record = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    written = []

    class SlowStage(Stage):  # stands in for generate: the claim/skip/mark logic is Stage.run_shard's, shared by all
        name = "generate"
        output_schema = pa.schema([("n", pa.int64())])

        def plan(self):
            return [ShardTask(self.name, i, (), 0, 1) for i in range(8)]

        def input_rows(self, task):
            return 1

        def process(self, task):
            written.append(task.index)
            time.sleep(0.3)
            return ShardOutput(pa.table({"n": [task.index]}), schema.rejects_table([]))

    stage = SlowStage(load_profile("offline"), run_dir)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    manifest = run_stage(stage)
    record.write_text(json.dumps({"written": written, "shards": len(manifest["shards"])}))
    """
)


@pytest.mark.prefect
def test_two_workers_on_one_stage_never_write_the_same_shard(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    go, run = tmp_path / "go", tmp_path / "run"
    procs = [
        subprocess.Popen([sys.executable, str(script), str(run), str(go), str(tmp_path / f"w{i}.json")],
                         stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    records = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    first, second = (set(r["written"]) for r in records)
    assert not first & second, "a shard was written by both workers"
    assert first | second == set(range(8))
    assert first and second, "one worker did all the work; the test did not exercise concurrency"
    assert all(len(r["written"]) == len(set(r["written"])) for r in records)
    assert all(r["shards"] == 16 for r in records)  # both end with the full manifest (8 parts + 8 rejects)
