"""Prefect flow for the offline NLI stand-in: the same `train_nli` that `hierarcaps train-nli` calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import logging

from prefect import flow, get_run_logger
from prefect.exceptions import MissingContextError


@flow(name="train-nli", description="Train the MiniLM-head NLI stand-in (not MNLI) from HierarCaps hierarchies.")
def train_nli_flow(out: str, data: str | None = None, seed: int = 0, max_hierarchies: int | None = None) -> dict[str, Any]:
    from hierarcaps.nli import pairs
    from hierarcaps.nli.train import train_nli

    card = train_nli(data=Path(data) if data else pairs.DEFAULT_DATA, out=Path(out), seed=seed, max_hierarchies=max_hierarchies)
    try:
        logger = get_run_logger()
    except MissingContextError:  # called as a plain function (flow.fn)
        logger = logging.getLogger(__name__)
    logger.info("trained the NLI stand-in into %s (a small distilled model, not MNLI)", out)
    return card
