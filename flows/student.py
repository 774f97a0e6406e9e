"""Prefect flow for the offline student's shipped start: the same `train_start` that `hierarcaps train-student` calls."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import MissingContextError


@flow(name="train-student", description="Train the offline student's start (SmolLM2-135M + LoRA) on HierarCaps hierarchies.")
def train_student_flow(
    out: str,
    data: str | None = None,
    work: str | None = None,
    steps: int = 480,
    batch_size: int = 16,
    learning_rate: float = 5e-4,
    s2g_repeat: int = 2,
    seed: int = 0,
    threads: int = 2,
) -> dict[str, Any]:
    """`work`: checkpoint folder, so a rerun after a kill resumes there."""
    from hierarcaps.nli.pairs import DEFAULT_DATA
    from hierarcaps.student.train import train_start

    card = train_start(out=Path(out), data=Path(data) if data else DEFAULT_DATA, work=Path(work) if work else None, steps=steps,
                       batch_size=batch_size, learning_rate=learning_rate, s2g_repeat=s2g_repeat, seed=seed, threads=threads)
    try:
        logger = get_run_logger()
    except MissingContextError:  # called as a plain function (flow.fn)
        logger = logging.getLogger(__name__)
    logger.info("trained the student start into %s: eval loss %.3f, %.0f s", out, card["eval_loss"], card["seconds"])
    return card
