"""The `ray` executor: a stage's shards on a pool of Ray actors (`pip install 'hierarcaps[ray]'`; imported lazily).

Each actor rebuilds the stage once from its spec (so a model loads once per actor, not per shard), with the CPUs,
GPUs and torch threads of `runner.ray` / `runner.torch_threads`, and runs `Stage.run_shard`: the same claim / write /
mark-done code as every other executor, on the run directory every node mounts. Shards are handed out one at a time
to whichever actor is free. An actor that dies mid-shard (its process or its whole node killed) is dropped: its
claim is broken (its host may be gone, so the lock's owner cannot be checked there) and the shard goes to another
actor; a shard that writes its files and its marker is never written twice, so no row is lost or duplicated.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Any

from hierarcaps import shards
from hierarcaps.config import RunnerConfig
from hierarcaps.executor import Executor, stage_from_spec, stage_spec, torch_threads_context
from hierarcaps.stage import ShardTask, Stage, StageError

log = logging.getLogger(__name__)


def import_ray():
    try:
        import ray
    except ImportError:
        raise StageError("runner.executor = 'ray' needs Ray: pip install 'hierarcaps[ray]'") from None
    return ray


class ShardActor:
    """One stage, built once in a Ray worker process; `run_shard` per shard."""

    def __init__(self, spec: dict[str, Any], fingerprint: str, torch_threads: int | None) -> None:
        import ray

        self.threads = torch_threads_context(torch_threads)
        self.threads.__enter__()  # for the actor's life: it only ever runs this stage
        self.stage = stage_from_spec(spec)
        self.stage.worker = f"ray:{ray.get_runtime_context().get_node_id()}@{shards.worker_id()}"
        if self.stage.fingerprint() != fingerprint:
            raise StageError(f"{self.stage.name}: this node sees other upstream outputs or code than the driver "
                             f"(fingerprint differs); is the run directory the same shared filesystem?")

    def worker(self) -> str:
        return self.stage.worker

    def run_shard(self, task: dict) -> dict | None:
        return self.stage.run_shard(task)


class RayExecutor(Executor):
    """Connects to `runner.ray.address` (or starts a local Ray) on enter; one actor pool per `run_shards` call."""

    name = "ray"

    def __init__(self, cfg: RunnerConfig):
        self.cfg = cfg
        self._initialised_here = False

    def __enter__(self) -> "RayExecutor":
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.cfg.ray.address, logging_level=logging.WARNING, log_to_driver=False)
            self._initialised_here = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._initialised_here:
            import_ray().shutdown()
            self._initialised_here = False

    def run_shards(self, stage: Stage, tasks: list[ShardTask]) -> list[dict | None]:
        if not tasks:
            return []
        ray = import_ray()
        if not ray.is_initialized():
            self.__enter__()
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        cfg = self.cfg.ray
        threads = self.cfg.torch_threads or max(1, int(cfg.num_cpus))
        remote = ray.remote(ShardActor).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_restarts=0,
                                                max_task_retries=0)
        args = (stage_spec(stage), stage.fingerprint(), threads)
        actors = [remote.remote(*args) for _ in range(min(cfg.actors, len(tasks)))]
        # ref -> (actor, task): task None is the actor's first call, answered once it is built
        calls: dict[Any, tuple[Any, ShardTask | None]] = {a.worker.remote(): (a, None) for a in actors}
        workers: dict[Any, str] = {}
        queue, results, retried = deque(tasks), {}, Counter()
        last_death = None
        try:
            while queue or any(t is not None for _, t in calls.values()):
                if not calls:
                    raise StageError(f"{stage.name}: every Ray actor died ({last_death}); {len(queue)} shard(s) left")
                timeout = None if workers else cfg.start_timeout_seconds
                ready, _ = ray.wait(list(calls), num_returns=1, timeout=timeout)
                if not ready:
                    raise StageError(f"{stage.name}: no Ray actor started in {timeout:.0f} s; does the cluster have "
                                     f"{cfg.num_cpus} CPU / {cfg.num_gpus} GPU free per actor?")
                actor, task = calls.pop(ready[0])
                try:
                    value = ray.get(ready[0])
                except RayTaskError as err:  # the stage itself failed: the same error as a local run
                    raise err.as_instanceof_cause() from None
                except (RayActorError, GetTimeoutError) as err:
                    last_death = _summary(err)
                    self._actor_died(stage, actor, task, workers.pop(actor, None), last_death)
                    if task is not None:
                        retried[task.index] += 1
                        if retried[task.index] > cfg.shard_retries:
                            raise StageError(f"{stage.name} shard {task.index}: its actor died {retried[task.index]} "
                                             f"times ({last_death})") from None
                        queue.appendleft(task)
                    continue
                if task is None:
                    workers[actor] = value
                else:
                    results[task.index] = value
                if queue:
                    nxt = queue.popleft()
                    calls[actor.run_shard.remote(nxt.to_dict())] = (actor, nxt)
        finally:
            for actor in actors:
                ray.kill(actor)
        return [results.get(t.index) for t in tasks]

    @staticmethod
    def _actor_died(stage: Stage, actor: Any, task: ShardTask | None, worker: str | None, why: str) -> None:
        if task is None:
            log.warning("%s: a Ray actor failed to start: %s", stage.name, why)
            return
        broken = worker is not None and shards.break_claim(stage.dir, task.index, worker)
        log.warning("%s shard %d: its Ray actor %s died (%s); %shanding it to another actor", stage.name, task.index,
                    worker, why, "lock broken, " if broken else "")


def _summary(err: Exception) -> str:
    """Ray's actor errors hold a whole traceback: its first line (what died) and last line (why)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return f"{type(err).__name__}: {lines[0]}" + (f" ... {lines[-1]}" if len(lines) > 1 else "")
