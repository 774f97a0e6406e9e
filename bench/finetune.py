"""Base vs Radial-Embedding fine-tuned encoders, side by side on the curated 1K test set (issue #13).

For each model: d_corr (tau_d) overall and per tier pair, tier-4 -> own tier-3 top-1 retrieval among the 1K test
tier-3 texts (cosine), and for a tuned model the eval-mode cosine to its frozen base on the same 4K test texts and
the fine-tune's own figures from its card (negative pairing, steps, wall time, dev scores). Targets (issue #13):
d_corr >= 0.95, cosine to frozen >= 0.9, retrieval no more than 3 points below the base, fine-tune <= 15 min.

    python bench/finetune.py --tuned runs/ft-same --tuned runs/ft-next          # evaluate finished fine-tunes
    python bench/finetune.py --train runs/bench-ft                              # fine-tune with both pairings first

`--train DIR` runs `hierarcaps finetune` (offline profile, development share) once per negative pairing into
DIR/<pairing>; time it under `flock -x /tmp/hierarcaps-cpu.lock` on a shared machine. The test set is never trained on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hierarcaps import pipeline  # noqa: E402
from hierarcaps.eval.encoders import load_encoder, root  # noqa: E402
from hierarcaps.eval.text_metrics import embed_rows, text_scores  # noqa: E402
from hierarcaps.eval.validate import load_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TARGETS = {"d_corr": 0.95, "cosine_to_frozen": 0.9, "retrieval_drop_points": 3.0, "minutes": 15.0}


def score(name: str, texts: np.ndarray, base_emb: np.ndarray | None) -> tuple[dict, np.ndarray]:
    encoder = load_encoder(name, "cpu")
    started = time.perf_counter()
    emb = embed_rows(texts, encoder.encode_text)
    out = text_scores(texts, emb, root(encoder), frozen_emb=base_emb)
    out["encode_s"] = round(time.perf_counter() - started, 1)
    card_path = Path(name) / "card.json"
    if card_path.is_file():
        card = json.loads(card_path.read_text())
        hp = card["hyperparameters"]
        out["card"] = {"base_model": card["base_model"], "pairing": hp["negative_pairing"], "steps": card["steps"]["total"],
                       "train_s": card["timing_s"]["train"], "total_s": card["timing_s"]["total"], "threads": card["environment"]["threads"],
                       "hyperparameters": {k: hp.get(k) for k in ("learning_rate", "schedule", "batch_size", "lambda_p", "lambda_e", "lambda_m", "train_layers", "dropout")},
                       "dev": card["dev"]}
    return out, emb


def table(results: dict[str, dict], base: str) -> str:
    names = list(results)
    rows = [("d_corr (tau_d)", lambda r: r["d_corr"])]
    rows += [(f"  tiers {p}", (lambda p: lambda r: r["d_corr_by_tier_pair"][p])(p)) for p in results[base]["d_corr_by_tier_pair"]]
    rows += [("tier-4 -> own tier-3 top-1", lambda r: r["tier4_to_tier3_top1"]),
             ("  vs base (points)", lambda r: 100 * (r["tier4_to_tier3_top1"] - results[base]["tier4_to_tier3_top1"])),
             ("cosine to frozen (eval mode)", lambda r: r.get("cosine_to_frozen")),
             ("negative pairing", lambda r: r.get("card", {}).get("pairing")),
             ("steps", lambda r: r.get("card", {}).get("steps")),
             ("fine-tune train s", lambda r: r.get("card", {}).get("train_s")),
             ("fine-tune total s (incl. dev scores)", lambda r: r.get("card", {}).get("total_s")),
             ("dev d_corr", lambda r: r.get("card", {}).get("dev", {}).get("tuned", {}).get("d_corr")),
             ("dev tier-4 -> tier-3 top-1", lambda r: r.get("card", {}).get("dev", {}).get("tuned", {}).get("tier4_to_tier3_top1"))]

    def fmt(v) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| metric | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(get(results[n])) for n in names) + " |")
    return "\n".join(lines)


def verdicts(results: dict[str, dict], base: str) -> list[str]:
    out = []
    for name, r in results.items():
        if name == base:
            continue
        drop = 100 * (results[base]["tier4_to_tier3_top1"] - r["tier4_to_tier3_top1"])
        minutes = r.get("card", {}).get("train_s", float("nan")) / 60
        checks = {f"d_corr {r['d_corr']:.3f} >= {TARGETS['d_corr']}": r["d_corr"] >= TARGETS["d_corr"],
                  f"cosine {r['cosine_to_frozen']:.3f} >= {TARGETS['cosine_to_frozen']}": r["cosine_to_frozen"] >= TARGETS["cosine_to_frozen"],
                  f"retrieval drop {drop:.1f} <= {TARGETS['retrieval_drop_points']} points": drop <= TARGETS["retrieval_drop_points"],
                  f"fine-tune {minutes:.1f} <= {TARGETS['minutes']} min": minutes <= TARGETS["minutes"]}
        out.append(f"{name}: " + "; ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in checks.items()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="minilm")
    parser.add_argument("--tuned", action="append", default=[], help="a `hierarcaps finetune` output folder (repeatable)")
    parser.add_argument("--train", type=Path, help="fine-tune with each pairing into DIR/<pairing> first")
    parser.add_argument("--pairings", default="same,next")
    parser.add_argument("--train-data", type=Path, default=SHARED / "hierarcaps_coco_auto")
    parser.add_argument("--test-data", type=Path, default=SHARED / "hierarcaps_test" / "hierarcaps_test.csv")
    parser.add_argument("--set", action="append", default=[], help="finetune override, e.g. finetune.max_steps=100")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    tuned = list(args.tuned)
    if args.train:
        from hierarcaps.config import parse_override

        overrides = dict(parse_override(s) for s in args.set)
        for pairing in args.pairings.split(","):
            out = args.train / pairing
            pipeline.finetune(args.train_data, out, overrides={**overrides, "finetune.negative_pairing": pairing}, model=args.base)
            tuned.append(str(out))
    texts = load_data(args.test_data).texts
    results: dict[str, dict] = {}
    results[args.base], base_emb = score(args.base, texts, None)
    for name in tuned:
        results[name] = score(name, texts, base_emb)[0]
    print(f"{len(texts)} test hierarchies ({args.test_data}); base {args.base}\n")
    print(table(results, args.base))
    print()
    for line in verdicts(results, args.base):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
