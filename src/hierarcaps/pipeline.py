"""The build as a list of stages, and `build()`: the one function the CLI and the Prefect flows both call.

Stage classes are imported lazily so that `hierarcaps --help` does not import torch.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

from hierarcaps import shards
from hierarcaps.config import Profile, load_profile
from hierarcaps.stage import Stage

log = logging.getLogger(__name__)

# stage name -> "module:Class"; the order is the build order.
STAGES: dict[str, str] = {
    "input": "hierarcaps.stages.ingest:IngestStage",
    "seed": "hierarcaps.stages.seed:SeedStage",
    "augment": "hierarcaps.stages.augment:AugmentStage",
    "distill": "hierarcaps.stages.distill:DistillStage",
    "generate": "hierarcaps.stages.generate:GenerateStage",
    "filter": "hierarcaps.stages.filter:FilterStage",
}
BUILD_STAGES = tuple(STAGES)


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


def run_stage(
    name: str,
    run_dir: str | Path,
    profile: str | Profile = "offline",
    source: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Run one stage to completion in this process; returns its manifest (with `stats`)."""
    stage = make_stage(name, resolve_profile(profile, overrides), run_dir, source)
    started = time.perf_counter()
    if stage.is_complete():
        manifest = shards.read_manifest(stage.dir)
        manifest["skipped"] = True
        return manifest
    total = stage.total_rows()
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(name, done, total)

    if on_progress:
        on_progress(name, 0, total)
    manifest = stage.run(advance=advance)
    manifest["wall_seconds"] = time.perf_counter() - started
    return manifest


def build(
    input: str | Path,
    out: str | Path,
    profile: str | Profile = "offline",
    overrides: dict[str, Any] | None = None,
    stages: tuple[str, ...] = BUILD_STAGES,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict]:
    """Run the build stages in order; a finished stage with the same fingerprint is skipped."""
    resolved = resolve_profile(profile, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards.atomic_write_json(out / "profile.json", resolved.model_dump(mode="json", by_alias=True))
    manifests = {}
    for name in stages:
        log.info("stage %s", name)
        manifests[name] = run_stage(name, out, resolved, source=input if name == "input" else None, on_progress=on_progress)
    return manifests


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
