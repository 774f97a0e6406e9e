"""The one loop that runs a stage's shards, and the executors that decide only where each shard runs.

    run_stage(stage, LocalExecutor())           # every shard in this process (the default)
    run_stage(stage, RayExecutor(runner_cfg))   # an actor pool on a Ray cluster (ray_executor.py)
    run_stage(stage, PrefectExecutor(stage))    # one cached Prefect task per shard (orchestration.py)

`run_stage`: a finished, verified stage is returned as is; otherwise plan the shards, let the executor call
`Stage.run_shard` on each (skip done and verified / claim / process / check rows / write atomically / mark done last),
wait for shards that other workers hold, and write the manifest. An executor returns each shard's done marker, or
None for a shard another worker holds. The shape is datatrove's `_run_for_rank` with its local and Ray executors.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Any, Callable

from hierarcaps import shards
from hierarcaps.config import Profile, RunnerConfig
from hierarcaps.stage import ShardTask, Stage, StageError

log = logging.getLogger(__name__)

# How long a worker waits for shards that other workers claimed before giving up (they may be on a dead host,
# whose locks cannot be checked from here).
HELD_WAIT_SECONDS = 6 * 3600.0

Progress = Callable[[str, int, int], None]


class Executor(ABC):
    """Where shards run. Used as a context manager around one or more stages (it may hold a cluster connection)."""

    name: str = ""
    # True when `run_shards` runs `process` in this process, so the stage's own progress hook can report rows as
    # they go; otherwise the loop reports each shard's rows when its marker comes back.
    in_process = False

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @abstractmethod
    def run_shards(self, stage: Stage, tasks: list[ShardTask]) -> list[dict | None]:
        """Call `stage.run_shard` on every task somewhere; the markers in task order (None: held elsewhere)."""


def torch_threads_context(threads: int | None):
    """`engines.runtime.torch_threads(threads)`, imported only when a count is set (the input stage needs no torch)."""
    if threads is None:
        return nullcontext()
    from hierarcaps.engines.runtime import torch_threads

    return torch_threads(threads)


class LocalExecutor(Executor):
    """Every shard in this process, in order."""

    name = "local"
    in_process = True

    def __init__(self, torch_threads: int | None = None):
        self.torch_threads = torch_threads

    def run_shards(self, stage: Stage, tasks: list[ShardTask]) -> list[dict | None]:
        with torch_threads_context(self.torch_threads):
            return [stage.run_shard(task) for task in tasks]


def make_executor(cfg: RunnerConfig) -> Executor:
    """The executor `runner.executor` names: `local`, or `ray` (needs `pip install 'hierarcaps[ray]'`)."""
    if cfg.executor == "ray":
        from hierarcaps.ray_executor import RayExecutor

        return RayExecutor(cfg)
    return LocalExecutor(cfg.torch_threads)


def run_stage(stage: Stage, executor: Executor | None = None, on_progress: Progress | None = None,
              held_wait: float = HELD_WAIT_SECONDS, poll: float = 5.0) -> dict:
    """Run `stage` to completion on `executor` (default: in this process); its manifest, plus `skipped` (True when it
    was already complete) or `wall_seconds`."""
    executor = executor or LocalExecutor(stage.profile.runner.torch_threads)
    started = time.perf_counter()
    if stage.is_complete():
        log.info("%s: already complete for this config; nothing to do", stage.name)
        return {**shards.read_manifest(stage.dir), "skipped": True}
    tasks = stage.plan()
    advance = _progress(stage.name, sum(stage.input_rows(t) for t in tasks), on_progress)
    if executor.in_process:
        stage.advance = advance
    deadline = time.monotonic() + held_wait
    pending = tasks
    while True:
        markers = executor.run_shards(stage, pending)
        if not executor.in_process:
            for marker in markers:
                if marker is not None:
                    advance(marker["stats"]["rows_in"])
        manifest = stage.finalize(tasks, executor.name)
        if manifest is not None:
            return {**manifest, "wall_seconds": time.perf_counter() - started}
        # Shards held by other workers (N processes on one run dir): retry their claims until they are done, so a
        # shard whose worker died on this host (stale lock) is taken over.
        pending = [t for t in tasks if not shards.shard_is_done(stage.dir, t.index, stage.fingerprint())]
        if time.monotonic() > deadline:
            raise StageError(f"{stage.name}: {len(pending)} shard(s) still held by other workers after {held_wait:.0f} s; "
                             "rerun to finish them")
        log.info("%s: waiting for %d shard(s) held by other workers", stage.name, len(pending))
        time.sleep(poll)


def _progress(name: str, total: int, on_progress: Progress | None) -> Callable[[int], None]:
    done = 0
    lock = threading.Lock()  # stages may report from worker threads

    def advance(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            if on_progress:
                on_progress(name, done, total)

    advance(0)
    return advance


# ---------------------------------------------------------------- stage objects, rebuilt from plain values elsewhere


def stage_spec(stage: Stage) -> dict[str, Any]:
    """Everything needed to rebuild `stage` in another thread, process or Ray actor, as JSON-able values."""
    cls = type(stage)
    kwargs: dict[str, Any] = {}
    if getattr(stage, "source", None) is not None:
        kwargs["source"] = str(stage.source)
    if stage.upstream != cls.upstream:  # e.g. the filter of `hierarcaps filter` reads `external`
        kwargs["upstream"] = stage.upstream[0]
    return {
        "stage": stage.name,
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "run_dir": str(stage.run_dir),
        "profile": stage.profile.model_dump(mode="json", by_alias=True),
        "kwargs": kwargs,
    }


# One stage object per spec and process: stages load their models once per instance (cached_property), and an
# executor calls run_shard once per shard, so the instance must outlive one shard.
_stages: dict[str, Stage] = {}
_stages_lock = threading.Lock()


def _spec_key(spec: dict) -> str:
    return shards.sha256_text(json.dumps(spec, sort_keys=True))


def remember_stage(stage: Stage) -> dict[str, Any]:
    """The spec of `stage`, with `stage` itself as what `stage_from_spec` returns for it in this process."""
    spec = stage_spec(stage)
    with _stages_lock:
        _stages[_spec_key(spec)] = stage
    return spec


def stage_from_spec(spec: dict[str, Any]) -> Stage:
    import importlib

    key = _spec_key(spec)
    with _stages_lock:
        if key not in _stages:
            module, name = spec["class"].split(":")
            cls = getattr(importlib.import_module(module), name)
            _stages[key] = cls(Profile.model_validate(spec["profile"]), spec["run_dir"], **spec["kwargs"])
        return _stages[key]
