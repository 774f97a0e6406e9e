"""`run_finetune()`: Radial Embedding fine-tuning of a text tower on hierarchies; resumable, deterministic on a CPU.

Writes into `out`: `model.safetensors` (every text-tower weight, loadable onto the base model by
`eval.encoders.TunedEncoder`, so `hierarcaps validate --model OUT` scores it) and `card.json` last (data sha256,
hyper-parameters, steps, losses per epoch, dev scores of base and tuned). While it runs, `checkpoints/step-N/`
holds the trained weights, AdamW moments and the loop state every `checkpoint_every` steps; a killed run resumes
from the newest one. Resuming is exact because the next step depends only on (seed, step) and the checkpoint:
batch order, dropout masks and learning rate come from `engines.seq2seq_train`'s helpers (the distill stage's loop).
A rerun with the same data and settings returns the finished card; other settings into the same folder are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hierarcaps import shards
from hierarcaps.config import FinetuneConfig
from hierarcaps.engines.embed import resolve_device
from hierarcaps.engines.runtime import torch_threads
from hierarcaps.engines.seq2seq_train import _load_optimizer, _order, _save_optimizer, latest_checkpoint, learning_rate
from hierarcaps.eval.encoders import TUNED_KIND
from hierarcaps.eval.text_metrics import text_scores
from hierarcaps.finetune.data import TrainingData, load_training_data
from hierarcaps.finetune.objective import PAIRINGS, angles, re_losses
from hierarcaps.finetune.towers import TextTower

log = logging.getLogger(__name__)

CARD, WEIGHTS, CHECKPOINTS = "card.json", "model.safetensors", "checkpoints"
# Settings that do not change what is trained: a run may resume with other values.
_RUNTIME_ONLY = {"device", "threads", "checkpoint_every", "log_every", "dev_rows"}
ENCODE_BATCH = 256


def fingerprint(data: TrainingData, cfg: FinetuneConfig) -> str:
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RUNTIME_ONLY}
    return hashlib.sha256(json.dumps({"data": data.sha256, "config": settings}, sort_keys=True).encode()).hexdigest()


def _autocast(device: str, precision: str):
    if precision == "bf16" or (precision == "auto" and device.startswith("cuda")):
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_texts(data: TrainingData, rows: list[int]) -> list[str]:
    """"" (the root), then positive tiers 1..4, then negative tiers 1..4, each tier over the batch's rows."""
    return [""] + [data.positive[r][t] for t in range(4) for r in rows] + [data.negative[r][t] for t in range(4) for r in rows]


def step_losses(tower: TextTower, data: TrainingData, rows: list[int], cfg: FinetuneConfig):
    texts = batch_texts(data, rows)
    with _autocast(tower.device, cfg.precision):
        emb = tower.embed(texts)
        with torch.no_grad():
            frozen = tower.embed(texts[1:], frozen=True)
    tiers = emb[1:].view(2, 4, len(rows), -1)
    return re_losses(tiers[0], tiers[1], emb[0], emb[1:], frozen, cfg.negative_pairing, cfg.lambda_p, cfg.lambda_e, cfg.lambda_m)


def _save_checkpoint(directory: Path, step: int, tower: TextTower, optimizer, state: dict) -> None:
    from safetensors.torch import save_file

    final, tmp = directory / f"step-{step:08d}", directory / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tower.trainable_state(), tmp / "weights.safetensors")
    param_groups = _save_optimizer(optimizer, tmp)
    shards.atomic_write_json(tmp / "state.json", {**state, "step": step, "param_groups": param_groups})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(p for p in directory.glob("step-*") if p != final):
        shutil.rmtree(old, ignore_errors=True)


def _encode(tower: TextTower, texts: list[str], frozen: bool) -> np.ndarray:
    out = []
    with torch.inference_mode(), _autocast(tower.device, "auto"):
        for start in range(0, len(texts), ENCODE_BATCH):
            out.append(tower.embed(texts[start : start + ENCODE_BATCH], frozen=frozen).float().cpu().numpy())
    return np.concatenate(out)


def dev_scores(tower: TextTower, data: TrainingData, limit: int | None) -> dict:
    """Base and tuned side by side on the dev rows (eval mode): text_scores of the positives, the mean exterior
    angles (P and both negative pairings) and the tuned encoder's cosine to the frozen one on the positives."""
    rows = data.rows("dev")[:limit]
    if not rows:
        return {"rows": 0}
    tower.module.eval()
    texts = np.array([data.positive[r] for r in rows] + [data.negative[r] for r in rows], dtype=object)
    unique, inverse = np.unique(texts.astype(str).ravel(), return_inverse=True)
    result: dict = {"rows": len(rows)}
    positives = {}
    for label, frozen in (("base", True), ("tuned", False)):
        emb = _encode(tower, [""] + list(unique), frozen)
        root, tiers = emb[0], emb[1:][inverse].reshape(*texts.shape, -1)
        positives[label] = tiers[: len(rows)]
        scores = text_scores(texts[: len(rows)], positives[label], root)
        pos, neg = (torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))) for x in (tiers[: len(rows)], tiers[len(rows) :]))
        for pairing in PAIRINGS:
            p, n = angles(pos, neg, torch.from_numpy(root), pairing)
            scores["positive_angle"] = float(p.mean())
            scores[f"negative_angle_{pairing}"] = float(-n.mean())
        result[label] = scores
    result["tuned"]["cosine_to_frozen"] = float((positives["tuned"] * positives["base"]).sum(-1).mean())
    return result


def _epoch_entry(epoch: int, sums: dict, steps: int) -> dict:
    return {"epoch": epoch, "steps": steps, **{k: round(v / max(1, steps), 6) for k, v in sums.items()}}


def run_finetune(
    data: str | Path,
    out: str | Path,
    cfg: FinetuneConfig,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> dict:
    """Fine-tune `cfg.model` on `data` into `out`; returns the card. `on_progress(name, done, total)` after every
    step, `on_log(entry)` every `log_every` steps with the mean losses since the last one."""
    out = Path(out)
    started = time.perf_counter()
    training = load_training_data(data)
    rows = training.rows(cfg.split)
    if not rows:
        raise ValueError(f"{data}: no rows in split {cfg.split!r} ({training.describe()['rows_by_split']})")
    key = fingerprint(training, cfg)
    if (out / CARD).is_file():
        card = json.loads((out / CARD).read_text())
        if card.get("fingerprint") == key:
            log.info("finetune: %s is already finished with these data and settings", out)
            return card
        raise ValueError(f"{out}: holds a fine-tune of other data or settings; pick another --out or remove it")
    device = resolve_device(cfg.device)
    with torch_threads(cfg.threads):
        return _train(training, rows, out, cfg, key, device, started, on_progress, on_log)


def _train(training, rows, out, cfg, key, device, started, on_progress, on_log) -> dict:
    from safetensors.torch import load_file, save_file

    on_progress = on_progress or (lambda name, done, total: None)
    tower = TextTower(cfg.model, device, cfg.train_layers)
    optimizer = torch.optim.AdamW(tower.parameters(), lr=cfg.learning_rate)
    checkpoints = out / CHECKPOINTS
    resumed = latest_checkpoint(checkpoints, key)
    if resumed:
        path, state = resumed
        tower.load_trainable(load_file(path / "weights.safetensors"))
        _load_optimizer(optimizer, path, state.pop("param_groups"))
        state["resumes"].append(state["step"])
        log.info("finetune: resuming from %s (step %d)", path, state["step"])
    else:
        state = {"fingerprint": key, "step": 0, "sums": {}, "epoch_steps": 0, "epochs": [], "history": [], "resumes": [], "train_s": 0.0}
    earlier_s = state.get("train_s", 0.0)  # training time of the runs before a resume (checkpoints record it)
    per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * per_epoch
    start_step, loop_started = state["step"], time.perf_counter()
    interval: dict[str, float] = {}
    interval_steps = 0
    tower.module.train(cfg.dropout)
    on_progress("finetune", start_step, total)
    for step in range(start_step, total):
        epoch, pos = divmod(step, per_epoch)
        batch = [rows[i] for i in _order(len(rows), cfg.seed, epoch)[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]]
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout: the same masks on a resumed run
        lr = cfg.learning_rate if cfg.schedule == "constant" else learning_rate(step, total, cfg.learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = step_losses(tower, training, batch, cfg)
        losses.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        for name, value in losses.floats().items():
            state["sums"][name] = state["sums"].get(name, 0.0) + value
            interval[name] = interval.get(name, 0.0) + value
        state["epoch_steps"] += 1
        interval_steps += 1
        if done % cfg.log_every == 0 or done == total:
            entry = {"step": done, "lr": lr, **{k: round(v / interval_steps, 6) for k, v in interval.items()}}
            state["history"].append(entry)
            interval, interval_steps = {}, 0
            log.info("finetune: step %d/%d total %.4f pullback %.4f entailment %.4f hard %.4f", done, total, entry["total"], entry["pullback"], entry["entailment"], entry["hard"])
            if on_log:
                on_log(entry)
        if pos == per_epoch - 1 or done == total:
            state["epochs"].append(_epoch_entry(epoch + 1, state["sums"], state["epoch_steps"]))
            state["sums"], state["epoch_steps"] = {}, 0
        if done % cfg.checkpoint_every == 0 and done < total:
            state["step"], state["train_s"] = done, earlier_s + time.perf_counter() - loop_started
            _save_checkpoint(checkpoints, done, tower, optimizer, state)
        on_progress("finetune", done, total)
    train_s = time.perf_counter() - loop_started

    dev_started = time.perf_counter()
    dev = dev_scores(tower, training, cfg.dev_rows)
    dev_s = time.perf_counter() - dev_started
    out.mkdir(parents=True, exist_ok=True)
    weights = tower.text_state()
    save_file(weights, out / WEIGHTS)
    card = {
        "kind": TUNED_KIND,
        "description": "Radial Embedding fine-tune of a text tower (HierarCaps objective: pullback + entailment + hard examples)",
        "base_model": tower.base_model,
        "model_kind": tower.kind,
        "fingerprint": key,
        "data": training.describe(),
        "trained_split": cfg.split,
        "hyperparameters": cfg.model_dump(mode="json"),
        "trainable": {"tensors": len(tower.trainable), "parameters": int(sum(p.numel() for p in tower.parameters())),
                      "text_tower_parameters": int(sum(v.numel() for v in weights.values()))},
        "steps": {"total": total, "per_epoch": per_epoch, "run_here": total - start_step, "resumed_from": state["resumes"]},
        "losses": {"per_epoch": state["epochs"], "history": state["history"]},
        "dev": dev,
        # "train": every step's run, resumed ones included (up to each run's last checkpoint); the rest: this run
        "timing_s": {"train": round(earlier_s + train_s, 3), "train_here": round(train_s, 3), "dev_scores": round(dev_s, 1),
                     "total": round(time.perf_counter() - started, 1)},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
                        "precision": "bf16 autocast" if isinstance(_autocast(device, cfg.precision), torch.autocast) else "fp32",
                        "python": platform.python_version(), "machine": platform.machine()},
        "weights_sha256": shards.sha256_file(out / WEIGHTS),
    }
    shards.atomic_write_json(out / CARD, card)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the card is the finished run: the checkpoints are no longer needed
    if dev.get("rows"):
        log.info("finetune: dev d_corr %.4f -> %.4f, tier4->tier3 top-1 %.4f -> %.4f, cosine to frozen %.4f (%d rows)",
                 dev["base"]["d_corr"], dev["tuned"]["d_corr"], dev["base"]["tier4_to_tier3_top1"], dev["tuned"]["tier4_to_tier3_top1"],
                 dev["tuned"]["cosine_to_frozen"], dev["rows"])
    return card
