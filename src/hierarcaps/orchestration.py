"""Prefect glue for the stages: the `prefect` executor (one Prefect task per shard, a content-addressed cache key,
the task runner from config), the flow bodies, and `hierarcaps serve`.

`flows/` holds only thin `@flow` wrappers that call `run_stage_flow` (one stage), `run_validate_flow` and, for the
build, `save_resolved_profile` / `publish_build_summary`. A stage flow runs the loop the CLI runs
(`executor.run_stage`) with `PrefectExecutor`, or with the Ray executor when `runner.executor = "ray"`.

Caching, two layers:
- each shard writes a done marker (hierarcaps.shards) that a rerun with the same stage fingerprint skips;
- the Prefect task caches its marker under `shard_cache_key` = sha256(stage fingerprint + shard task + sha256 of every
  input file). The fingerprint covers the stage config, prompt hashes, upstream manifests and the code version, so the
  key changes when any of those or the input bytes change, and never because of the run id (Prefect's default).
A cached marker is only trusted while the shard's files are on disk: a shard that is not done on disk is submitted
with `refresh_cache=True`, so deleting a shard redoes it instead of returning a stale marker.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.filesystems import LocalFileSystem
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from hierarcaps import pipeline, shards, summary
from hierarcaps.config import Profile, RunnerConfig, parse_override
from hierarcaps.executor import Executor, make_executor, remember_stage, run_stage, stage_from_spec
from hierarcaps.inputs import is_hub_source
from hierarcaps.stage import ShardTask, Stage, StageError

RESULTS_DIR = ".prefect-results"  # persisted task results live in the run dir, shared by every worker that sees it

Overrides = dict[str, Any] | list[str] | None


def normalize_overrides(overrides: Overrides) -> dict[str, Any]:
    """Flow parameter `set`: {"seed.limit": 2} or ["seed.limit=2"] (the CLI's --set form)."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    return dict(parse_override(item) for item in overrides)


# ---------------------------------------------------------------- the shard task and its cache key

def shard_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of one shard: stage fingerprint + the task (index, row range) + its input files' sha256."""
    shard = parameters["task"]
    parts = {
        "stage": parameters["spec"]["stage"],
        "fingerprint": parameters["fingerprint"],
        "task": {k: shard[k] for k in ("index", "start", "stop")},
        # an `hf:` dataset is no local file: the input stage's fingerprint already records it
        "inputs": [shards.sha256_text(p) if is_hub_source(p) else shards.sha256_cached(Path(p)) for p in shard["inputs"]],
    }
    return f"hierarcaps-{parts['stage']}-{shard['index']:05d}-" + shards.sha256_text(json.dumps(parts, sort_keys=True))


@task(
    name="run-shard",
    task_run_name="{spec[stage]}-shard-{task[index]}",
    cache_key_fn=shard_cache_key,
    persist_result=True,
    result_serializer="json",  # the result is the shard's done marker: JSON, never pickle
)
def run_shard_task(spec: dict[str, Any], task: dict[str, Any], fingerprint: str) -> dict | None:
    """Process one shard (skipped if done); its done marker, or None while another worker holds the shard."""
    stage = stage_from_spec(spec)
    if stage.fingerprint() != fingerprint:
        raise StageError(f"{stage.name}: config or upstream changed while the flow ran; rerun the stage")
    marker = stage.run_shard(task)
    logger = get_run_logger()
    if marker is None:
        logger.info("%s shard %d is held by another worker", stage.name, task["index"])
    else:
        stats = marker["stats"]
        logger.info("%s shard %d: %d in, %d out, %d rejected", stage.name, task["index"], stats.get("rows_in", 0),
                    stats.get("rows_out", 0), stats.get("rows_rejected", 0))
    return marker


def task_runner_for(cfg: RunnerConfig) -> TaskRunner:
    """The task runner named by `profile.runner.task_runner` (a cluster is `runner.executor = "ray"` instead)."""
    workers = max(1, cfg.max_workers)
    if cfg.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    return ThreadPoolTaskRunner(max_workers=workers)


# ---------------------------------------------------------------- flow bodies


def stage_result(stage: Stage, manifest: dict) -> dict[str, Any]:
    """What a stage flow hands to the next one: where its shards are, never the tables."""
    result = {
        "stage": stage.name,
        "dir": str(stage.dir),
        "manifest": str(stage.dir / shards.MANIFEST),
        "fingerprint": manifest["fingerprint"],
        "shards": [s for s in manifest["shards"] if s["kind"] == "part"],
        "stats": manifest.get("stats", {}),
        "skipped": bool(manifest.get("skipped")),
    }
    if "wall_seconds" in manifest:  # absent when the stage was reused: the summary then shows its recorded time
        result["wall_seconds"] = manifest["wall_seconds"]
    return result


def result_storage(run_dir: Path) -> LocalFileSystem:
    """Persisted task results (the cache) in the run dir, so every worker sharing the run dir shares the cache.

    Prefect needs the storage block saved server-side; one block per run dir, named by its path's hash."""
    basepath = str((run_dir / RESULTS_DIR).resolve())
    storage = LocalFileSystem(basepath=basepath)
    storage.save(f"hierarcaps-results-{shards.sha256_text(basepath)[:16]}", overwrite=True)
    return storage


class PrefectExecutor(Executor):
    """Every shard as one Prefect task (`run-shard`) on the task runner of `runner.task_runner`, inside a flow run.

    A shard already done on disk is submitted with the cache allowed, so the run shows it as `Cached`; any other
    shard with `refresh_cache=True`, so a deleted or damaged shard is redone instead of served from the cache."""

    name = "prefect"

    def run_shards(self, stage: Stage, tasks: list[ShardTask]) -> list[dict | None]:
        cfg = stage.profile.runner
        spec = remember_stage(stage)
        fingerprint = stage.fingerprint()
        base = run_shard_task.with_options(retries=cfg.retries, retry_delay_seconds=cfg.retry_delay_seconds,
                                           result_storage=result_storage(stage.run_dir))
        fresh = base.with_options(refresh_cache=True)
        with task_runner_for(cfg) as runner:
            futures = []
            for shard in tasks:
                done = shards.shard_is_done(stage.dir, shard.index, fingerprint)
                params = {"spec": spec, "task": shard.to_dict(), "fingerprint": fingerprint}
                futures.append(runner.submit(base if done else fresh, params))
            return [future.result() for future in futures]


def publish_summary(key: str, manifests: dict[str, dict], run_dir: str | Path, title: str) -> str:
    """The CLI's summary table (rows/s, yield, reject reasons) as a Prefect markdown artifact; returns the markdown."""
    markdown = f"### {title}\n\n" + summary.to_markdown(summary.summary_rows(manifests, run_dir))
    create_markdown_artifact(key=key, markdown=markdown, description=title)
    return markdown


def stage_logs_at_info() -> None:
    """Let the stages' INFO logs through: PREFECT_LOGGING_EXTRA_LOGGERS=hierarcaps (set in prefect.yaml) only adds
    Prefect's handlers to the `hierarcaps` logger, whose level otherwise falls back to the root's WARNING."""
    stage_logger = logging.getLogger("hierarcaps")
    if stage_logger.level == logging.NOTSET:
        stage_logger.setLevel(logging.INFO)


def flow_executor(runner: RunnerConfig) -> Executor:
    """Inside a flow, `runner.executor = "local"` means one Prefect task per shard; `ray` is the Ray actor pool."""
    return make_executor(runner) if runner.executor == "ray" else PrefectExecutor()


def run_stage_flow(name: str, out: str, profile: str, overrides: Overrides, source: str | None = None) -> dict[str, Any]:
    """Body of a stage flow: the stage's shards on the flow's executor, then the summary artifact."""
    stage_logs_at_info()
    logger = get_run_logger()
    resolved = pipeline.resolve_profile(profile, normalize_overrides(overrides))
    stage = pipeline.make_stage(name, resolved, out, source)
    executor = flow_executor(resolved.runner)
    logger.info("%s -> %s (executor: %s)", name, stage.dir, executor.name)
    with executor:
        manifest = run_stage(stage, executor)
    if manifest.get("skipped"):
        logger.info("%s: complete for this config (%s); reused its shards", name, stage.dir)
    publish_summary(f"{name}-summary", {name: manifest}, out, f"hierarcaps stage {name}")
    result = stage_result(stage, manifest)
    logger.info("%s: %d rows in, %d out -> %d shard(s) in %s", name, result["stats"].get("rows_in", 0),
                result["stats"].get("rows_out", 0), len(result["shards"]), result["dir"])
    return result


def save_resolved_profile(out: str, profile: str, overrides: Overrides) -> Profile:
    """Write `profile.json` beside the outputs, as `pipeline.build` does."""
    resolved = pipeline.resolve_profile(profile, normalize_overrides(overrides))
    pipeline.write_profile(out, resolved)
    return resolved


def publish_build_summary(results: dict[str, dict[str, Any]], out: str) -> str:
    """One table for the whole build (the stage results carry the same stats and timings as the manifests)."""
    return publish_summary("build-hierarcaps-summary", results, out, "hierarcaps build")


def run_validate_flow(
    data: str, out: str | None, models: list[str] | None, profile: str, overrides: Overrides, max_images: int | None,
    device: str,
) -> dict[str, Any]:
    """Body of the `validate` flow: hierarcaps.eval.validate.validate, its report.md published as an artifact."""
    from hierarcaps.eval.validate import validate  # imported here: it pulls in torch and the encoders

    report = validate(data, Path(out) if out else None, profile=profile, overrides=normalize_overrides(overrides),
                      models=models, device=device, max_images=max_images)
    create_markdown_artifact(key="validate-report", markdown=_report_markdown(report), description="hierarcaps validate")
    get_run_logger().info("validate %s: %d model(s) scored in %.0f s", data, len(report.get("models", {})),
                          report.get("seconds", 0))
    return {k: v for k, v in report.items() if k != "markdown"}


def _report_markdown(report: Any) -> str:
    if isinstance(report, dict) and isinstance(report.get("markdown"), str):
        return report["markdown"]
    return "### hierarcaps validate\n\n```json\n" + json.dumps(report, indent=2, default=str) + "\n```\n"


# ---------------------------------------------------------------- `hierarcaps serve`: prefect.yaml's deployments in one process


def project_deployments(project_dir: str | Path) -> list[dict[str, Any]]:
    """The deployments listed in `prefect.yaml`, YAML anchors resolved."""
    import yaml

    path = Path(project_dir) / "prefect.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prefect.yaml; pass the hierarcaps repository (--project-dir)")
    spec = yaml.safe_load(path.read_text()) or {}
    deployments = spec.get("deployments") or []
    if not deployments:
        raise ValueError(f"{path}: no deployments")
    return deployments


def served_deployments(project_dir: str | Path, name: str = "offline") -> list:
    """RunnerDeployments of every prefect.yaml deployment called `name` (e.g. offline), for `prefect.serve`."""
    from prefect.flows import load_flow_from_entrypoint

    root = Path(project_dir).resolve()
    chosen = [d for d in project_deployments(root) if d["name"] == name]
    if not chosen:
        raise ValueError(f"{root / 'prefect.yaml'}: no deployment named {name!r}")
    out = []
    for dep in chosen:
        file, func = dep["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{root / file}:{func}")
        out.append(flow.to_deployment(name=name, parameters=dep.get("parameters") or {}, description=dep.get("description")))
    return out


def serve(project_dir: str | Path, name: str = "offline") -> None:
    """Serve the deployments called `name` from this process (no work pool or worker needed); blocks."""
    from prefect import serve as prefect_serve

    prefect_serve(*served_deployments(project_dir, name))
