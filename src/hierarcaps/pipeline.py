"""The build as a list of stages, and `build()` / `run_stage()`: the functions the CLI and the Prefect flows call.

Stage classes are imported lazily so that `hierarcaps --help` does not import torch. Where the shards run is the
executor's business (`hierarcaps.executor`: local by default, `runner.executor = "ray"`, Prefect tasks in a flow).
"""

from __future__ import annotations

import importlib
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from hierarcaps import shards
from hierarcaps.config import Profile, load_profile
from hierarcaps.engines.base import NLIModel
from hierarcaps.executor import Executor, make_executor, run_stage as run_stage_on
from hierarcaps.stage import Stage
from hierarcaps.stages import BUILD_STAGES, STAGES, select_stages

__all__ = ["STAGES", "BUILD_STAGES", "select_stages", "stage_class", "make_stage", "resolve_profile", "write_profile",
           "run_stage", "build", "filter_file", "finetune", "score_nli"]

log = logging.getLogger(__name__)
PROFILE_FILE = "profile.json"


def stage_class(name: str) -> type[Stage]:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_stage(name: str, profile: Profile, run_dir: str | Path, source: str | Path | None = None) -> Stage:
    """Build a stage object; `source` (the user's caption file) is needed by `input` only."""
    if name == "input":
        if source is None:
            recorded = (shards.read_manifest(Path(run_dir) / "input") or {}).get("source")
            if recorded is None:
                raise ValueError("stage 'input' needs the caption file (--input)")
            source = recorded
        return stage_class(name)(profile, run_dir, source=source)
    return stage_class(name)(profile, run_dir)


def resolve_profile(profile: str | Profile, overrides: dict[str, Any] | None = None) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile, overrides)


def write_profile(run_dir: str | Path, profile: Profile) -> None:
    """The resolved config of the last build, beside its outputs."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    shards.atomic_write_json(Path(run_dir) / PROFILE_FILE, profile.model_dump(mode="json", by_alias=True))


def run_stage(
    name: str,
    run_dir: str | Path,
    profile: str | Profile = "offline",
    source: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    executor: Executor | None = None,
) -> dict:
    """Run one stage to completion on `executor` (default: the one `runner.executor` names); returns its manifest
    (with `stats`, and `skipped` or `wall_seconds`)."""
    resolved = resolve_profile(profile, overrides)
    stage = make_stage(name, resolved, run_dir, source)
    with nullcontext(executor) if executor is not None else make_executor(resolved.runner) as chosen:
        return run_stage_on(stage, chosen, on_progress)


def build(
    input: str | Path,
    out: str | Path,
    profile: str | Profile = "offline",
    overrides: dict[str, Any] | None = None,
    stages: str | list[str] | tuple[str, ...] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict]:
    """Run the build stages (all, or `stages`, always in build order); a finished stage with the same fingerprint
    is skipped."""
    resolved = resolve_profile(profile, overrides)
    write_profile(out, resolved)
    manifests = {}
    with make_executor(resolved.runner) as executor:
        for name in select_stages(stages):
            log.info("stage %s", name)
            source = input if name == "input" else None
            manifests[name] = run_stage(name, out, resolved, source=source, on_progress=on_progress, executor=executor)
    return manifests


def filter_file(
    input: str | Path,
    out: str | Path,
    profile: str | Profile = "offline",
    overrides: dict[str, Any] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    nli: NLIModel | None = None,
) -> dict:
    """Re-filter an existing HierarCaps file; writes `out/filter/check_report.json` and returns the report
    (plus `manifests`, the two stages' manifests, which the JSON file leaves out)."""
    from hierarcaps.stages.filter import FilterStage
    from hierarcaps.stages.refilter import REPORT, ExternalStage, check_report  # the stages: only when filtering

    resolved = resolve_profile(profile, overrides)
    out = Path(out)
    write_profile(out, resolved)
    with make_executor(resolved.runner) as executor:
        manifests = {"external": run_stage_on(ExternalStage(resolved, out, input), executor, on_progress)}
        manifests["filter"] = run_stage_on(FilterStage(resolved, out, upstream="external", nli=nli), executor, on_progress)
    report = check_report(manifests["external"], manifests["filter"], input)
    shards.atomic_write_json(out / "filter" / REPORT, report)
    return {**report, "manifests": manifests}


def finetune(
    data: str | Path,
    out: str | Path,
    profile: str | Profile = "offline",
    overrides: dict[str, Any] | None = None,
    model: str | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> dict:
    """Radial Embedding fine-tuning of the profile's `finetune.model` (or `model`) on hierarchies; returns the card."""
    from hierarcaps.finetune.train import run_finetune  # torch and the encoders: only when fine-tuning

    cfg = resolve_profile(profile, overrides).finetune
    if model is not None:
        cfg = cfg.model_copy(update={"model": model})
    return run_finetune(data, out, cfg, on_progress=on_progress, on_log=on_log)


def score_nli(input: str | Path, out: str | Path, profile: str | Profile = "offline", overrides: dict[str, Any] | None = None) -> dict:
    """Premise / hypothesis pairs of a file scored by the profile's NLI back-end (`filter.nli`) into parquet."""
    from hierarcaps.score import score_file  # the NLI model: only when scoring

    return score_file(input, out, resolve_profile(profile, overrides).filter.nli)
