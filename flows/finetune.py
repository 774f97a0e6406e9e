"""Prefect flow for Radial Embedding fine-tuning: the same `pipeline.finetune` that `hierarcaps finetune` calls."""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError

from hierarcaps.orchestration import Overrides, normalize_overrides


@flow(name="finetune", description="Fine-tune a text encoder on hierarchies with the HierarCaps RE objective.")
def finetune(data: str, out: str, model: str | None = None, profile: str = "offline", set: Overrides = None) -> dict[str, Any]:
    """`data`: a run dir, a release folder or a HierarCaps CSV; `out`: model folder (a rerun resumes from checkpoints)."""
    from hierarcaps import pipeline

    try:
        logger = get_run_logger()
    except MissingContextError:  # called as a plain function (flow.fn)
        logger = logging.getLogger(__name__)

    def on_log(entry: dict) -> None:
        logger.info("step %d: %s", entry["step"], ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k != "step"))

    card = pipeline.finetune(data, out, profile=profile, overrides=normalize_overrides(set), model=model, on_log=on_log)
    if FlowRunContext.get() is not None:
        create_table_artifact(key="finetune-losses", table=card["losses"]["history"], description=f"hierarcaps finetune {out}")
    logger.info("fine-tuned %s into %s (%d steps)", card["base_model"], out, card["steps"]["total"])
    return card
