"""The student of the distill and generate stages: a T5-family model and its tokenizer, or a causal LM with a LoRA
adapter (`StudentConfig.kind = "causal-lora"`, engines/student_lm.py). Every function here takes either, so the
distill and generate stages never know which they have.

Two ways to get a T5 student, the same classes either way (so the paper's path is the tested path):
- `StudentConfig.pretrained` set (paper: google/flan-t5-base): `AutoTokenizer` + `AutoModelForSeq2SeqLM.from_pretrained`.
- offline (`pretrained = None`): a byte-level BPE tokenizer is trained with `tokenizers` on the run's own training
  texts (a 2K vocabulary trains a tiny T5 ~6x faster on CPU than T5's 32K/49K ones) and a small
  `T5ForConditionalGeneration` is built from a `T5Config` with random weights. It learns only what a few dozen
  hierarchies can teach: it is weak, and never the paper's student.

Models are saved with safetensors (`save_pretrained`), tokenizers as `tokenizer.json`; nothing is pickled.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch

from hierarcaps.config import StudentConfig
from hierarcaps.schema import SEPARATOR

log = logging.getLogger(__name__)

# T5's own id layout, so a scratch student and flan-t5 agree on pad (= decoder start) and eos.
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer for `texts`, wrapped for transformers (pad=0, eos=1, unk=2, eos appended).

    Byte-level pre-tokenization, but only the bytes seen in `texts` are in the vocabulary: with all 256 a weak
    student samples stray bytes that decode to invalid UTF-8. A caption byte never seen in training encodes as
    <unk>; the student only reads such captions, its outputs are made of what it was trained on."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("cannot train a tokenizer on no text")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, UNK],
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, tokenizer.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK)


ARTIFACTS = Path(__file__).resolve().parents[1] / "student" / "artifacts"


def student_start(cfg: StudentConfig) -> Path | None:
    """The adapter a causal-lora student starts from: "packaged:<name>" (shipped with hierarcaps), a dir, or None."""
    if cfg.start is None:
        return None
    path = ARTIFACTS / cfg.start.split(":", 1)[1] if cfg.start.startswith("packaged:") else Path(cfg.start)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"student start {cfg.start!r}: no LoRA adapter at {path} (adapter_config.json missing)")
    return path


def student_sha256(directory: Path) -> str:
    """The sha256 of a saved student's weights: the adapter of a causal-lora student, else the whole model."""
    from hierarcaps.shards import sha256_file

    directory = Path(directory)
    adapter = directory / "adapter_model.safetensors"
    return sha256_file(adapter if adapter.exists() else directory / "model.safetensors")


def build_student(cfg: StudentConfig, texts: Sequence[str], device: str = "cpu"):
    """(model, tokenizer): a causal LM + LoRA adapter (`cfg.kind`), a pretrained seq2seq model from
    `cfg.pretrained`, or a scratch T5 with a BPE vocabulary fit to `texts`."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

    if cfg.kind == "causal-lora":
        from hierarcaps.engines.student_lm import build_lm_student

        return build_lm_student(cfg, student_start(cfg), device)
    if cfg.pretrained:
        log.info("student: loading pretrained %s", cfg.pretrained)
        overrides = {} if cfg.dropout is None else {"dropout_rate": cfg.dropout}
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained)
            model = AutoModelForSeq2SeqLM.from_pretrained(cfg.pretrained, **overrides)
        _ensure_separator(model, tokenizer)
        return model, tokenizer
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.d_model,
        d_ff=cfg.d_ff,
        d_kv=cfg.d_kv,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **({} if cfg.dropout is None else {"dropout_rate": cfg.dropout}),
    )
    model = T5ForConditionalGeneration(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("student: tiny T5 from scratch, %d parameters, vocabulary %d", n_params, len(tokenizer))
    return model, tokenizer


def _ensure_separator(model, tokenizer, separator: str = SEPARATOR.strip()) -> None:
    """T5's sentencepiece vocabulary has no '<' and may lose other characters (they decode to '⁇'): if the tier
    separator does not survive a round trip, add it as a token so the student can write hierarchies at all."""
    probe = f"a {separator} b"
    if tokenizer.decode(tokenizer(probe)["input_ids"], skip_special_tokens=True).strip() == probe:
        return
    tokenizer.add_tokens([separator])
    model.resize_token_embeddings(len(tokenizer))
    log.info("student: added %r to the tokenizer (it did not round-trip)", separator)


@contextmanager
def _quiet_transformers():
    """No tqdm bars from save/load: a checkpoint every N steps would print one each into the CLI's rich progress."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_student(model, tokenizer, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "student_meta"):
        from hierarcaps.engines.student_lm import save_lm_student

        return save_lm_student(model, tokenizer, directory)
    with _quiet_transformers():
        model.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)


def load_student(directory: str | Path, device: str = "cpu", trainable: bool = False):
    """(model, tokenizer) from a directory written by `save_student` (or any local seq2seq checkpoint); in eval mode
    unless `trainable` (a checkpoint to resume training from)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from hierarcaps.engines.student_lm import is_lm_student, load_lm_student

    directory = Path(directory)
    if is_lm_student(directory):
        with _quiet_transformers():
            return load_lm_student(directory, device, trainable)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory}: no student model here (config.json missing); run the distill stage")
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForSeq2SeqLM.from_pretrained(directory).to(device)
    if not trainable:
        model.eval()
    return model, tokenizer


def student_threads(cfg: StudentConfig, device: str) -> int | None:
    """On CPU: `cfg.threads`, else 1 thread for a scratch T5 (see `torch_threads`); otherwise torch's default."""
    if device != "cpu":
        return None
    if cfg.threads is not None:
        return cfg.threads
    return 1 if cfg.kind == "seq2seq" and not cfg.pretrained else None


class SeededSampler:
    """A logits processor that samples each row with its own `torch.Generator`, then leaves only the chosen token.

    transformers' sampling draws from the global RNG, so a row's sample would depend on which rows share its batch;
    here row r always draws from seed r, whatever the batching. Greedy decoding then picks the one token left."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (the top token always stays)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        chosen = torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, -math.inf)
        out.scatter_(-1, chosen[:, None], 0.0)
        return out


@torch.no_grad()
def student_generate(
    model,
    tokenizer,
    sources: Sequence[str],
    *,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | Sequence[int] = 0,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    num_beams: int = 1,
    max_source_len: int = 128,
) -> list[str]:
    """One decoded output per source, in order. Greedy (or beam) by default; `sample=True` draws with one seed per
    row (`seed` is a list of per-row seeds, or an int from which row i gets seed + i)."""
    from transformers import LogitsProcessorList

    from hierarcaps.engines.student_lm import lm_generate

    sources = list(sources)
    seeds = [seed + i for i in range(len(sources))] if isinstance(seed, int) else list(seed)
    if len(seeds) != len(sources):
        raise ValueError(f"{len(seeds)} seeds for {len(sources)} sources")
    sample = sample and temperature > 0
    outputs: list[str] = []
    model.eval()
    for lo in range(0, len(sources), batch_size):
        batch = sources[lo : lo + batch_size]
        extra = {}
        if sample:
            sampler = SeededSampler(seeds[lo : lo + batch_size], temperature, top_p, model.device)
            extra = {"logits_processor": LogitsProcessorList([sampler]), "num_beams": 1}
        else:
            extra = {"num_beams": num_beams}
        if not model.config.is_encoder_decoder:
            outputs.extend(lm_generate(model, tokenizer, batch, max_new_tokens=max_new_tokens, max_source_len=max_source_len,
                                       logits_processor=extra.get("logits_processor"), num_beams=extra["num_beams"]))
            continue
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_source_len).to(model.device)
        ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, **extra)
        outputs.extend(t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True))
    return outputs


@torch.no_grad()
def student_score(model, tokenizer, sources: Sequence[str], targets: Sequence[str], *, batch_size: int = 64,
                  max_source_len: int = 128, max_target_len: int = 64) -> list[float]:
    """The student's mean log-probability per target token of each target given its source (higher = more typical)."""
    from hierarcaps.engines.student_lm import _mean_target_logprob, lm_score

    pairs = list(zip(sources, targets))
    scores: list[float] = []
    model.eval()
    for lo in range(0, len(pairs), batch_size):
        batch = pairs[lo : lo + batch_size]
        if not model.config.is_encoder_decoder:
            scores += lm_score(model, tokenizer, batch, max_source_len, max_target_len)
            continue
        enc = tokenizer([s for s, _ in batch], return_tensors="pt", padding=True, truncation=True, max_length=max_source_len).to(model.device)
        labels = tokenizer([t for _, t in batch], return_tensors="pt", padding=True, truncation=True, max_length=max_target_len)["input_ids"].to(model.device)
        labels = labels.masked_fill(labels == tokenizer.pad_token_id, -100)
        logits = model(**enc, labels=labels).logits.float()
        scores += _mean_target_logprob(logits, labels)
    return scores
