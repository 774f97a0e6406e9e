"""Prefect flow for the offline NLI models: the same training functions that `hierarcaps train-nli` calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import logging

from prefect import flow, get_run_logger
from prefect.exceptions import MissingContextError


@flow(name="train-nli", description="Train an offline NLI model: the minilm-nli cross-encoder (default) or the minilm-head stand-in.")
def train_nli_flow(out: str, backend: str = "minilm-nli", data: str | None = None, nli_data: str | None = None, seed: int = 0,
                   epochs: int | None = None, threads: int = 2, max_hierarchies: int | None = None) -> dict[str, Any]:
    from hierarcaps.nli import pairs

    hierarchies = Path(data) if data else pairs.DEFAULT_DATA
    if backend == "minilm-nli":
        from hierarcaps.nli.cross_train import DEFAULTS, train_minilm_nli
        from hierarcaps.nli.human import DEFAULT_DIR

        card = train_minilm_nli(out=Path(out), nli_dir=Path(nli_data) if nli_data else DEFAULT_DIR, hierarchies=hierarchies,
                                seed=seed, epochs=epochs or DEFAULTS["epochs"], threads=threads)
    elif backend == "minilm-head":
        from hierarcaps.nli.train import train_nli

        card = train_nli(data=hierarchies, out=Path(out), seed=seed, max_hierarchies=max_hierarchies, epochs=epochs or 12)
    else:
        raise ValueError(f"backend {backend!r}: use minilm-nli or minilm-head")
    try:
        logger = get_run_logger()
    except MissingContextError:  # called as a plain function (flow.fn)
        logger = logging.getLogger(__name__)
    logger.info("trained the %s NLI model into %s", backend, out)
    return card
