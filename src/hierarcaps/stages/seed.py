"""Stage `seed`: an instruction LLM writes positive + negative hierarchies for the first `seed.limit` captions.

As in the HierarCaps paper, the LLM runs on a subset only; the augment stage extends it with few-shot prompts and the
distilled student covers the rest. The prompt is `prompts/<seed.prompt>.txt` (placeholder `$caption`).
"""

from __future__ import annotations

from functools import cached_property

from hierarcaps.config import GeneratorConfig
from hierarcaps.prompts import Prompt, load_prompt
from hierarcaps.stage import ShardTask, plan_row_range
from hierarcaps.stages.llm import LLMStage


class SeedStage(LLMStage):
    name = "seed"
    upstream = ("input",)

    @property
    def generator_config(self) -> GeneratorConfig:
        return self.cfg.generator

    @cached_property
    def prompt(self) -> Prompt:
        return load_prompt(self.cfg.prompt)

    def plan(self) -> list[ShardTask]:
        return plan_row_range(self.name, self.run_dir / "input", 0, self.cfg.limit)

    def render(self, row: dict) -> str:
        return self.prompt.render(caption=row["caption"])
