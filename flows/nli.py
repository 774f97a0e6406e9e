"""Prefect flow for the offline NLI models: `train_nli_model`, whose arguments are also `hierarcaps train-nli`'s options;
the flow's parameters and defaults are read from its signature (options.py)."""

from __future__ import annotations

from hierarcaps.nli.command import train_nli_model
from hierarcaps.options import prefect_flow

train_nli_flow = prefect_flow(
    train_nli_model, "train-nli", "Train an offline NLI model: the minilm-nli cross-encoder (default) or the minilm-head stand-in.",
    lambda card: f"trained the {card.get('name', 'NLI')} model (weights sha256 {str(card.get('weights_sha256'))[:16]}...)",
)
