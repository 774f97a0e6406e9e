"""Prefect flows: one per stage and `build-hierarcaps`, which chains them. Orchestration only.

Each flow takes the CLI's option names (`input`, `out`, `profile`, `set`) and calls hierarcaps.orchestration, which
runs the stage's shards as Prefect tasks. Stages hand each other shard locations (run dir, manifest entries),
never tables. Deployments of these flows are in prefect.yaml; `hierarcaps serve` serves the same ones.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from hierarcaps import orchestration
from hierarcaps.orchestration import Overrides
from hierarcaps.stages import select_stages


def _stage(name: str, out: str, profile: str, set: Overrides, input: str | None = None) -> dict[str, Any]:
    return orchestration.run_stage_flow(name, out=out, profile=profile, overrides=set, source=input)


@flow(name="input", description="Validate the caption file and cut it into parquet shards.")
def input_stage(input: str, out: str, profile: str = "offline", set: Overrides = None) -> dict[str, Any]:
    return _stage("input", out, profile, set, input)


@flow(name="seed", description="LLM-generated seed hierarchies for the first captions.")
def seed(out: str, profile: str = "offline", set: Overrides = None) -> dict[str, Any]:
    return _stage("seed", out, profile, set)


@flow(name="augment", description="Few-shot LLM generation for more captions.")
def augment(out: str, profile: str = "offline", set: Overrides = None) -> dict[str, Any]:
    return _stage("augment", out, profile, set)


@flow(name="distill", description="Train the seq2seq student on the seed + augmented hierarchies.")
def distill(out: str, profile: str = "offline", set: Overrides = None) -> dict[str, Any]:
    return _stage("distill", out, profile, set)


@flow(name="generate", description="Student hierarchies (positive and negative) for every caption.")
def generate(out: str, profile: str = "offline", set: Overrides = None) -> dict[str, Any]:
    return _stage("generate", out, profile, set)


@flow(name="filter", description="Rule checks and NLI filtering of the generated hierarchies.")
def filter_stage(out: str, profile: str = "offline", set: Overrides = None) -> dict[str, Any]:
    return _stage("filter", out, profile, set)


@flow(name="validate", description="Score models on hierarchies (a run dir or the test set); report + plots.")
def validate(
    data: str,
    out: str | None = None,
    model: list[str] | None = None,
    profile: str = "offline",
    set: Overrides = None,
    max_images: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """`data`: a run dir (its filter shards) or the test-set folder; `out`: report folder (default <run>/validate)."""
    return orchestration.run_validate_flow(data, out, model, profile, set, max_images, device)


# Keyed by flow name, which is the stage name (tests check they cover hierarcaps.stages.STAGES).
STAGE_FLOWS = {f.name: f for f in (input_stage, seed, augment, distill, generate, filter_stage)}


@flow(name="build-hierarcaps", description="input -> seed -> augment -> distill -> generate -> filter.")
def build_hierarcaps(
    input: str, out: str, profile: str = "offline", set: Overrides = None, stages: list[str] | str | None = None
) -> dict[str, dict[str, Any]]:
    """Run the build stages in order as sub-flows; a stage finished with the same fingerprint is reused."""
    orchestration.save_resolved_profile(out, profile, set)
    results: dict[str, dict[str, Any]] = {}
    for name in select_stages(stages):
        extra = {"input": input} if name == "input" else {}
        results[name] = STAGE_FLOWS[name](out=out, profile=profile, set=set, **extra)
    orchestration.publish_build_summary(results, out)
    get_run_logger().info("build finished: %s", ", ".join(f"{k} -> {v['dir']}" for k, v in results.items()))
    return results
