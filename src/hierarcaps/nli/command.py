"""`hierarcaps train-nli` and the `train-nli` flow: one function, whose annotated arguments are the command's options and
the flow's parameters (options.py), dispatching to the chosen backend's trainer. Defaults left None are the trainer's own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from hierarcaps.nli import human, pairs
from hierarcaps.nli.cross_train import DEFAULTS
from hierarcaps.options import Opt

BACKENDS = ("minilm-nli", "minilm-head")


def train_nli_model(
    out: Annotated[Path, Opt("artifact folder (model.safetensors + card.json)", ("--out", "-o"))],
    backend: Annotated[str, Opt("minilm-nli (the offline default) | minilm-head (the earlier stand-in)")] = BACKENDS[0],
    data: Annotated[Path, Opt("hierarcaps_coco_auto CSV (positive,negative,image_url)", ("--data", "-d"))] = pairs.DEFAULT_DATA,
    nli_data: Annotated[Path, Opt("minilm-nli: folder of human-labelled NLI files")] = human.DEFAULT_DIR,
    seed: Annotated[int, Opt("seeds pair sampling, init and shuffling")] = DEFAULTS["seed"],
    epochs: Annotated[int | None, Opt("passes over the training pairs (default: the backend trainer's own)")] = None,
    threads: Annotated[int, Opt("minilm-nli: torch CPU threads (bit-for-bit reproduction needs the same count)")] = DEFAULTS["threads"],
    max_steps: Annotated[int | None, Opt("minilm-nli: stop after N optimizer steps (quick checks)")] = None,
    max_hierarchies: Annotated[int | None, Opt("minilm-head: only the first N rows of the data")] = None,
    device: Annotated[str, Opt("minilm-head: cpu | cuda (bit-for-bit reproduction is for cpu)")] = "cpu",
) -> dict:
    """Train an offline NLI model into `out` and return its card."""
    if backend == "minilm-nli":
        from hierarcaps.nli import cross_train

        return cross_train.train_minilm_nli(out=Path(out), nli_dir=Path(nli_data), hierarchies=Path(data), seed=seed,
                                            epochs=epochs or DEFAULTS["epochs"], threads=threads, max_steps=max_steps)
    if backend == "minilm-head":
        from hierarcaps.nli import train

        return train.train_nli(data=Path(data), out=Path(out), seed=seed, max_hierarchies=max_hierarchies, device=device,
                               **({"epochs": epochs} if epochs else {}))
    raise ValueError(f"backend {backend!r}: use {' or '.join(BACKENDS)}")
