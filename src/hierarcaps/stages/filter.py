"""Stage `filter`: structural checks, then one NLI pass per shard over every pair the hierarchy rules need.

Rules, for a positive hierarchy p (tier 1 generic .. tier 4 = caption) and an optional negative n:
- `nli_positive_entails`:          p[i+1] entails p[i]          (i = 1..3)
- `nli_negative_contradicts`:      n[i] contradicts p[i]        (premise p[i], hypothesis n[i]; i = 1..4)
- `nli_negative_entails_previous`: n[i] entails p[i-1]          (i = 2..4)
- `nli_joint` (when a joint threshold is set): the mean over all those pairs of log P(required label) reaches it
  (`engines.base.mean_log_prob`; the learned stand-in's card sets it, see hierarcaps.nli.corrupt).
A row is kept when every pair passes its threshold and the joint rule holds. Every rule is evaluated on every row
that reaches NLI, so the stats give each rule's own accept rate (`checked:<rule>`, `pass:<rule>`), not only the
first failure; the reject reason is the first failing rule in the order above, with the failing pair (for
`nli_joint`, the row's weakest pair) and its probabilities in `detail`.

The filter alone on an existing HierarCaps file (`hierarcaps filter`) lives in `stages/refilter.py`.
"""

from __future__ import annotations

import json
import logging
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hierarcaps import schema
from hierarcaps.checks import check_hierarchy
from hierarcaps.config import Profile
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT, NLI_LABELS, NLIModel, mean_log_prob
from hierarcaps.engines.nli import load_nli, nli_model_id, score_pairs
from hierarcaps.stage import ShardOutput, ShardTask, Stage, plan_row_range, read_task_rows
from hierarcaps.stats import Stats

log = logging.getLogger(__name__)

# (rule, reject reason, NLI column that must reach the threshold), in the order a row's reason is chosen.
RULES = (
    ("nli_positive_entails", "nli_positive_not_entailed", ENTAILMENT),
    ("nli_negative_contradicts", "nli_negative_not_contradicting", CONTRADICTION),
    ("nli_negative_entails_previous", "nli_negative_not_entailing_previous", ENTAILMENT),
)
JOINT = ("nli_joint", "nli_joint_too_weak")
STRUCTURAL = "structural"


def rule_pairs(positive: list[str], negative: list[str] | None) -> list[tuple[str, int, str, str]]:
    """(rule, tier, premise, hypothesis) of every pair a row needs. `tier` (1-based) names the tier under test:
    the hypothesis for positive pairs (tier i+1 entails tier i), the negative tier for negative pairs."""
    pairs = [("nli_positive_entails", i, positive[i], positive[i - 1]) for i in range(1, schema.TIERS)]
    if negative is not None:
        pairs += [("nli_negative_contradicts", i + 1, positive[i], negative[i]) for i in range(schema.TIERS)]
        pairs += [("nli_negative_entails_previous", i + 1, negative[i], positive[i - 1]) for i in range(1, schema.TIERS)]
    return pairs


class FilterStage(Stage):
    name = "filter"
    upstream = ("generate",)
    output_schema = schema.FILTERED

    def __init__(self, profile: Profile, run_dir: str | Path, upstream: str = "generate", nli: NLIModel | None = None):
        super().__init__(profile, run_dir)
        self.upstream = (upstream,)
        # The fingerprint names the model from the config alone, so checking whether the stage is done never loads it.
        self.nli_id = nli_model_id(self.config.nli) if nli is None else nli.model_id
        if nli is not None:  # tests and callers that already hold a model
            self.__dict__["nli"] = nli

    @cached_property
    def nli(self) -> NLIModel:
        model = load_nli(self.config.nli)
        log.info("filter NLI: %s", model.description)
        return model

    @cached_property
    def thresholds(self) -> dict[str, float | None]:
        cfg = self.config.nli
        card = getattr(self.nli, "thresholds", None) if cfg.use_card_thresholds else None
        chosen = {"entail": cfg.entail_threshold, "contradict": cfg.contradict_threshold, "joint": cfg.joint_threshold}
        if isinstance(card, dict):
            chosen.update({k: None if card[k] is None else float(card[k]) for k in chosen if k in card})
        return chosen

    def fingerprint_parts(self) -> dict[str, Any]:
        return {"nli_model": self.nli_id}

    def models(self) -> dict[str, str]:
        return {"nli": self.nli.model_id}

    def manifest_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"nli_description": self.nli.description, "thresholds": self.thresholds}
        if self.config.nli.backend != "cross-encoder":
            extra["note"] = f"filter NLI is a stand-in, not an MNLI model: {self.nli.description}"
        return extra

    def plan(self) -> list[ShardTask]:
        return plan_row_range(self.name, self.run_dir / self.upstream[0], 0, None)

    def process(self, task: ShardTask) -> ShardOutput:
        rows = read_task_rows(task).to_pylist()
        stats, rejects, survivors = Stats(), [], []
        for row in rows:
            stats.add(f"checked:{STRUCTURAL}")
            failed = check_hierarchy(row["positive"], row["negative"], row["caption"], self.config.checks)
            if failed:
                reason, detail = failed
                stats.reject(reason)
                rejects.append(_reject(row, reason, detail))
            else:
                stats.add(f"pass:{STRUCTURAL}")
                survivors.append(row)
        self.advance(len(rows) - len(survivors))

        needed = [rule_pairs(row["positive"], row["negative"]) for row in survivors]
        started = time.perf_counter()
        scores = score_pairs(self.nli, [(p, h) for pairs in needed for _, _, p, h in pairs])
        stats.add("nli_pairs", sum(len(pairs) for pairs in needed))
        stats.add("nli_unique_pairs", len(scores))
        stats.add("nli_seconds", time.perf_counter() - started)

        kept = []
        for row, pairs in zip(survivors, needed):
            verdict = self._judge(pairs, scores, stats)
            if verdict["failure"] is None:
                kept.append({**{k: row.get(k) for k in schema.HIERARCHIES.names}, **verdict["mins"]})
            else:
                reason, failure = verdict["failure"]
                stats.reject(reason)
                rejects.append(_reject(row, reason, json.dumps(failure, sort_keys=True)))
        self.advance(len(survivors))
        out = pa.Table.from_pylist(kept, schema=schema.FILTERED) if kept else schema.empty(schema.FILTERED)
        return ShardOutput(out, schema.rejects_table(rejects), stats)

    def _judge(self, pairs: list[tuple[str, int, str, str]], scores: dict, stats: Stats) -> dict:
        """Evaluate every rule on one row; count per rule and per (rule, tier); return the first failure."""
        thresholds = {ENTAILMENT: self.thresholds["entail"], CONTRADICTION: self.thresholds["contradict"]}
        failures: dict[str, dict] = {}
        mins = {"min_entail": None, "min_contradict": None}
        required: list[tuple] = []  # (P(required label), rule, tier, premise, hypothesis, column) for the joint rule
        for rule, reason, column in RULES:
            mine = [(tier, p, h) for r, tier, p, h in pairs if r == rule]
            if not mine:
                continue
            stats.add(f"checked:{rule}")
            for tier, premise, hypothesis in mine:
                probs = scores[(premise, hypothesis)]
                ok = probs[column] >= thresholds[column]
                stats.add(f"pair_checked:{rule}:t{tier}")
                stats.add(f"pair_pass:{rule}:t{tier}", int(ok))
                key = "min_entail" if column == ENTAILMENT else "min_contradict"
                mins[key] = float(probs[column]) if mins[key] is None else min(mins[key], float(probs[column]))
                required.append((float(probs[column]), rule, tier, premise, hypothesis, column))
                if not ok and rule not in failures:
                    failures[rule] = {**_pair_detail(rule, tier, premise, hypothesis, probs, column), "threshold": thresholds[column]}
            if rule not in failures:
                stats.add(f"pass:{rule}")
        joint_threshold = self.thresholds.get("joint")
        if joint_threshold is not None and required:
            rule = JOINT[0]
            stats.add(f"checked:{rule}")
            score = float(mean_log_prob([item[0] for item in required]))
            if score >= joint_threshold:
                stats.add(f"pass:{rule}")
            else:
                _, weak_rule, tier, premise, hypothesis, column = min(required, key=lambda item: item[0])
                weakest = _pair_detail(weak_rule, tier, premise, hypothesis, scores[(premise, hypothesis)], column)
                failures[rule] = {"rule": rule, "mean_log_prob": round(score, 4), "threshold": joint_threshold,
                                  "geometric_mean": round(float(np.exp(score)), 4), "weakest_pair": weakest}
        order = [*((rule, reason) for rule, reason, _ in RULES), JOINT]
        first = next(((reason, failures[rule]) for rule, reason in order if rule in failures), None)
        if first is not None:
            first[1]["also_failed"] = [rule for rule in failures if rule != first[1]["rule"]]
        return {"failure": first, "mins": mins}


def _pair_detail(rule: str, tier: int, premise: str, hypothesis: str, probs, column: int) -> dict:
    """A pair as the rejects' `detail` shows it; built only for failing pairs, not for every pair judged."""
    return {
        "rule": rule,
        "tier": tier,
        "premise": premise,
        "hypothesis": hypothesis,
        "probs": {label: round(float(p), 4) for label, p in zip(NLI_LABELS, probs)},
        "needs": NLI_LABELS[column],
    }


def _reject(row: dict, reason: str, detail: str) -> dict:
    return {
        "id": row.get("id"),
        "stage": "filter",
        "reason": reason,
        "detail": detail,
        "caption": row.get("caption"),
        "positive": row.get("positive"),
        "negative": row.get("negative"),
    }
