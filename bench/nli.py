"""Side-by-side bench of the filter's offline NLI back-ends (issue #17): the earlier `minilm-head` stand-in vs the
`minilm-nli` cross-encoder, in one run, each with its card's thresholds and the filter's own decision (`judge.Judge`:
structural checks, then every NLI rule).

1. `esnli_test` (SNLI test pairs labelled by people; never trained on): 3-class accuracy and recall per class;
2. hierarchies of development-share images held out from every training step (the `eval` split): original rows
   kept; negatives that cannot contradict (`corrupt.COMPATIBLE`) and semantic corruptions (tier-3 swap, colour /
   number / noun flips) rejected; rejections counted by the side that failed (positive / negative);
3. the curated 1K test set's positive hierarchies (corrected by people): share passing the positive side;
4. hierarchies/s of the filter's NLI pass over original rows (torch threads pinned, `--threads`).

    python bench/nli.py [--max-hierarchies N] [--speed-rows 300] [--threads 2] [--json bench/nli_results.json]
    python bench/nli.py --backend minilm-nli --backend minilm-nli=runs/nli-v2     # a retrained judge beside the shipped one
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hierarcaps.config import load_profile  # noqa: E402
from hierarcaps.engines.base import NLI_LABELS  # noqa: E402
from hierarcaps.engines.nli import load_nli  # noqa: E402
from hierarcaps.engines.runtime import torch_threads  # noqa: E402
from hierarcaps.judge import Judge  # noqa: E402
from hierarcaps.nli import corrupt, human, pairs as P  # noqa: E402
from hierarcaps.schema import SEPARATOR  # noqa: E402
from hierarcaps.stats import Stats  # noqa: E402

log = logging.getLogger("bench.nli")
BACKENDS = ("minilm-head", "minilm-nli")
SEMANTIC = ("tier3_swap", "colour", "number", "noun")
TARGETS = {"esnli_accuracy": 0.85, "esnli_accuracy_floor": 0.80, "neutral_recall": 0.80, "compatible_rejected_each": 0.90,
           "test_positive_side_pass": 0.90, "tier3_swap_rejected": 0.85, "number_rejected": 0.70, "hierarchies_per_s": 30.0}


def side(verdict) -> str | None:
    """positive / negative for an NLI rejection, structural for a check, None when kept."""
    if verdict.reason is None:
        return None
    if not verdict.reason.startswith("nli_"):
        return "structural"
    return json.loads(verdict.detail)["side"]


def judged(judge: Judge, rows: list[dict]) -> tuple[list, Stats]:
    stats = Stats()
    return judge.judge(rows, stats), stats


def pair_rejected(stats: Stats, rule: str, tier: int) -> float:
    """Share of rows whose (rule, tier) pair failed its threshold, whatever else failed."""
    checked = stats[f"pair_checked:{rule}:t{tier}"]
    return 1 - stats[f"pair_pass:{rule}:t{tier}"] / checked if checked else float("nan")


def esnli(model, folder: Path) -> dict:
    pairs = human.load_eval(folder)
    probs = model.predict([(p.premise, p.hypothesis) for p in pairs])
    pred, labels = probs.argmax(1), np.array([p.label for p in pairs])
    return {"n": len(pairs), "accuracy": float((pred == labels).mean()),
            "recall": {NLI_LABELS[k]: float((pred[labels == k] == k).mean()) for k in range(3)}}


# The pair a compatible negative puts in place: negative tier 4 (another caption) or 3 must fail "contradicts".
REPLACED_TIER = {"negative_other_caption": 4, "negative_other_tier3": 3, "negative_specific": 3}


def held_out(judge: Judge, hierarchies: list[P.Hierarchy], seed: int) -> dict:
    cases = corrupt.build_cases(hierarchies, seed, kinds=corrupt.COMPATIBLE + SEMANTIC)
    out = {}
    for kind in ("original",) + corrupt.COMPATIBLE + SEMANTIC:
        mine = [c for c in cases if c.kind == kind]
        verdicts, stats = judged(judge, [{"positive": c.positive, "negative": c.negative, "caption": c.caption} for c in mine])
        counts = Counter(s for s in (side(v) for v in verdicts) if s is not None)
        entry = {"n": len(mine), "rejected": sum(counts.values()) / max(1, len(mine)), "by_side": dict(counts),
                 "positive_side_rejected": counts["positive"] / max(1, len(mine))}
        if kind in REPLACED_TIER:
            entry["replaced_pair_rejected"] = pair_rejected(stats, "nli_negative_contradicts", REPLACED_TIER[kind])
        if kind == "original":  # per negative tier: both of its pairs pass (the reviewers' figure to compare with)
            entry["negative_tier_pass"] = {t: 1 - max(pair_rejected(stats, "nli_negative_contradicts", t),
                                                      pair_rejected(stats, "nli_negative_entails_previous", t) if t > 1 else 0.0)
                                           for t in range(1, 5)}
            entry["contradicts_pass"] = {t: 1 - pair_rejected(stats, "nli_negative_contradicts", t) for t in range(1, 5)}
        out[kind] = entry
    return out


def test_positives(judge: Judge, path: Path) -> dict:
    with open(path, newline="") as f:
        rows = [[t.strip() for t in r["captions"].split(SEPARATOR)] for r in csv.DictReader(f)]
    verdicts, _ = judged(judge, [{"positive": p, "negative": None, "caption": p[-1]} for p in rows])
    counts = Counter(side(v) for v in verdicts)
    reasons = Counter(v.reason for v in verdicts if v.reason)
    return {"n": len(rows), "positive_side_pass": 1 - counts["positive"] / len(rows), "structural_rejected": counts["structural"] / len(rows),
            "reasons": dict(reasons.most_common())}


def speed(judge: Judge, hierarchies: list[P.Hierarchy]) -> float:
    rows = [{"positive": list(h.positive), "negative": list(h.negative), "caption": h.positive[-1]} for h in hierarchies]
    started = time.perf_counter()
    judged(judge, rows)
    return len(rows) / (time.perf_counter() - started)


def markdown(result: dict) -> str:
    names = list(result["backends"])
    b = result["backends"]
    lines = ["| measure (target) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]

    def row(title: str, fn) -> None:
        lines.append(f"| {title} | " + " | ".join(fn(b[n]) for n in names) + " |")

    row(f"esnli_test 3-class accuracy, n={b[names[0]]['esnli']['n']} (>= 0.85; floor 0.80)", lambda r: f"{r['esnli']['accuracy']:.3f}")
    for label in NLI_LABELS:
        row(f"esnli_test {label} recall" + (" (>= 0.80)" if label == "neutral" else ""), lambda r, label=label: f"{r['esnli']['recall'][label]:.3f}")
    held = b[names[0]]["held_out"]
    row(f"held-out originals kept, n={held['original']['n']} (report)", lambda r: f"{1 - r['held_out']['original']['rejected']:.1%}")
    row("originals rejected on the positive side (report)", lambda r: f"{r['held_out']['original']['positive_side_rejected']:.1%}")
    row("original negative tier 1 / 2 / 3 / 4 passing both its pairs (reviewers: ~93 / 44 / 24 / 9% valid)",
        lambda r: " / ".join(f"{r['held_out']['original']['negative_tier_pass'][t]:.0%}" for t in range(1, 5)))
    for kind in corrupt.COMPATIBLE + SEMANTIC:
        goal = {"tier3_swap": " (>= 85%)", "number": " (>= 70%)"}.get(kind, "")
        row(f"{kind}: row rejected, n={held[kind]['n']}{goal}", lambda r, kind=kind: f"{r['held_out'][kind]['rejected']:.1%} "
            f"({'/'.join(str(r['held_out'][kind]['by_side'].get(s, 0)) for s in ('positive', 'negative', 'structural'))})")
        if kind in corrupt.COMPATIBLE:
            row(f"{kind}: the replaced tier's pair fails \"contradicts\" (>= 90%)", lambda r, kind=kind: f"{r['held_out'][kind]['replaced_pair_rejected']:.1%}")
        else:
            row(f"{kind}: rejected on the positive side", lambda r, kind=kind: f"{r['held_out'][kind]['positive_side_rejected']:.1%}")
    row(f"curated test positives pass the positive side, n={b[names[0]]['test']['n']} (>= 90%)", lambda r: f"{r['test']['positive_side_pass']:.1%}")
    row(f"NLI pass, hierarchies/s on {result['threads']} threads (>= 30)", lambda r: f"{r['hierarchies_per_s']:.1f}")
    row("thresholds (entail / contradict / joint)", lambda r: " / ".join("-" if r["thresholds"].get(k) is None else f"{r['thresholds'][k]:.3f}" for k in ("entail", "contradict", "joint")))
    lines.append("")
    lines.append("Rejected counts in parentheses: positive side / negative side / structural checks. A row's side is its first failing "
                 "rule's (positive rules come first); every rule is still checked on every row, which the per-pair figures use.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=P.DEFAULT_DATA)
    parser.add_argument("--nli-data", type=Path, default=human.DEFAULT_DIR)
    parser.add_argument("--test", type=Path, default=P.TEST_DATA)
    parser.add_argument("--max-hierarchies", type=int, default=None, help="only the first N held-out hierarchies")
    parser.add_argument("--speed-rows", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", action="append", default=None,
                        help=f"repeatable, BACKEND or BACKEND=MODEL_DIR (a retrained model beside the shipped one); default {' and '.join(BACKENDS)}")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    hierarchies = P.split_hierarchies(P.load_hierarchies(args.data))["eval"][: args.max_hierarchies]
    result = {"split": "eval", "hierarchies": len(hierarchies), "threads": args.threads, "backends": {}}
    with torch_threads(args.threads):
        for name in args.backend or BACKENDS:
            backend, _, model_dir = name.partition("=")
            profile = load_profile("offline", {"filter.nli.backend": backend, "filter.nli.device": "cpu", "filter.nli.model": model_dir or None})
            model = load_nli(profile.filter.nli)
            judge = Judge(profile, nli=model)
            model.predict([("warm up", "the model")])
            log.info("%s: speed", name)
            entry = {"model_id": model.model_id, "hierarchies_per_s": speed(judge, hierarchies[: args.speed_rows]), "thresholds": judge.thresholds}
            log.info("%s: esnli_test", name)
            entry["esnli"] = esnli(model, args.nli_data)
            log.info("%s: held-out hierarchies", name)
            entry["held_out"] = held_out(judge, hierarchies, args.seed)
            log.info("%s: curated test positives", name)
            entry["test"] = test_positives(judge, args.test)
            result["backends"][name] = entry
    result["targets"] = TARGETS
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
