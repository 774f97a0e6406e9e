"""How well an NLI judge agrees with blind reviewers, tier by tier (issue #17): the rows of a review kit
(`hierarcaps review sample`) and its reviewers' labels files, judged by each back-end with the filter's pairs.

A tier's judge verdict: the positive hierarchy is valid when all its pairs (tier i+1 => tier i, caption => every tier)
pass; negative tier i when "contradicts positive tier i" and (i >= 2) "entails positive tier i-1" pass. Thresholds:
each back-end's card; a back-end whose card has only a joint row rule (minilm-head) gets the paper's per-pair 0.5.
Compared with the verdicts both reviewers agree on: share called valid, agreement, Cohen's kappa, and the share of
reviewer-invalid tiers the judge calls valid.

    python bench/judge_review.py runs/review-judge --labels A.json --labels B.json [--backend minilm-nli ...]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hierarcaps.config import load_profile  # noqa: E402
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT  # noqa: E402
from hierarcaps.engines.nli import load_nli, score_pairs  # noqa: E402
from hierarcaps.judge import Judge, rule_pairs  # noqa: E402
from hierarcaps.review import VERDICTS, cohen_kappa, load_kit, load_labels  # noqa: E402
from hierarcaps.schema import split_tiers  # noqa: E402


def judge_verdicts(judge: Judge, items: list[dict]) -> dict[str, list[bool]]:
    t = judge.thresholds
    entail = t["entail"] if t["entail"] else 0.5
    contradict = t["contradict"] if t["contradict"] else 0.5
    rows = {item["id"]: rule_pairs(split_tiers(item["positive"]), split_tiers(item["negative"])) for item in items}
    scores = score_pairs(judge.nli, [(p, h) for pairs in rows.values() for _, _, p, h in pairs])
    out = {}
    for row_id, pairs in rows.items():
        ok = {(rule, tier): scores[(p, h)][CONTRADICTION] >= contradict if rule == "nli_negative_contradicts"
              else scores[(p, h)][ENTAILMENT] >= entail for rule, tier, p, h in pairs}
        positive = all(v for (rule, _), v in ok.items() if rule in ("nli_positive_entails", "nli_caption_entails"))
        negative = [ok[("nli_negative_contradicts", i)] and ok.get(("nli_negative_entails_previous", i), True) for i in range(1, 5)]
        out[row_id] = [positive, *negative]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kit", type=Path)
    parser.add_argument("--labels", type=Path, action="append", required=True)
    parser.add_argument("--backend", action="append", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    ids, _ = load_kit(args.kit)
    items = json.loads((args.kit / "sheet.json").read_text())
    reviewers = []
    for path in args.labels:
        verdicts, problems = load_labels(path, ids)
        if problems:
            raise SystemExit("\n".join(problems))
        reviewers.append(verdicts)
    result = {}
    for name in args.backend or ("minilm-head", "minilm-nli"):
        profile = load_profile("offline", {"filter.nli.backend": name, "filter.nli.device": "cpu"})
        judge = Judge(profile, nli=load_nli(profile.filter.nli))
        mine = judge_verdicts(judge, items)
        per = {}
        for k, kind in enumerate(VERDICTS):
            agreed = [i for i in ids if len({r[i][k] for r in reviewers}) == 1]
            truth = [reviewers[0][i][k] for i in agreed]
            called = [mine[i][k] for i in agreed]
            invalid = [c for c, t in zip(called, truth) if not t]
            per[kind] = {"reviewers_agree_on": len(agreed), "reviewers_valid": sum(truth) / max(1, len(truth)),
                         "judge_valid": sum(called) / max(1, len(called)),
                         "agreement": sum(c == t for c, t in zip(called, truth)) / max(1, len(truth)),
                         "kappa": cohen_kappa(called, truth),
                         "invalid_called_valid": sum(invalid) / len(invalid) if invalid else None}
        result[name] = per
    print("| verdict | n (reviewers agree) | reviewers: valid | " + " | ".join(f"{b}: valid / agreement / kappa / invalid called valid" for b in result) + " |")
    print("|---|---:|---:|" + "---|" * len(result))
    for kind in VERDICTS:
        first = next(iter(result.values()))[kind]
        cells = []
        for b in result:
            e = result[b][kind]
            kappa = "-" if e["kappa"] is None else f"{e['kappa']:.2f}"
            wrong = "-" if e["invalid_called_valid"] is None else f"{e['invalid_called_valid']:.0%}"
            cells.append(f"{e['judge_valid']:.0%} / {e['agreement']:.0%} / {kappa} / {wrong}")
        print(f"| {kind} | {first['reviewers_agree_on']} | {first['reviewers_valid']:.0%} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
