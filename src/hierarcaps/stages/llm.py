"""What the seed and augment stages share: prompt -> generate -> parse -> check -> retry -> NLI -> rows and rejects.

Every row first gets one attempt at the generator's own temperature (greedy in the shipped profiles). Rows whose
answer fails to parse or fails the structural checks are retried up to `retries` times with sampling
(RETRY_TEMPERATURE) and a seed derived from the stage seed, the attempt and the rows' ids, so a rerun reproduces the
same samples. Then the rows that passed go through the filter's judge (hierarcaps.judge: the same checks, NLI model
and thresholds as the filter stage), one NLI pass per shard, so only hierarchies the filter would keep train the
student (HierarCaps §5.2). A row the NLI rejects is not regenerated: retrying until the filter's own model agrees
is selecting by it, which issue #11 measured to game the stand-in (best of n by the filter's NLI: garbage accepted).
A rejected row goes to the rejects shard with the reason, a detail (the filter's JSON for NLI failures: the failing
pair and its probabilities) and the raw model text.

Stats per shard (summed over attempts): llm_answers, llm_parsed (answers that parsed), llm_passed_checks (answers
that also passed hierarcaps.checks), the judge's checked:/pass: counts per NLI rule, plus the usual
rows_in/out/rejected and reject:<reason>.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from abc import abstractmethod
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa

from hierarcaps import schema
from hierarcaps.config import GeneratorConfig
from hierarcaps.engines.base import Generator
from hierarcaps.engines.generation import generator_id, load_generator
from hierarcaps.judge import Judge
from hierarcaps.parsing import ParseError, parse_answer
from hierarcaps.prompts import Prompt
from hierarcaps.stage import ShardOutput, ShardTask, Stage, StageError, read_task_rows
from hierarcaps.stats import Stats

log = logging.getLogger(__name__)

RETRY_TEMPERATURE = 0.7  # enough variety to escape a bad greedy answer, little enough to stay on format


@dataclass
class _Attempt:
    """The latest outcome for one input row."""

    row: dict
    prompt: str
    raw: str | None = None
    positive: list[str] | None = None
    negative: list[str] | None = None
    reason: str | None = None  # None = accepted
    detail: str | None = None
    judged: bool = False  # rejected by the NLI after the retries (its detail is the filter's JSON)


def retry_seed(stage_seed: int, attempt: int, ids: list[str]) -> int:
    """A sampling seed fixed by the stage seed, the attempt number and the rows in the batch."""
    key = f"{stage_seed}:{attempt}:" + ",".join(ids)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


class LLMStage(Stage):
    """A stage that turns each input caption into a positive + negative hierarchy with an instruction LLM."""

    upstream = ("input",)
    output_schema = schema.HIERARCHIES

    # ------------------------------------------------------------ what subclasses provide

    @property
    @abstractmethod
    def generator_config(self) -> GeneratorConfig: ...

    @property
    @abstractmethod
    def prompt(self) -> Prompt: ...

    @abstractmethod
    def render(self, row: dict) -> str:
        """The user message for one input row."""

    # ------------------------------------------------------------ shared

    def __init__(self, profile, run_dir):
        super().__init__(profile, run_dir)
        # Optional back-ends are checked when the stage is built, not after the upstream work is done.
        if self.generator_config.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise StageError(f"stage {self.name!r} uses the vLLM back-end; install it: pip install 'hierarcaps[vllm]'")
        self.judge = Judge(profile)

    @cached_property
    def generator(self) -> Generator:
        return load_generator(self.generator_config)

    def fingerprint_parts(self) -> dict:
        # The filter's settings decide which rows this stage keeps: changing its checks or NLI model redoes the stage.
        judged = {"filter_config": self.profile.filter.digest(), **self.judge.fingerprint_parts()}
        return {"prompt": self.prompt.name, "prompt_sha256": self.prompt.sha256, **judged}

    def models(self) -> dict[str, str]:
        # From the config, not the loaded models: finalize() must not load an LLM just to name it.
        nli = self.judge.nli.model_id if self.judge.nli_loaded else self.judge.nli_id
        return {"generator": generator_id(self.generator_config), "nli": nli}

    def manifest_extra(self) -> dict:
        # Without a row to judge the NLI model was never loaded; finalize() does not load it just to describe it.
        return self.judge.manifest_extra(self.name) if self.judge.nli_loaded else {}

    def _check(self, attempt: _Attempt, raw: str) -> None:
        attempt.raw = raw
        attempt.positive = attempt.negative = None
        try:
            answer = parse_answer(raw)
        except ParseError as err:
            attempt.reason, attempt.detail = f"parse:{err.reason}", err.detail
            return
        caption = attempt.row["caption"]
        attempt.positive, attempt.negative = answer.hierarchy(caption), answer.negative
        failed = self.judge.structural(attempt.positive, attempt.negative, caption)
        attempt.reason, attempt.detail = failed if failed else (None, None)

    def _generate(self, batch: list[_Attempt], attempt_no: int, stats: Stats) -> None:
        if attempt_no == 0:
            raws = self.generator.generate([a.prompt for a in batch])
        else:
            seed = retry_seed(self.cfg.seed, attempt_no, [a.row["id"] for a in batch])
            raws = self.generator.generate([a.prompt for a in batch], temperature=RETRY_TEMPERATURE, seed=seed)
        if len(raws) != len(batch):
            raise RuntimeError(f"{self.name}: generator returned {len(raws)} answers for {len(batch)} prompts")
        for attempt, raw in zip(batch, raws):
            self._check(attempt, raw)
            stats.add("llm_answers")
            if not (attempt.reason or "").startswith("parse:"):
                stats.add("llm_parsed")
            if attempt.reason is None:
                stats.add("llm_passed_checks")

    def process(self, task: ShardTask) -> ShardOutput:
        rows = read_task_rows(task).to_pylist()
        attempts = [_Attempt(row=row, prompt=self.render(row)) for row in rows]
        stats = Stats()
        retries = self.cfg.retries
        size = self.generator_config.batch_size
        pending = attempts
        for attempt_no in range(retries + 1):
            for lo in range(0, len(pending), size):
                batch = pending[lo : lo + size]
                self._generate(batch, attempt_no, stats)
                # A row is finished when accepted or out of attempts: that is when the progress bar moves.
                self.advance(sum(1 for a in batch if a.reason is None or attempt_no == retries))
            pending = [a for a in pending if a.reason is not None]
            log.info("%s shard %d attempt %d: %d rows still failing", self.name, task.index, attempt_no + 1, len(pending))
            if not pending:
                break
        self._nli(attempts, stats)
        return ShardOutput(self._accepted(attempts), self._rejected(attempts, retries + 1, stats), stats)

    def _nli(self, attempts: list[_Attempt], stats: Stats) -> None:
        """The filter's verdict on the rows that passed the checks; its rejects are final (see the module doc)."""
        passed = [a for a in attempts if a.reason is None]
        rows = [{"positive": a.positive, "negative": a.negative, "caption": a.row["caption"]} for a in passed]
        for attempt, verdict in zip(passed, self.judge.judge(rows, stats)):
            attempt.reason, attempt.detail, attempt.judged = verdict.reason, verdict.detail, verdict.reason is not None

    def _accepted(self, attempts: list[_Attempt]) -> pa.Table:
        model = self.generator.model_id if attempts else generator_id(self.generator_config)
        rows = [
            {
                "id": a.row["id"],
                "caption": a.row["caption"],
                "image_url": a.row.get("image_url"),
                "positive": a.positive,
                "negative": a.negative,
                "source": self.name,
                "model": model,
            }
            for a in attempts
            if a.reason is None
        ]
        return pa.Table.from_pylist(rows, schema=schema.HIERARCHIES)

    def _rejected(self, attempts: list[_Attempt], tries: int, stats: Stats) -> pa.Table:
        rows = []
        for a in attempts:
            if a.reason is None:
                continue
            stats.reject(a.reason)
            rows.append(
                {
                    "id": a.row["id"],
                    "stage": self.name,
                    "reason": a.reason,
                    "detail": a.detail if a.judged else f"{a.detail} (last of up to {tries} attempts)",
                    "caption": a.row["caption"],
                    "positive": a.positive,
                    "negative": a.negative,
                    "raw": a.raw,
                    "source_file": a.row.get("source_file"),
                    "source_row": a.row.get("source_row"),
                }
            )
        return schema.rejects_table(rows)
