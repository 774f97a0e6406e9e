"""The Ray executor on a real two-node Ray cluster (tests/ray_cluster.sh, in private network and PID namespaces).

`generate` with a tiny distilled student runs locally and on the cluster: the shards are byte-identical. Then the
worker node's processes are killed with SIGKILL while it holds a shard: the stage completes on the other node with
the same bytes, no row lost or duplicated and no lock left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fake_upstream import COCO_AUTO, coco_rows, write_upstream
from hierarcaps import pipeline, shards
from hierarcaps.config import load_profile
from test_distill import TINY as TINY_STUDENT

ROOT = Path(__file__).resolve().parent
RAY = Path(sys.executable).parent / "ray"
PORT = 6390  # the namespace has its own ports: nothing else can hold this one


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"]  # what ray_cluster.sh runs in
    return subprocess.run(probe, capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the [ray] extra"),
    pytest.mark.skipif(not _namespaces_work(), reason="needs `unshare` (private network and PID namespaces)"),
    pytest.mark.skipif(not COCO_AUTO.exists(), reason="../shared/data is not beside this checkout"),
]

# test_distill's tiny scratch T5, trained a little longer; what it writes does not matter here, only that the bytes
# are reproducible.
TINY = {
    **TINY_STUDENT,
    "distill.max_steps": 40,
    "distill.checkpoint_every": 40,
    "distill.eval_fraction": 0.0,
    "input.rows_per_shard": 3,
    "generate.max_new_tokens": 24,
    "runner.torch_threads": 1,  # the same thread count locally and in every actor: the same floats
}


def _stage_bytes(stage_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stage_dir.glob("*.parquet"))}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """input (24 captions in 8 shards) -> fake seed/augment -> a tiny student; then `generate` locally, kept aside."""
    run = tmp_path_factory.mktemp("ray-run")
    profile = load_profile("offline", TINY)
    rows = coco_rows(200, 224)
    write_upstream(profile, run, rows.slice(0, 8), rows.slice(8, 8))
    captions = run.parent / f"{run.name}-captions.parquet"
    pq.write_table(pa.Table.from_pylist([{"caption": c} for c in rows["caption"].to_pylist()]), captions)
    pipeline.run_stage("input", run, profile, source=captions)
    pipeline.run_stage("distill", run, profile)
    local = pipeline.run_stage("generate", run, profile)
    assert local["executor"] == "local"
    (run / "generate").rename(run / "generate-local")
    return run


def test_generate_on_a_two_node_ray_cluster_matches_local_and_survives_a_killed_node(run, tmp_path):
    log = tmp_path / "ray.log"
    cmd = ["bash", str(ROOT / "ray_cluster.sh"), str(PORT),
           sys.executable, str(ROOT / "ray_driver.py"), str(run), str(PORT), json.dumps(TINY)]
    # on a timeout the script is killed and its PID namespace with it: no Ray is left behind
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "RAY": str(RAY), "RAY_LOG": str(log)})
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n{log.read_text()[-3000:] if log.exists() else ''}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))
    assert result["nodes"] == 2

    local = _stage_bytes(run / "generate-local")
    assert len(local) == 16  # 8 part + 8 rejects shards
    # 1. the same bytes from the cluster, written by actors on both nodes; the manifest names the executor
    assert _stage_bytes(run / "generate-ray") == local
    first = result["first"]
    assert first["executor"] == "ray" and sorted(map(int, first["writers"])) == list(range(8))
    assert all(w.startswith("ray:") for w in first["writers"].values())
    nodes = {w.split("@")[0] for w in first["writers"].values()}
    assert len(nodes) == 2, f"one node did every shard: {first['writers']}"

    # 2. a node killed mid-shard: the stage completed on the other, every row once, the same bytes, no lock left
    second = result["second"]
    assert second["killed"].get("killed_pids", 0) >= 2, second
    assert result["worker_node"] in second["killed"]["holder"]
    assert second["alive_nodes"] == 1
    killed_shard = int(second["killed"]["killed_during"][5:10])
    assert result["worker_node"] not in second["writers"][str(killed_shard)], "the killed node's shard was not redone"
    assert _stage_bytes(run / "generate") == local
    assert not list((run / "generate").glob("*.lock")) and not list((run / "generate").glob(".tmp-*"))
    manifest = shards.read_manifest(run / "generate")
    stats = manifest["stats"]
    assert stats["rows_in"] == 24 == stats["rows_out"] + stats["rows_rejected"]
    ids = [r for p in run.joinpath("generate").glob("*.parquet") for r in pq.read_table(p, columns=["id"])["id"].to_pylist()]
    assert len(ids) == len(set(ids)) == 24
    assert shards.verify_stage(run / "generate") == []
