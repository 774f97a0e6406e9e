"""The one shape every build stage has: plan shard tasks, process one shard, finalize a manifest.

    stage = SeedStage(profile, run_dir)
    executor.run_stage(stage)                      # the one loop, the shards in this process
    executor.run_stage(stage, RayExecutor(runner)) # the same loop, the shards on a Ray actor pool

`run_shard` is the body every executor runs for one shard, and is safe to call from several processes at once:
a shard whose done marker has this fingerprint and whose files still have their recorded sha256 is skipped;
otherwise it is claimed with an O_EXCL lock, processed, its rows checked, written to temp names and renamed, and
marked done last. So a killed run resumes, a rerun of a finished stage is a no-op, a damaged shard is redone alone,
and a changed config or prompt changes the fingerprint and redoes the stage. The loop around it (plan, hand the
shards to an executor, wait for shards other workers hold, finalize) is `hierarcaps.executor.run_stage`; this module
never imports it, so the arrow points one way (executor -> stage).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import pyarrow as pa

from hierarcaps import __version__, schema, shards
from hierarcaps.config import Profile, Section
from hierarcaps.stats import ROWS_IN, ROWS_OUT, ROWS_REJECTED, Stats

log = logging.getLogger(__name__)

class StageError(RuntimeError):
    """A stage cannot run: missing upstream output, missing optional dependency, bad input file."""


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: output shard `index`, made from rows [start, stop) of the input shard files."""

    stage: str
    index: int
    inputs: tuple[str, ...]
    start: int = 0
    stop: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ShardTask":
        return cls(**{**data, "inputs": tuple(data["inputs"])})


@dataclass
class ShardOutput:
    out: pa.Table
    rejects: pa.Table
    stats: Stats = field(default_factory=Stats)


class Stage(ABC):
    name: ClassVar[str]
    upstream: ClassVar[tuple[str, ...]] = ()  # stage folders whose outputs this stage reads
    output_schema: ClassVar[pa.Schema] = schema.HIERARCHIES
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules this stage needs, checked before any work

    def __init__(self, profile: Profile, run_dir: str | Path):
        self.profile = profile
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / self.name
        self.advance: Callable[[int], None] = lambda n: None  # progress hook, rows processed
        self.worker: str | None = None  # who writes this stage's shards (done markers, locks); None = host:pid
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise StageError(f"stage {self.name!r} needs {', '.join(missing)}; install it (see README, extras)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(run_dir={str(self.run_dir)!r})"

    # ------------------------------------------------------------ what subclasses provide

    @property
    def cfg(self) -> Section:
        """This stage's config section (the part of the profile its fingerprint hashes)."""
        return self.profile.section(self.name)

    @abstractmethod
    def plan(self) -> list[ShardTask]:
        """The shard tasks of this stage, deterministic for the same inputs and config."""

    @abstractmethod
    def process(self, task: ShardTask) -> ShardOutput:
        """Transform one shard. Every row read must end in `out` or `rejects`."""

    def fingerprint_parts(self) -> dict[str, Any]:
        """Extra inputs of the fingerprint (prompt hashes, ...)."""
        return {}

    def models(self) -> dict[str, str]:
        """Model ids this stage uses, for the manifest and the dataset card."""
        return {}

    def manifest_extra(self) -> dict[str, Any]:
        """Extra manifest fields (e.g. a `note` the CLI prints, the model directory)."""
        return {}

    def input_rows(self, task: ShardTask) -> int:
        """Rows the task reads: the accounting check compares it with rows out + rejected."""
        total = sum(_num_rows(Path(p)) for p in task.inputs)
        stop = total if task.stop is None else min(task.stop, total)
        return max(0, stop - task.start)

    # ------------------------------------------------------------ the shared machinery

    def upstream_digest(self) -> dict[str, str]:
        """Each upstream stage's fingerprint + shard checksums, after checking its shards still have them: a
        downstream stage never reads an unverified shard."""
        digests = {}
        for name in self.upstream:
            manifest = shards.read_manifest(self.run_dir / name)
            if manifest is None:
                raise StageError(f"{self.run_dir / name}: no manifest; run stage {name!r} before {self.name!r}")
            problems = shards.verify_stage(self.run_dir / name)
            if problems:
                raise StageError(f"stage {name!r} is damaged, rerun it before {self.name!r}: " + "; ".join(problems))
            digests[name] = manifest["fingerprint"] + ":" + shards.sha256_text(
                json.dumps([s["sha256"] for s in manifest["shards"]])
            )
        return digests

    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            parts = {
                "stage": self.name,
                "schema_version": schema.SCHEMA_VERSION,
                "config": self.cfg.digest(),
                "upstream": self.upstream_digest(),
                "code": __version__,
                **self.fingerprint_parts(),
            }
            self._fingerprint = shards.sha256_text(json.dumps(parts, sort_keys=True, default=str))
        return self._fingerprint

    def is_complete(self) -> bool:
        """Finished for this fingerprint, every shard verified against the manifest's sha256."""
        manifest = shards.read_manifest(self.dir)
        if not manifest or manifest.get("fingerprint") != self.fingerprint():
            return False
        problems = shards.verify_stage(self.dir)
        for problem in problems:
            log.warning("%s: %s; redoing the shards that do not verify", self.name, problem)
        return not problems

    def run_shard(self, task: ShardTask | dict) -> dict | None:
        """Process one shard unless done; return its completion marker (None if another worker holds it)."""
        task = ShardTask.from_dict(task) if isinstance(task, dict) else task
        fingerprint = self.fingerprint()
        if shards.shard_is_done(self.dir, task.index, fingerprint):
            marker = shards.read_done(self.dir, task.index)
            self.advance(marker["stats"]["rows_in"])
            return marker
        worker = self.worker or shards.worker_id()
        if not shards.claim(self.dir, task.index, worker):
            log.info("%s shard %d is held by another worker; skipping", self.name, task.index)
            return None
        try:
            if shards.shard_is_done(self.dir, task.index, fingerprint):  # finished by its holder since the check above
                return shards.read_done(self.dir, task.index)
            return self._write_shard(task, fingerprint, worker)
        finally:
            shards.release(self.dir, task.index)

    def _write_shard(self, task: ShardTask, fingerprint: str, worker: str) -> dict:
        started = time.perf_counter()
        result = self.process(task)
        expected = self.input_rows(task)
        stats = result.stats
        stats.set("rows_in", expected)
        stats.set("rows_out", result.out.num_rows)
        stats.set("rows_rejected", result.rejects.num_rows)
        if result.out.num_rows + result.rejects.num_rows != expected:
            raise StageError(
                f"{self.name} shard {task.index}: {expected} rows in but {result.out.num_rows} out + "
                f"{result.rejects.num_rows} rejected; refusing to write a shard that loses rows"
            )
        files = [
            {**shards.write_table(result.out, self.dir / shards.shard_name(task.index), self.output_schema), "kind": "part"},
            {
                **shards.write_table(result.rejects, self.dir / shards.shard_name(task.index, "rejects"), schema.REJECTS),
                "kind": "rejects",
            },
        ]
        stats.add("seconds", time.perf_counter() - started)
        marker = {"index": task.index, "fingerprint": fingerprint, "task": task.to_dict(), "files": files,
                  "stats": stats.to_dict(), "worker": worker}
        shards.mark_done(self.dir, task.index, marker)
        return marker

    def finalize(self, tasks: list[ShardTask] | None = None, executor: str = "local") -> dict | None:
        """Merge the shard markers into `manifest.json`; None while some shard is not done."""
        tasks = self.plan() if tasks is None else tasks
        fingerprint = self.fingerprint()
        markers = [shards.read_done(self.dir, t.index) for t in tasks]
        if any(m is None or m.get("fingerprint") != fingerprint for m in markers):
            return None
        total = Stats({ROWS_IN: 0, ROWS_OUT: 0, ROWS_REJECTED: 0})  # present even when the stage had no rows
        for marker in markers:
            total += Stats.from_dict(marker["stats"])
        manifest = {
            "stage": self.name,
            "schema_version": schema.SCHEMA_VERSION,
            "fingerprint": fingerprint,
            "code_version": __version__,
            "config": self.cfg.model_dump(mode="json"),
            "config_sha256": self.cfg.digest(),
            "models": self.models(),
            **{k: v for k, v in self.fingerprint_parts().items()},
            "shards": [f for m in markers for f in m["files"]],
            "stats": total.to_dict(),
            "executor": executor,
            **self.manifest_extra(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        shards.write_manifest(self.dir, manifest)
        return manifest


def _num_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as err:
        raise shards.ShardError(f"{path}: not a readable parquet file (truncated or corrupt?): {err}") from None


def plan_row_range(stage: str, source_dir: Path, start: int, stop: int | None) -> list[ShardTask]:
    """Tasks that cover global rows [start, stop) of `source_dir`'s part shards, one per overlapping shard.

    Output shard i is made from input shard i, so names stay aligned across stages and a rerun overwrites."""
    tasks, offset = [], 0
    for index, path in enumerate(shards.output_shards(source_dir)):
        rows = _num_rows(path)
        lo, hi = max(start, offset), rows + offset if stop is None else min(stop, rows + offset)
        if lo < hi:
            tasks.append(ShardTask(stage, index, (str(path),), lo - offset, hi - offset))
        offset += rows
    return tasks


def read_task_rows(task: ShardTask, columns: list[str] | None = None) -> pa.Table:
    """The rows a task covers, as one table."""
    tables = [shards.read_table(Path(p), columns) for p in task.inputs]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    stop = table.num_rows if task.stop is None else min(task.stop, table.num_rows)
    return table.slice(task.start, max(0, stop - task.start))
