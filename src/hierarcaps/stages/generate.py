"""Stage `generate`: the distilled student writes a positive and a negative hierarchy for every input caption.

- positive: s2g on the caption ("s2g: <caption>" -> "t1 => t2 => t3"), greedy or beam (`generate.num_beams`);
  positive = [t1, t2, t3, caption]. Output that is not three distinct non-empty tiers (other than the caption) is
  sampled again (`positive_tries`, `positive_temperature`), then rejected (`student_unparsable`, raw text kept).
  A tier 1 that is no category of tier 2 is mended (`negatives.grounded_tier1`: "sport => horse" -> "animal => horse").
  With `judge` and `positive_candidates` > 1, samples join the greedy positive, each also regrouped under its tier 1's
  category (`negatives.regrouped`); of those the judge passes, the ones with the most tiers an edit or proposed noun
  can negate (`infill.negatable`) are kept, and of them the student's most likely.
- negative: for tier i = 1..4, the neg direction from positive tiers 1..i-1 and the positive tier i it must
  contradict ("neg: t1 => ... => t(i-1) | p_i"), *sampled* (`negative_temperature`, `negative_top_p`). A sample
  equal to positive tier i (or empty) is drawn again, up to `negative_tries` samples; each row/tier/try has its own
  seed, so a row's negative does not depend on the batch it shared. If every try is empty the row is rejected
  (`negative_empty`); if every try equals the positive, the last one is kept and the filter stage rejects it.
  With `negative_candidates` > 1 each try draws that many samples per row.
- contradictions by construction (issue #18, `negative_edits` > 0): minimal edits of positive tier i that change only
  what it adds over tier i-1 (`hierarcaps.negatives`: another colour, category member, number, place, action...) join
  the student's usable samples as candidates. A tier-1 candidate that names what the caption shows ("person" for a
  caption about a man) is never one (`negatives.tier1_compatible`).
- with `negative_infill` > 0 (a causal-LM student), nouns the student proposes for a slot one word fills - the place a
  tier puts its subject ("in the air"), a tier 2 that is one noun - are candidates too (`infill.infill_slots`,
  `engines.student_lm.next_words`), chosen only where no edit passes.
- choice: with `judge`, the filter's judge scores every candidate (contradicts positive tier i, entails positive tier
  i-1, at the filter's thresholds); of those that pass, edits before proposed nouns before samples, the one the
  student finds most likely (mean log-probability: fluency) is kept; a tier where none passes is sampled again, and
  after the last try the candidate nearest to passing is kept (the filter then rejects the row, naming the pair). At
  a tier not in `negative_sample_tiers` a sample is never chosen: a row whose tier no edit or proposed noun passes is
  rejected here (`negative_no_contradiction`) and its later tiers are not written, unless `positive_fallbacks` lets it
  try the next positive the judge passed (every negative tier made anew for it). This selects by the filter's NLI,
  so acceptance alone no longer measures quality: issue 11 measured garbage accepted that way with a stand-in judge
  that could not tell contradiction from compatible; the judge now is `minilm-nli` (human labels), and the blind
  review (`hierarcaps review`) is the quality measure. Without the judge, the student's most likely usable sample is kept.
Nothing else here checks meaning: the filter stage tests every pair with NLI, as the HierarCaps paper builds its negatives.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hierarcaps import schema, shards
from hierarcaps.checks import normalize, restates
from hierarcaps.engines.embed import resolve_device
from hierarcaps.engines.nli import content_words
from hierarcaps.judge import Judge, negative_tier_pairs, rule_pairs
from hierarcaps.infill import infill_edits, infill_prompt, infill_slots, negatable
from hierarcaps.negatives import edit_candidates, grounded_tier1, regrouped, tier1_compatible
from hierarcaps.stage import ShardOutput, ShardTask, Stage, StageError, plan_row_range, read_task_rows
from hierarcaps.student.pairs import S2G, negative_source, source_text
from hierarcaps.stats import Stats

log = logging.getLogger(__name__)


def parse_general_tiers(text: str, caption: str | None = None) -> list[str] | None:
    """"t1 => t2 => t3" -> [t1, t2, t3]; None unless exactly three non-empty tiers, all different from each other
    and from the caption (a tier said twice is not a hierarchy; greedy decoding sometimes writes tier 2 again)."""
    tiers = schema.split_tiers(text)
    if len(tiers) != schema.TIERS - 1 or not all(tiers):
        return None
    distinct = {normalize(t) for t in tiers} | ({normalize(caption)} if caption is not None else set())
    return tiers if len(distinct) == len(tiers) + (caption is not None) else None


def adds_content_each_tier(positive: list[str]) -> bool:
    """Every tier has a content word the tier before lacks ("dog => a dog" says nothing new)."""
    return all(content_words(b) - content_words(a) for a, b in zip(positive, positive[1:]))


def positive_tiers(text: str, caption: str) -> list[str] | None:
    """The s2g output's three tiers (`parse_general_tiers`), tier 1 made a category of tier 2 where it is none
    (`negatives.grounded_tier1`: "breed => sheep" -> "animal => sheep"); None if not a hierarchy."""
    tiers = parse_general_tiers(text, caption)
    return [grounded_tier1(tiers[0], tiers[1]), *tiers[1:]] if tiers else tiers


def first_tier(text: str) -> str:
    return schema.split_tiers(text)[0]


def _other_positives(row: dict) -> list[list[str]]:
    """The row's next positives, less those that would fail as its last did: the same tier it failed at and the same
    tier before it give the same edits and proposed nouns, so the same verdicts."""
    tier = row["_rejected_at"]
    key = lambda tiers: [normalize(t) for t in tiers[max(tier - 2, 0) : tier]]  # noqa: E731
    return [tiers for tiers in row["_alternatives"] if key(tiers + [row["caption"]]) != key(row["positive"])]


def row_seed(seed: int, row_id: str, tier: int, attempt: int) -> int:
    return int(hashlib.sha256(f"{seed}:{row_id}:{tier}:{attempt}".encode()).hexdigest()[:8], 16)


class GenerateStage(Stage):
    name = "generate"
    upstream = ("input", "distill")
    output_schema = schema.HIERARCHIES

    @cached_property
    def distill_manifest(self) -> dict:
        manifest = shards.read_manifest(self.run_dir / "distill")
        if manifest is None or "model_dir" not in manifest:
            raise StageError(f"{self.run_dir / 'distill'}: no finished distill stage (manifest with model_dir); run distill first")
        return manifest

    @property
    def model_dir(self) -> Path:
        return self.run_dir / self.distill_manifest["model_dir"]

    @cached_property
    def device(self) -> str:
        return resolve_device(self.cfg.device)

    @cached_property
    def student(self):
        """(model, tokenizer), loaded once per stage instance (a flow calls run_shard per shard on one instance)."""
        from hierarcaps.engines.seq2seq import load_student

        return load_student(self.model_dir, self.device)

    def model_label(self) -> str:
        base = self.distill_manifest.get("models", {}).get("student", "student")
        return f"{base} distilled ({self.distill_manifest['model_dir']}, sha256 {self.distill_manifest['model_sha256'][:12]})"

    @cached_property
    def judge(self) -> Judge:
        return Judge(self.profile)

    def fingerprint_parts(self) -> dict[str, Any]:
        # the model file itself, not just distill's config: a retrained student must invalidate these shards
        parts: dict[str, Any] = {"student_sha256": self.distill_manifest["model_sha256"]}
        if self.cfg.judge:
            nli, checks = self.profile.filter.nli, self.profile.filter.checks
            parts["judge"] = {"nli_model": self.judge.nli_id, "checks": checks.digest(),
                              **nli.model_dump(include={"entail_threshold", "contradict_threshold", "use_card_thresholds"})}
        return parts

    def models(self) -> dict[str, str]:
        return {"student": self.model_label(), **({"judge": self.judge.nli_id} if self.cfg.judge else {})}

    def plan(self) -> list[ShardTask]:
        return plan_row_range(self.name, self.run_dir / "input", 0, None)

    def _generate(self, sources: list[str], **kwargs) -> list[str]:
        from hierarcaps.engines.seq2seq import student_generate

        model, tokenizer = self.student
        return student_generate(
            model, tokenizer, sources, max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.batch_size,
            max_source_len=self.profile.distill.max_source_len, **kwargs,
        )

    def process(self, task: ShardTask) -> ShardOutput:
        from hierarcaps.engines.runtime import torch_threads
        from hierarcaps.engines.seq2seq import student_threads

        rows = read_task_rows(task).to_pylist()
        out, rejects, stats = [], [], Stats()
        with torch_threads(student_threads(self.profile.distill.student, self.device)):
            for lo in range(0, len(rows), self.cfg.batch_size):
                batch = rows[lo : lo + self.cfg.batch_size]
                good, bad = self._process_batch(batch, stats)
                out += good
                rejects += bad
                self.advance(len(batch))
        table = pa.Table.from_pylist(out, schema=schema.HIERARCHIES)
        return ShardOutput(table, schema.rejects_table(rejects), stats)

    def _process_batch(self, rows: list[dict], stats: Stats) -> tuple[list[dict], list[dict]]:
        live, rejects = [], []
        parsed, alternatives = self._positives(rows, stats)
        for row, (text, tiers), others in zip(rows, parsed, alternatives):
            if tiers is None:
                stats.reject("student_unparsable")
                detail = f"s2g output is not 3 distinct tiers (other than the caption) joined by ' => ': {text!r}"
                rejects.append(self._reject(row, "student_unparsable", detail, text))
                continue
            stats.add("s2g_parsed")
            live.append({**row, "positive": tiers + [row["caption"]], "negative": [None] * schema.TIERS, "raw_negative": [None] * schema.TIERS,
                         "_alternatives": others})
        self._negatives(live, stats)
        for _ in range(self.cfg.positive_fallbacks):
            for row in live:
                if "_rejected_at" in row:
                    row["_alternatives"] = _other_positives(row)
            again = [r for r in live if "_rejected_at" in r and r["_alternatives"]]
            if not again:
                break
            stats.add("positive_fallbacks", len(again))
            for row in again:  # the next positive the judge passed, with all its negative tiers made anew
                for key in ("_rejected_at", "_edits", "_infill", "_margin"):
                    row.pop(key, None)
                row.update(positive=row["_alternatives"].pop(0) + [row["caption"]], negative=[None] * schema.TIERS,
                           raw_negative=[None] * schema.TIERS, _fallback=True)
            self._negatives(again, stats)
        stats.add("positive_fallback_kept", sum(1 for r in live if r.get("_fallback") and "_rejected_at" not in r))
        out = []
        for row in live:
            if "_rejected_at" in row:
                tier = row["_rejected_at"]
                stats.reject("negative_no_contradiction")
                detail = (f"negative tier {tier}: no edit or proposed noun that the judge finds contradicting positive tier {tier}"
                          f" and entailing tier {tier - 1} (samples are not used at this tier: generate.negative_sample_tiers)")
                rejects.append(self._reject(row, "negative_no_contradiction", detail, row["negative"][tier - 1], row["positive"]))
                continue
            empty = [i + 1 for i, t in enumerate(row["negative"]) if not t]
            if empty:
                stats.reject("negative_empty")
                detail = f"negative tier {empty[0]}: {self.cfg.negative_tries} samples, all empty"
                rejects.append(self._reject(row, "negative_empty", detail, row["raw_negative"][empty[0] - 1], row["positive"]))
                continue
            out.append({"id": row["id"], "caption": row["caption"], "image_url": row.get("image_url"), "positive": row["positive"],
                        "negative": row["negative"], "source": "generate", "model": self.model_label()})
        return out, rejects

    def _negatives(self, rows: list[dict], stats: Stats) -> None:
        for tier in range(1, schema.TIERS + 1):  # a row already rejected at an earlier tier costs nothing more
            self._sample_negative_tier([r for r in rows if "_rejected_at" not in r], tier, stats)

    def _positives(self, rows: list[dict], stats: Stats) -> tuple[list[tuple[str, list[str] | None]], list[list[list[str]]]]:
        """(s2g text, its three tiers or None) per row: greedy (or beam) first; rows whose text is not a hierarchy are
        sampled again, up to `positive_tries` in all, each row and try with its own seed. With the judge, also each
        row's other positives it passed, best first (`_judge_positives`)."""
        sources = [source_text(S2G, [r["caption"]]) for r in rows]
        texts = self._generate(sources, num_beams=self.cfg.num_beams)
        parsed = [(text, positive_tiers(text, row["caption"])) for row, text in zip(rows, texts)]
        for attempt in range(1, self.cfg.positive_tries):
            bad = [i for i, (_, tiers) in enumerate(parsed) if tiers is None]
            if not bad:
                break
            stats.add("positive_resamples", len(bad))
            again = self._generate([sources[i] for i in bad], sample=True, temperature=self.cfg.positive_temperature,
                                   top_p=self.cfg.negative_top_p, seed=[row_seed(self.cfg.seed, rows[i]["id"], 0, attempt) for i in bad])
            for i, text in zip(bad, again):
                parsed[i] = (text, positive_tiers(text, rows[i]["caption"]))
        if self.cfg.judge and self.cfg.positive_candidates > 1:
            return parsed, self._judge_positives(rows, sources, parsed, stats)
        return parsed, [[] for _ in rows]

    def _judge_positives(self, rows: list[dict], sources: list[str], parsed: list, stats: Stats) -> list[list[list[str]]]:
        """Of each row's candidates (the greedy hierarchy and `positive_candidates` - 1 samples, each also regrouped
        under its tier 1's category: `negatives.regrouped`) that pass the judge's checks and positive-side NLI rules and
        add content at every tier, keep - among those with the most tiers an edit or proposed noun can negate
        (`infill.negatable`, with `negative_edits`) - the one the student finds most likely; a row where none
        passes keeps the greedy one. Returns each row's other passing candidates in the same order (the fallbacks
        of `positive_fallbacks`)."""
        k = self.cfg.positive_candidates - 1
        sampled = self._generate([s for s in sources for _ in range(k)], sample=True, temperature=self.cfg.positive_temperature,
                                 top_p=self.cfg.negative_top_p,
                                 seed=[row_seed(self.cfg.seed, r["id"], 0, 100 + j) for r in rows for j in range(k)])
        options = []  # per row: (text, tiers, regrouped) of each distinct usable candidate
        for n, row in enumerate(rows):
            extra = [(t, tiers) for t in sampled[n * k : (n + 1) * k] if (tiers := positive_tiers(t, row["caption"]))]
            seen, mine = set(), []
            for text, tiers in [parsed[n], *extra]:
                other = regrouped(tiers) if tiers else None
                for option, as_text, regroup in ((tiers, text, False), (other, other and schema.SEPARATOR.join(other), True)):
                    key = tuple(map(normalize, option)) if option else None
                    if option and key not in seen and adds_content_each_tier(option + [row["caption"]]) and not self.judge.structural(
                            option + [row["caption"]], None, row["caption"]):
                        seen.add(key)
                        mine.append((as_text, option, regroup))
            options.append(mine)
        positives = [tiers + [row["caption"]] for row, mine in zip(rows, options) for _, tiers, _ in mine]
        passed = iter(m >= 0 for m in self.judge.margins([rule_pairs(positive, None) for positive in positives]))
        slots = bool(self.cfg.negative_infill) and self.can_infill
        ranked = []
        for n, mine in enumerate(options):
            good = [option for option in mine if next(passed)]
            stats.add("positive_judge_passed", int(bool(good)))
            if not good:
                continue
            # a positive whose tiers have no edit gets no negative (rejected): the most negatable tiers first
            counts = [negatable(tiers + [rows[n]["caption"]], slots) for _, tiers, _ in good] if self.cfg.negative_edits else [0] * len(good)
            if not self.cfg.positive_fallbacks:  # the less negatable would never be used: not scored
                good, counts = [o for o, c in zip(good, counts) if c == max(counts)], [max(counts)] * counts.count(max(counts))
            ranked.append((n, good, counts))
        pairs = [(sources[n], text) for n, good, _ in ranked if len(good) > 1 for text, _, _ in good]
        scores = iter(self._score([s for s, _ in pairs], [t for _, t in pairs]) if pairs else [])
        alternatives: list[list[list[str]]] = [[] for _ in rows]
        for n, good, counts in ranked:
            fluency = [next(scores) for _ in good] if len(good) > 1 else [0.0]
            order = sorted(range(len(good)), key=lambda i: (counts[i], fluency[i]), reverse=True)
            text, tiers, regroup = good[order[0]]
            parsed[n] = (text, tiers)
            alternatives[n] = [good[i][1] for i in order[1:]]
            stats.add("positive_regrouped", int(regroup))
        return alternatives

    def _score(self, sources: list[str], targets: list[str]) -> list[float]:
        from hierarcaps.engines.seq2seq import student_score

        model, tokenizer = self.student
        return student_score(model, tokenizer, sources, targets, batch_size=self.cfg.batch_size,
                             max_source_len=self.profile.distill.max_source_len)

    def _sample_negative_tier(self, rows: list[dict], tier: int, stats: Stats) -> None:
        """Fill negative[tier-1] of every row: one batched sampling call per try, only for rows still unresolved.
        Each try draws `negative_candidates` samples per row; those that are usable (not empty, not made only of the
        positive tier's own words: `checks.restates`), with the tier's minimal edits on the first try, are candidates."""
        pending, k = list(rows), self.cfg.negative_candidates
        infills = self._infills(rows, tier) if self.cfg.negative_infill and tier > 1 and self.can_infill else {}
        for attempt in range(self.cfg.negative_tries):
            if not pending or attempt and self.cfg.judge and tier not in self.cfg.negative_sample_tiers:
                break  # edits are drawn on the first try only: more samples cannot help a tier that takes none
            if attempt:
                stats.add("negative_resamples", len(pending))
            sources = [negative_source(r["positive"], tier) for r in pending]
            texts = self._generate(
                [s for s in sources for _ in range(k)],
                sample=True,
                temperature=self.cfg.negative_temperature,
                top_p=self.cfg.negative_top_p,
                seed=[row_seed(self.cfg.seed, r["id"], tier, attempt * k + j) for r in pending for j in range(k)],
            )
            still, choices = [], []
            for n, row in enumerate(pending):
                drawn = texts[n * k : (n + 1) * k]
                firsts = [c for c in (first_tier(t) for t in drawn) if c]
                usable = [c for c in dict.fromkeys(firsts) if not restates(c, row["positive"][tier - 1])
                          and not (tier == 1 and tier1_compatible(c, row["caption"]))]
                if attempt == 0 and self.cfg.negative_edits:
                    edits = self._edits(row, tier)
                    stats.add("negative_edit_candidates", len(edits))
                    row.setdefault("_edits", {})[tier] = set(edits)
                    usable += [e for e in edits if e not in usable]
                if attempt == 0 and infills.get(id(row)):
                    stats.add("negative_infill_candidates", len(infills[id(row)]))
                    row.setdefault("_infill", {})[tier] = set(infills[id(row)])
                    usable += [e for e in infills[id(row)] if e not in usable]
                row["raw_negative"][tier - 1] = drawn[-1]
                if self.cfg.judge:  # a text the filter's rules reject (a worked example's "black dog") is no candidate
                    flawed = [c for c in usable if self.judge.text_flaw(c, row["caption"])]
                    stats.add("negative_text_flawed", len(flawed))
                    usable = [c for c in usable if c not in flawed]
                if usable:
                    choices.append((row, sources[n], usable))
                    continue
                if firsts and not row["negative"][tier - 1]:  # every sample restates the positive: keep one in case no later try does better
                    row["negative"][tier - 1] = firsts[-1]
                still.append(row)
            pending = still + self._choose(choices, tier, stats)
        stats.add("negative_restates_positive", sum(1 for r in pending if r["negative"][tier - 1] and restates(r["negative"][tier - 1], r["positive"][tier - 1])))
        if self.cfg.judge:
            stats.add("negative_unjudged", sum(1 for r in pending if r["negative"][tier - 1]))
            if tier not in self.cfg.negative_sample_tiers:
                for row in pending:
                    row["_rejected_at"] = tier

    @cached_property
    def can_infill(self) -> bool:
        """Whether the student proposes next words (`negative_infill`): a causal LM does, a seq2seq one has no
        next-word distribution over a prefix, and is built without proposed nouns (said once)."""
        if self.student[0].config.is_encoder_decoder:
            log.warning("generate.negative_infill is for a causal-LM student (distill.student.kind = 'causal-lora'); skipped")
            return False
        return True

    def _infills(self, rows: list[dict], tier: int) -> dict[int, list[str]]:
        """Per row (by id), positive tier `tier` with one of its slots (`infill.infill_slots`) filled by a word the
        student proposes there (`infill.infill_edits`, up to `negative_infill` per slot)."""
        from hierarcaps.engines.student_lm import next_words

        model, tokenizer = self.student
        slots = [(row, start, end) for row in rows for start, end in infill_slots(row["positive"], tier)]
        prompts = [infill_prompt(row["positive"], tier, start, end) for row, start, end in slots]
        out: dict[int, list[str]] = {}
        for (row, start, end), proposals in zip(slots, next_words(model, tokenizer, prompts, batch_size=self.cfg.batch_size)):
            out.setdefault(id(row), []).extend(infill_edits(row["positive"], tier, start, end, proposals, self.cfg.negative_infill))
        return out

    def _edits(self, row: dict, tier: int) -> list[str]:
        rng = np.random.default_rng(row_seed(self.cfg.seed, row["id"], tier, -1))
        return edit_candidates(row["positive"], tier, rng, limit=self.cfg.negative_edits)

    def _choose(self, choices: list[tuple[dict, str, list[str]]], tier: int, stats: Stats) -> list[dict]:
        """Set each row's negative tier from its candidates; return the rows the judge found no candidate for (they
        keep the candidate nearest to passing and are sampled again while tries remain)."""
        passing = {id(row): usable for row, _, usable in choices}
        unresolved: list[dict] = []
        if self.cfg.judge and choices:
            margins = iter(self.judge.margins([negative_tier_pairs(row["positive"], tier, c) for row, _, usable in choices for c in usable]))
            for row, _, usable in choices:
                scored = [(next(margins), c) for c in usable]
                passed = [c for m, c in scored if m >= 0]
                # an edit the judge accepts beats a sample it accepts: blind reviewers found 80-100% of the chosen
                # edits valid at every tier, and 25-50% of the chosen samples at tiers 2-4 (bench/README.md)
                edits, infill = row.get("_edits", {}).get(tier, ()), row.get("_infill", {}).get(tier, ())
                samples = passed if tier in self.cfg.negative_sample_tiers else []
                passing[id(row)] = [c for c in passed if c in edits] or [c for c in passed if c in infill] or samples
                if not passing[id(row)]:
                    margin, best = max(scored)
                    if row.setdefault("_margin", {}).get(tier, -np.inf) < margin:
                        row["_margin"][tier], row["negative"][tier - 1] = margin, best
                    unresolved.append(row)
            stats.add("negative_judged", len(choices))
            stats.add("negative_judge_passed", len(choices) - len(unresolved))
        ranked = [(source, c) for row, source, _ in choices for c in passing[id(row)] if len(passing[id(row)]) > 1]
        scores = iter(self._score([s for s, _ in ranked], [c for _, c in ranked]) if ranked else [])
        for row, _, _ in choices:
            usable = passing[id(row)]
            if len(usable) > 1:
                stats.add("negative_ranked")
                row["negative"][tier - 1] = max(zip([next(scores) for _ in usable], usable))[1]
            elif usable:
                row["negative"][tier - 1] = usable[0]
            if usable and tier in row.get("_edits", {}):
                stats.add("negative_from_edit", int(row["negative"][tier - 1] in row["_edits"][tier]))
            if usable and tier in row.get("_infill", {}):
                stats.add("negative_from_infill", int(row["negative"][tier - 1] in row["_infill"][tier]))
        return unresolved

    def _reject(self, row: dict, reason: str, detail: str, raw: str | None, positive: list[str] | None = None) -> dict:
        return {"id": row["id"], "stage": self.name, "reason": reason, "detail": detail, "caption": row["caption"], "positive": positive,
                "raw": raw, "source_file": row.get("source_file"), "source_row": row.get("source_row")}

    def manifest_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"model_dir": self.distill_manifest["model_dir"]}
        if self.profile.distill.student.kind == "seq2seq" and not self.profile.distill.student.pretrained:
            extra["note"] = "hierarchies written by the weak offline student (see the distill note); negatives are unfiltered samples"
        return extra
