"""Executors side by side: the `generate` stage locally, on 1 and on 2 Ray actors of one thread each; the cost of
checking shards by sha256.

Run it inside the test cluster's private network namespace (2 nodes x 1 CPU on 127.0.0.1), under the exclusive CPU lock:

    flock -x /tmp/hierarcaps-cpu.lock env RAY=.venv/bin/ray bash tests/ray_cluster.sh 6391 \
        .venv/bin/python bench/executors.py --port 6391

Same run directory, same shards, `runner.torch_threads = 1` everywhere; the three outputs must be byte-identical
(checked). "overhead per shard" = (Ray wall - local wall) / shards with one actor: actor start (a new process that
imports torch and loads the student) plus Ray's scheduling and transfer per shard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
from fake_upstream import SCRATCH_T5, coco_rows, write_upstream  # noqa: E402  (real seed/augment shards from shared COCO rows)
from hierarcaps import pipeline, shards  # noqa: E402
from hierarcaps.config import load_profile  # noqa: E402
from hierarcaps.executor import LocalExecutor  # noqa: E402
from hierarcaps.ray_executor import RayExecutor  # noqa: E402

STUDENT = {  # a scratch T5 of the default size, trained briefly: generation cost per row like a real run's
    **SCRATCH_T5,
    "distill.max_steps": 150,
    "distill.checkpoint_every": 150,
    "distill.eval_fraction": 0.0,
    "runner.torch_threads": 1,
}


def prepare(run: Path, captions: int, rows_per_shard: int) -> dict:
    overrides = {**STUDENT, "input.rows_per_shard": rows_per_shard}
    profile = load_profile("offline", overrides)
    rows = coco_rows(0, 48 + captions)
    write_upstream(profile, run, rows.slice(0, 24), rows.slice(24, 24))
    source = run / "captions.parquet"
    pq.write_table(pa.Table.from_pylist([{"caption": c} for c in rows.slice(48)["caption"].to_pylist()]), source)
    pipeline.run_stage("input", run, profile, source=source)
    pipeline.run_stage("distill", run, profile)
    return overrides


def timed_generate(run: Path, profile, executor, keep_as: str) -> dict:
    started = time.perf_counter()
    manifest = pipeline.run_stage("generate", run, profile, executor=executor)
    wall = time.perf_counter() - started
    (run / "generate").rename(run / keep_as)
    return {"wall": wall, "in_shards": manifest["stats"]["seconds"], "rows": manifest["stats"]["rows_in"]}


def stage_bytes(stage_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stage_dir.glob("*.parquet"))}


def verification_cost(run: Path, stage: str) -> dict:
    """A cold `verify_stage` (every file hashed) and a warm one (size + mtime_ns unchanged: no re-hash)."""
    stage_dir = run / stage
    size = sum(p.stat().st_size for p in stage_dir.glob("*.parquet"))
    shards._digests.clear()
    started = time.perf_counter()
    assert shards.verify_stage(stage_dir) == []
    cold = time.perf_counter() - started
    started = time.perf_counter()
    shards.verify_stage(stage_dir)
    warm = time.perf_counter() - started
    with tempfile.NamedTemporaryFile(dir=run) as big:  # hash throughput on a paper-size shard (64 MiB)
        big.write(os.urandom(64 << 20))
        big.flush()
        started = time.perf_counter()
        shards.sha256_file(Path(big.name))
        mib_per_s = 64 / (time.perf_counter() - started)
    return {"files": len(list(stage_dir.glob("*.parquet"))), "bytes": size, "cold_s": cold, "warm_s": warm,
            "sha256_mib_per_s": mib_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the Ray head's port on 127.0.0.1")
    parser.add_argument("--captions", type=int, default=96)
    parser.add_argument("--rows-per-shard", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        run = Path(tmp) / "run"
        overrides = prepare(run, args.captions, args.rows_per_shard)
        local_profile = load_profile("offline", overrides)
        results = {"local": timed_generate(run, local_profile, LocalExecutor(1), "generate-local")}
        for actors in (1, 2):
            profile = load_profile("offline", {**overrides, "runner.executor": "ray", "runner.ray.actors": actors,
                                               "runner.ray.address": f"127.0.0.1:{args.port}"})
            with RayExecutor(profile.runner) as executor:
                results[f"ray x{actors}"] = timed_generate(run, profile, executor, f"generate-ray{actors}")
        reference = stage_bytes(run / "generate-local")
        identical = all(stage_bytes(run / f"generate-ray{a}") == reference for a in (1, 2))
        n_shards = len(reference) // 2
        verify = verification_cost(run, "generate-local")
        per_shard_compute = results["local"]["in_shards"] / n_shards
    figures = {
        "captions": args.captions, "shards": n_shards, "identical_bytes": identical, **results,
        "speedup_2_vs_1_actor": results["ray x1"]["wall"] / results["ray x2"]["wall"],
        "ray_overhead_per_shard_s": (results["ray x1"]["wall"] - results["local"]["wall"]) / n_shards,
        "verify": verify, "verify_cold_per_shard_vs_compute": verify["cold_s"] / n_shards / per_shard_compute,
        "load_average": os.getloadavg()[0],
    }
    print(f"generate, {args.captions} captions in {n_shards} shards, 1 torch thread per worker:")
    for name in ("local", "ray x1", "ray x2"):
        r = results[name]
        print(f"  {name:>7}: {r['wall']:7.1f} s wall, {r['in_shards']:7.1f} s inside shards")
    print(f"  2 actors vs 1: {figures['speedup_2_vs_1_actor']:.2f}x; Ray vs local overhead "
          f"{figures['ray_overhead_per_shard_s']:.2f} s per shard; byte-identical: {identical}")
    print(f"  sha256 verification of {verify['files']} files ({verify['bytes'] / 1e6:.2f} MB): {verify['cold_s'] * 1e3:.1f} ms "
          f"cold, {verify['warm_s'] * 1e3:.2f} ms warm; {verify['sha256_mib_per_s']:.0f} MiB/s; "
          f"cold check per shard = {figures['verify_cold_per_shard_vs_compute']:.2%} of its compute")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not identical:
        sys.exit("the executors wrote different bytes")


if __name__ == "__main__":
    main()
