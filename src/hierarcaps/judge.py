"""The filter's decision on hierarchy rows: structural checks, then one NLI pass over every pair the rules need.

One `Judge` per stage instance decides for every stage that keeps or drops hierarchies: the filter stage on the
student's rows, and the seed and augment stages on the LLM's rows before they train the student (as in HierarCaps
§5.2, seeds are NLI-filtered). Same checks (`checks.check_hierarchy`, with the prompts' example phrases), same NLI
model and thresholds (the profile's `filter` section), same reject reasons and details.

NLI rules, for a positive hierarchy p (tier 1 generic .. tier 4 = caption) and an optional negative n:
- `nli_positive_entails`:          p[i+1] entails p[i]          (i = 1..3)
- `nli_caption_entails`:           the caption p[4] entails p[i] (i = 1..2; p[4] => p[3] is the rule above)
- `nli_negative_contradicts`:      n[i] contradicts p[i]        (premise p[i], hypothesis n[i]; i = 1..4)
- `nli_negative_entails_previous`: n[i] entails p[i-1]          (i = 2..4)
- `nli_joint` (when a joint threshold is set): the mean over all those pairs of log P(required label) reaches it
  (`engines.base.mean_log_prob`; the learned stand-in's card sets it, see hierarcaps.nli.corrupt).
A row is kept when every pair passes its threshold and the joint rule holds. Every rule is evaluated on every row
that reaches NLI, so the stats give each rule's own accept rate (`checked:<rule>`, `pass:<rule>`), not only the
first failure; the reject reason is the first failing rule in the order above, with the failing pair (for
`nli_joint`, the row's weakest pair), its side (`positive`: the positive hierarchy is wrong; `negative`: the negative
is), its tier and its probabilities in the JSON `detail`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import version
from typing import Any

import numpy as np

from hierarcaps import schema
from hierarcaps.checks import check_hierarchy, check_text, prompt_phrases
from hierarcaps.config import Profile
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT, NLI_LABELS, NLIModel, mean_log_prob
from hierarcaps.engines.nli import load_nli, nli_model_id, score_pairs
from hierarcaps.prompts import load_prompt
from hierarcaps.stats import Stats

log = logging.getLogger(__name__)

# (rule, reject reason, NLI column that must reach the threshold), in the order a row's reason is chosen.
RULES = (
    ("nli_positive_entails", "nli_positive_not_entailed", ENTAILMENT),
    ("nli_caption_entails", "nli_caption_not_entailed", ENTAILMENT),
    ("nli_negative_contradicts", "nli_negative_not_contradicting", CONTRADICTION),
    ("nli_negative_entails_previous", "nli_negative_not_entailing_previous", ENTAILMENT),
)
REQUIRED = {rule: column for rule, _, column in RULES}  # the NLI column each rule needs
JOINT = ("nli_joint", "nli_joint_too_weak")
STRUCTURAL = "structural"
POSITIVE_RULES = frozenset({"nli_positive_entails", "nli_caption_entails"})
RULES_VERSION = "2: the caption entails every tier"  # in the fingerprint: a new rule set redoes finished shards


def rule_pairs(positive: list[str], negative: list[str] | None) -> list[tuple[str, int, str, str]]:
    """(rule, tier, premise, hypothesis) of every pair a row needs. `tier` (1-based) names the tier under test:
    the hypothesis for positive pairs (tier i+1 entails tier i), the negative tier for negative pairs."""
    pairs = [("nli_positive_entails", i, positive[i], positive[i - 1]) for i in range(1, schema.TIERS)]
    pairs += [("nli_caption_entails", i + 1, positive[-1], positive[i]) for i in range(schema.TIERS - 2)]
    if negative is not None:
        pairs += [pair for i in range(schema.TIERS) for pair in negative_tier_pairs(positive, i + 1, negative[i])]
    return pairs


def negative_tier_pairs(positive: list[str], tier: int, text: str) -> list[tuple[str, int, str, str]]:
    """The pairs of `rule_pairs` that negative tier `tier` (1-based) = `text` must pass: it contradicts positive tier
    `tier` and, from tier 2 on, entails positive tier `tier` - 1."""
    pairs = [("nli_negative_contradicts", tier, positive[tier - 1], text)]
    if tier > 1:
        pairs.append(("nli_negative_entails_previous", tier, text, positive[tier - 2]))
    return pairs


@dataclass
class Verdict:
    """One row's fate: accepted (reason None) with its weakest NLI probabilities, or a reason and a detail."""

    reason: str | None = None
    detail: str | None = None  # structural: a sentence; NLI: the failing pair as JSON
    mins: dict = field(default_factory=lambda: {"min_entail": None, "min_contradict": None})


class Judge:
    """Checks + NLI with the profile's `filter` settings; the NLI model is loaded on first use, once."""

    def __init__(self, profile: Profile, nli: NLIModel | None = None):
        self.checks = profile.filter.checks
        self.nli_config = profile.filter.nli
        # The prompts whose worked examples a small LLM copies; augment's examples are accepted seed rows.
        self.example_prompts = tuple(dict.fromkeys((profile.seed.prompt, profile.augment.prompt)))
        # The fingerprint names the model from the config alone, so checking whether a stage is done never loads it.
        self.nli_id = nli_model_id(self.nli_config) if nli is None else nli.model_id
        if nli is not None:  # tests and callers that already hold a model
            self.__dict__["nli"] = nli

    @cached_property
    def nli(self) -> NLIModel:
        model = load_nli(self.nli_config)
        log.info("NLI: %s", model.description)
        return model

    @property
    def nli_loaded(self) -> bool:
        return "nli" in self.__dict__

    @cached_property
    def phrases(self) -> frozenset:
        return prompt_phrases(self.example_prompts) if self.checks.copied_example else frozenset()

    @cached_property
    def thresholds(self) -> dict[str, float | None]:
        cfg = self.nli_config
        card = getattr(self.nli, "thresholds", None) if cfg.use_card_thresholds else None
        chosen = {"entail": cfg.entail_threshold, "contradict": cfg.contradict_threshold, "joint": cfg.joint_threshold}
        if isinstance(card, dict):
            chosen.update({k: None if card[k] is None else float(card[k]) for k in chosen if k in card})
        return chosen

    @cached_property
    def column_thresholds(self) -> dict[int, float]:
        """The threshold per NLI column a rule needs (entailment, contradiction)."""
        return {ENTAILMENT: self.thresholds["entail"], CONTRADICTION: self.thresholds["contradict"]}

    def fingerprint_parts(self) -> dict[str, Any]:
        parts: dict[str, Any] = {"nli_model": self.nli_id, "nli_rules": RULES_VERSION}
        if self.checks.copied_example:
            parts["example_prompts_sha256"] = {name: load_prompt(name).sha256 for name in self.example_prompts}
        if self.checks.non_words:
            parts["word_list"] = f"wordfreq {version('wordfreq')} en large"
        return parts

    def manifest_extra(self, stage: str) -> dict[str, Any]:
        extra: dict[str, Any] = {"nli_description": self.nli.description, "thresholds": self.thresholds}
        if self.nli_config.backend != "cross-encoder":
            extra["note"] = f"{stage} NLI is an offline stand-in for the paper's MNLI model: {self.nli.description}"
        return extra

    def structural(self, positive: list[str] | None, negative: list[str] | None, caption: str | None) -> tuple[str, str] | None:
        return check_hierarchy(positive, negative, caption, self.checks, self.phrases)

    def text_flaw(self, tier: str, caption: str) -> tuple[str, str] | None:
        """The degenerate-text rule (`checks.check_text`) one negative tier breaks, or None."""
        return check_text([tier], "negative", caption, self.checks, self.phrases)

    def judge(self, rows: list[dict], stats: Stats) -> list[Verdict]:
        """A verdict per row (keys positive, negative, caption), in order: the structural checks on every row, then
        one NLI pass over the distinct pairs of the rows that passed. Counts per rule go to `stats`; rejects are
        counted by the caller, which owns the rows."""
        verdicts: list[Verdict] = []
        survivors: list[tuple[Verdict, list]] = []
        for row in rows:
            stats.add(f"checked:{STRUCTURAL}")
            failed = self.structural(row["positive"], row["negative"], row["caption"])
            verdicts.append(Verdict(*failed) if failed else Verdict())
            if not failed:
                stats.add(f"pass:{STRUCTURAL}")
                survivors.append((verdicts[-1], rule_pairs(row["positive"], row["negative"])))
        if not survivors:
            return verdicts
        started = time.perf_counter()
        scores = score_pairs(self.nli, [(p, h) for _, pairs in survivors for _, _, p, h in pairs])
        stats.add("nli_pairs", sum(len(pairs) for _, pairs in survivors))
        stats.add("nli_unique_pairs", len(scores))
        stats.add("nli_seconds", time.perf_counter() - started)
        for verdict, pairs in survivors:
            failure, verdict.mins = self._nli(pairs, scores, stats)
            if failure is not None:
                verdict.reason, verdict.detail = failure[0], json.dumps(failure[1], sort_keys=True)
        return verdicts

    def margins(self, groups: list[list[tuple[str, int, str, str]]]) -> list[float]:
        """For each group of `rule_pairs`-style pairs, how far its weakest pair is above its rule's threshold (>= 0:
        every pair passes), from one NLI pass over the distinct pairs. The joint rule is not part of it."""
        scores = score_pairs(self.nli, [(p, h) for pairs in groups for _, _, p, h in pairs])
        thresholds = self.column_thresholds
        return [min(float(scores[(p, h)][REQUIRED[rule]]) - thresholds[REQUIRED[rule]] for rule, _, p, h in pairs) for pairs in groups]

    def _nli(self, pairs: list[tuple[str, int, str, str]], scores: dict, stats: Stats) -> tuple[tuple[str, dict] | None, dict]:
        """Evaluate every rule on one row; count per rule and per (rule, tier); return the first failure and mins."""
        thresholds = self.column_thresholds
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
                failures[rule] = {"rule": rule, "side": weakest["side"], "mean_log_prob": round(score, 4), "threshold": joint_threshold,
                                  "geometric_mean": round(float(np.exp(score)), 4), "weakest_pair": weakest}
        order = [*((rule, reason) for rule, reason, _ in RULES), JOINT]
        first = next(((reason, failures[rule]) for rule, reason in order if rule in failures), None)
        if first is not None:
            first[1]["also_failed"] = [rule for rule in failures if rule != first[1]["rule"]]
        return first, mins


def _pair_detail(rule: str, tier: int, premise: str, hypothesis: str, probs, column: int) -> dict:
    """A pair as the rejects' `detail` shows it; built only for failing pairs, not for every pair judged."""
    return {
        "rule": rule,
        "side": "positive" if rule in POSITIVE_RULES else "negative",
        "tier": tier,
        "premise": premise,
        "hypothesis": hypothesis,
        "probs": {label: round(float(p), 4) for label, p in zip(NLI_LABELS, probs)},
        "needs": NLI_LABELS[column],
    }
