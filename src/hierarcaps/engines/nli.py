"""NLI back-ends behind `engines.base.NLIModel`: premise/hypothesis pairs -> (n, 3) probabilities.

- `cross-encoder`: any transformers `AutoModelForSequenceClassification` trained on MNLI (paper:
  `microsoft/deberta-large-mnli`; small: `cross-encoder/nli-deberta-v3-xsmall`). Models order their labels
  differently, so the columns are mapped by the names in `config.id2label`, never by position.
- `lexical`: a transparent heuristic for machines without any NLI model: content-word containment plus
  all-MiniLM-L6-v2 cosine similarity, turned into pseudo-probabilities. It is not MNLI and says so.
- `minilm-nli`: the offline default, all-MiniLM-L6-v2 fine-tuned as a cross-encoder on human NLI labels plus
  caption-hierarchy pairs (`engines.minilm_nli`; trained by `hierarcaps.nli.cross_train`), imported lazily.
- `minilm-head`: the earlier learned stand-in (`engines.minilm_head`; trained by `hierarcaps.nli.train`), imported lazily.

`score_pairs` deduplicates pairs so one shard costs one NLI pass over its distinct pairs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from hierarcaps.config import NLIConfig
from hierarcaps.engines.artifacts import MINILM_HEAD, MINILM_NLI
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT, NEUTRAL, NLI_LABELS, NLIModel
from hierarcaps.engines.classify import label_columns, pair_logits, softmax
from hierarcaps.engines.embed import load_sentence_model, resolve_device

log = logging.getLogger(__name__)

DEFAULT_CROSS_ENCODER = "microsoft/deberta-large-mnli"
LEXICAL_ID = "lexical-minilm-heuristic"

Pair = tuple[str, str]


TEMPERATURE_FILE = "temperature.json"  # optional, next to a local cross-encoder's weights: {"temperature": T}


def nli_model_id(cfg: NLIConfig) -> str:
    """The model id a config resolves to, without loading anything (used in stage fingerprints)."""
    if cfg.backend == "cross-encoder":
        name = cfg.model or DEFAULT_CROSS_ENCODER
        calibration = Path(name) / TEMPERATURE_FILE
        # a local model's temperature changes its probabilities, so it is part of the id (and the fingerprint)
        return f"{name}@T{calibration.read_text().strip()}" if calibration.is_file() else name
    if cfg.backend == "lexical":
        return LEXICAL_ID
    # A shipped model's card holds its weights' sha256 and its thresholds: hashing it makes a retrained model
    # invalidate finished filter shards without loading torch to find out.
    folder = Path(cfg.model) if cfg.model else {"minilm-head": MINILM_HEAD, "minilm-nli": MINILM_NLI}[cfg.backend]
    card = folder / "card.json"
    digest = hashlib.sha256(card.read_bytes()).hexdigest()[:12] if card.is_file() else "no-card"
    return f"{cfg.backend}:{cfg.model or 'default'}@{digest}"


def load_nli(cfg: NLIConfig) -> NLIModel:
    if cfg.backend == "cross-encoder":
        return CrossEncoderNLI(cfg.model or DEFAULT_CROSS_ENCODER, batch_size=cfg.batch_size, device=cfg.device)
    if cfg.backend == "lexical":
        return LexicalNLI(batch_size=cfg.batch_size, device=cfg.device)
    if cfg.backend == "minilm-nli":
        from hierarcaps.engines.minilm_nli import load_minilm_nli  # imports torch: only on use

        return load_minilm_nli(cfg)
    if cfg.backend == "minilm-head":
        from hierarcaps.engines.minilm_head import load_minilm_head  # imports torch: only on use

        return load_minilm_head(cfg)
    raise ValueError(f"unknown NLI backend {cfg.backend!r}; use minilm-nli, cross-encoder, minilm-head or lexical")


def score_pairs(model: NLIModel, pairs: Sequence[Pair]) -> dict[Pair, np.ndarray]:
    """Probabilities for every distinct pair, predicted in one call."""
    unique = list(dict.fromkeys((str(p), str(h)) for p, h in pairs))
    if not unique:
        return {}
    probs = np.asarray(model.predict(unique), dtype=np.float64)
    if probs.shape != (len(unique), len(NLI_LABELS)):
        raise ValueError(f"NLI model {model.model_id!r} returned shape {probs.shape} for {len(unique)} pairs")
    return dict(zip(unique, probs))


# ------------------------------------------------------------------ cross-encoder (MNLI)


class CrossEncoderNLI:
    """An MNLI sequence classifier from the hub or a local directory."""

    def __init__(self, model_name: str, batch_size: int = 64, device: str = "auto", max_length: int = 256):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_id = model_name
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = resolve_device(device)
        log.info("loading NLI cross-encoder %s on %s", model_name, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_name)
            self.model = AutoModelForSequenceClassification.from_pretrained(model_name).to(self.device).eval()
        except OSError as err:  # not cached while offline, no such repo or folder, ...
            raise RuntimeError(
                f"cannot load the NLI cross-encoder {model_name!r}: {err}. Give a local folder as filter.nli.model, "
                f"or allow the hub (HF_HUB_OFFLINE=0)"
            ) from err
        self.columns = label_columns(self.model.config.id2label, model_name)
        # Optional calibration: a local folder may hold temperature.json {"temperature": T}; logits are divided by T.
        temp_file = Path(model_name) / TEMPERATURE_FILE
        self.temperature = float(json.loads(temp_file.read_text())["temperature"]) if temp_file.is_file() else 1.0
        self.description = f"MNLI cross-encoder {model_name}" + (f" (temperature {self.temperature:g})" if self.temperature != 1.0 else "")

    def predict(self, pairs: Sequence[Pair]) -> np.ndarray:
        logits = pair_logits(self.model, self.tokenizer, pairs, batch_size=self.batch_size, max_length=self.max_length, device=self.device)
        return softmax(logits[:, self.columns], self.temperature).astype(np.float32)


# ------------------------------------------------------------------ lexical heuristic

_WORD = re.compile(r"[a-z0-9]+")
# Function words carry no content to be entailed; without them "a man" would cover half of "a dog on a bed".
_STOPWORDS = frozenset(
    "a an the of in on at to and or with without is are was be being its it his her their this that these those there "
    "for by from as some into onto near next while who which".split()
)
# Cosine of all-MiniLM-L6-v2 below SIM_LOW reads as unrelated, above SIM_HIGH as closely related. These and the
# formula in lexical_probs were chosen by eye on tier pairs of the first 300 rows of hierarcaps_coco_auto (positive
# tiers ~0.6-0.8, tiers of different images ~0.1-0.25); no test-set data was looked at.
SIM_LOW, SIM_HIGH = 0.2, 0.6


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    words = [_stem(w) for w in _WORD.findall(text.lower())]
    return {w for w in words if w not in _STOPWORDS} or set(words)


def coverage(premise: str, hypothesis: str) -> float:
    """Share of the hypothesis's content words that the premise also has (1.0 for an empty hypothesis)."""
    wanted = content_words(hypothesis)
    return len(wanted & content_words(premise)) / len(wanted) if wanted else 1.0


def lexical_probs(cover_hyp: float, cover_prem: float, hyp_words: int, cosine: float) -> tuple[float, float, float]:
    """Pseudo-probabilities (entailment, neutral, contradiction) from containment and similarity; they sum to 1.

    cover_hyp  = share of the hypothesis's content words found in the premise (`coverage(premise, hypothesis)`);
    cover_prem = the same the other way round; related = MiniLM cosine rescaled from [SIM_LOW, SIM_HIGH] to [0, 1].

    entailment    = related * cover_hyp: related texts whose words the premise covers. When the texts share no
                    content word at all, containment says nothing (a hypernym: "motorcycle" -> "vehicle"), so
                    similarity alone earns up to `floor`: 0.5 for one- or two-word hypotheses, less for longer ones;
    contradiction = (1 - entailment) * max(1 - related, swap): unrelated texts, or a word swap, where *both*
                    texts have content words the other lacks ("a dog on grass" / "a cat on grass"), unlike a
                    generic -> specific pair where only the hypothesis adds words (neutral);
    neutral       = the rest.
    Limits: a hypernym with no shared word ("motorcycle" -> "vehicle") looks like a swap, and a changed colour,
    number or subject in an otherwise identical text looks like a small swap; this is not an NLI model.
    """
    related = float(np.clip((cosine - SIM_LOW) / (SIM_HIGH - SIM_LOW), 0.0, 1.0))
    floor = 0.5 / max(1, hyp_words - 1)
    entail = related * (cover_hyp if cover_hyp > 0 else floor)
    swap = min(1.0, 2.0 * min(1.0 - cover_hyp, 1.0 - cover_prem))
    contradict = (1.0 - entail) * max(1.0 - related, swap)
    return entail, max(0.0, 1.0 - entail - contradict), contradict


class LexicalNLI:
    """Heuristic stand-in: content-word containment + all-MiniLM-L6-v2 cosine. Not an NLI model."""

    model_id = LEXICAL_ID
    description = (
        "lexical-minilm-heuristic: a heuristic stand-in, NOT an MNLI model: content-word containment plus "
        "all-MiniLM-L6-v2 cosine similarity mapped to pseudo-probabilities; contradiction is guessed from "
        "word swaps and low similarity. It cannot tell a hypernym from a swapped noun, barely notices a changed "
        "colour, number or subject, and knows no negation; treat its accept/reject decisions as weak."
    )

    def __init__(self, batch_size: int = 64, device: str = "auto", encoder: str = "minilm"):
        self.batch_size = batch_size
        self.device = device
        self.encoder_name = encoder

    @cached_property
    def encoder(self):
        return load_sentence_model(self.encoder_name, self.device)

    def predict(self, pairs: Sequence[Pair]) -> np.ndarray:
        if not pairs:
            return np.zeros((0, len(NLI_LABELS)), dtype=np.float32)
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))  # encode each distinct text once
        vectors = self.encoder.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        row = {text: i for i, text in enumerate(texts)}
        out = np.zeros((len(pairs), len(NLI_LABELS)), dtype=np.float32)
        for k, (premise, hypothesis) in enumerate(pairs):
            cosine = float(vectors[row[premise]] @ vectors[row[hypothesis]])
            probs = lexical_probs(
                coverage(premise, hypothesis), coverage(hypothesis, premise), len(content_words(hypothesis)), cosine
            )
            out[k, [ENTAILMENT, NEUTRAL, CONTRADICTION]] = probs
        return out
