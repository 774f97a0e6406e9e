"""Stage `augment`: few-shot generation for the next `augment.limit` captions, with seed outputs as examples.

Input rows [seed.limit, seed.limit + augment.limit) each get `k` in-context examples drawn from the seed stage's
accepted hierarchies (its part shards: rows that passed the checks and the filter's NLI; rejects never show), sampled by a `random.Random` seeded with the stage seed and the row id (so a rerun, or a
different shard split, shows every caption the same examples). The examples are written in exactly the format the
answer must take. If the seed stage accepted nothing, the seed prompt is used instead and the manifest says so.
"""

from __future__ import annotations

import logging
import random
from functools import cached_property

from hierarcaps import shards
from hierarcaps.config import GeneratorConfig
from hierarcaps.parsing import format_answer
from hierarcaps.prompts import Prompt, load_prompt
from hierarcaps.stage import ShardTask, plan_row_range
from hierarcaps.stages.llm import LLMStage

log = logging.getLogger(__name__)


class AugmentStage(LLMStage):
    name = "augment"
    upstream = ("input", "seed")

    @property
    def generator_config(self) -> GeneratorConfig:
        return self.cfg.generator or self.profile.seed.generator

    @cached_property
    def examples(self) -> list[dict]:
        """The seed stage's accepted rows, in shard order (the order the sampling depends on)."""
        rows: list[dict] = []
        for path in shards.output_shards(self.run_dir / "seed"):
            rows += shards.read_table(path, ["id", "caption", "positive", "negative"]).to_pylist()
        return [r for r in rows if r["negative"] is not None]

    @property
    def fallback(self) -> bool:
        return not self.examples

    @cached_property
    def prompt(self) -> Prompt:
        if self.fallback:
            log.warning("augment: the seed stage accepted no rows; using the seed prompt without examples")
            return load_prompt(self.profile.seed.prompt)
        return load_prompt(self.cfg.prompt)

    def plan(self) -> list[ShardTask]:
        start = self.profile.seed.limit
        return plan_row_range(self.name, self.run_dir / "input", start, start + self.cfg.limit)

    def pick_examples(self, row_id: str) -> list[dict]:
        rng = random.Random(f"{self.cfg.seed}:{row_id}")
        return rng.sample(self.examples, min(self.cfg.k, len(self.examples)))

    def render(self, row: dict) -> str:
        if self.fallback:
            return self.prompt.render(caption=row["caption"])
        shots = [
            f"Caption: {ex['caption']}\n{format_answer(ex['positive'], ex['negative'])}"
            for ex in self.pick_examples(row["id"])
        ]
        return self.prompt.render(examples="\n\n".join(shots), caption=row["caption"])

    def manifest_extra(self) -> dict:
        extra = {**super().manifest_extra(), "examples_available": len(self.examples)}
        if self.fallback:
            fallback = (
                f"augment: the seed stage accepted no hierarchies, so augment used the seed prompt "
                f"({self.profile.seed.prompt}) without in-context examples"
            )
            extra["note"] = "; ".join(filter(None, (fallback, extra.get("note"))))
        return extra
