"""The build stages, in order. Each is a `hierarcaps.stage.Stage` subclass.

`STAGES` is the one list of them (the CLI, the Prefect flows and publishing read it); it names the classes as
strings so that reading it imports no stage (and no torch).
"""

# stage name -> "module:Class"; the order is the build order.
STAGES: dict[str, str] = {
    "input": "hierarcaps.stages.ingest:IngestStage",
    "seed": "hierarcaps.stages.seed:SeedStage",
    "augment": "hierarcaps.stages.augment:AugmentStage",
    "distill": "hierarcaps.stages.distill:DistillStage",
    "generate": "hierarcaps.stages.generate:GenerateStage",
    "filter": "hierarcaps.stages.filter:FilterStage",
}
BUILD_STAGES = tuple(STAGES)


def select_stages(stages: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """A `--stages` value (a list, or the CLI's comma-separated string; empty = all) in build order, checked."""
    if not stages:
        return BUILD_STAGES
    names = tuple(s.strip() for s in stages.split(",")) if isinstance(stages, str) else tuple(stages)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    return tuple(n for n in BUILD_STAGES if n in names)
