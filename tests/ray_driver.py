"""Driver of the Ray cluster test, run inside tests/ray_cluster.sh's namespace: `generate` on the cluster, twice.

1. a plain run on the 2-node cluster (2 actors, one per node), its output moved to `generate-ray`;
2. the same again, with the worker node's processes (its raylet and everything under it) killed with SIGKILL as
   soon as an actor on that node holds a shard (mid-shard). The stage must still complete.
Prints one JSON line: the worker node's id, who wrote each shard in each run, and what was killed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import ray

from hierarcaps import pipeline
from hierarcaps.config import load_profile
from hierarcaps.ray_executor import RayExecutor


def worker_node() -> dict:
    return next(n for n in ray.nodes() if n["Alive"] and "hc_worker" in n["Resources"])


def node_processes(node: dict) -> list[psutil.Process]:
    """The node's raylet (found by its socket name) and every process under it: its workers and agents."""
    socket_arg = f"--raylet_socket_name={node['RayletSocketName']}"
    raylet = next(p for p in psutil.process_iter(["cmdline"]) if socket_arg in (p.info["cmdline"] or []))
    return [raylet, *raylet.children(recursive=True)]


def kill_when_held(stage_dir: Path, node: dict, record: dict) -> None:
    """SIGKILL the node's processes once a shard lock names a worker on that node."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for lock in stage_dir.glob("*.lock"):
            try:
                holder = json.loads(lock.read_text() or "{}").get("worker", "")
            except (OSError, json.JSONDecodeError):
                continue
            if node["NodeID"] in holder:
                procs = node_processes(node)
                for proc in procs:
                    os.kill(proc.pid, signal.SIGKILL)
                record.update(killed_pids=len(procs), killed_during=lock.name, holder=holder)
                return
        time.sleep(0.02)


def markers(stage_dir: Path) -> dict[int, str]:
    return {int(p.name[5:10]): json.loads(p.read_text())["worker"] for p in sorted(stage_dir.glob("part-*.done.json"))}


def main() -> None:
    run, port, overrides = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    profile = load_profile("offline", {**overrides, "runner.executor": "ray", "runner.ray.address": f"127.0.0.1:{port}",
                                       "runner.ray.actors": 2})
    result: dict = {}
    with RayExecutor(profile.runner) as executor:
        node = worker_node()
        result["worker_node"] = node["NodeID"]
        result["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
        first = pipeline.run_stage("generate", run, profile, executor=executor)
        result["first"] = {"executor": first["executor"], "writers": markers(run / "generate")}
        (run / "generate").rename(run / "generate-ray")

        killed: dict = {}
        killer = threading.Thread(target=kill_when_held, args=(run / "generate", node, killed), daemon=True)
        killer.start()
        second = pipeline.run_stage("generate", run, profile, executor=executor)
        killer.join(timeout=5)
        result["second"] = {"writers": markers(run / "generate"), "killed": killed,
                            "alive_nodes": len([n for n in ray.nodes() if n["Alive"]]), "rows": second["stats"]}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
