"""Prefect flows and deployments: prefect.yaml, flow parameters, the shard cache key, an in-process flow run.

The real server, worker and deployment runs are in test_prefect_server.py (marked prefect)."""

from __future__ import annotations

import asyncio
import json
import importlib.util
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hierarcaps import orchestration, shards
from hierarcaps.config import load_profile
from hierarcaps.executor import stage_spec
from hierarcaps.stages import STAGES, select_stages
from hierarcaps.stage import ShardOutput, ShardTask, Stage

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = (
    {f"build-hierarcaps/{p}" for p in ("offline", "small", "paper")}
    | {f"{s}/offline" for s in ("seed", "augment", "distill", "generate", "filter", "validate")}
    | {f"{s}/paper" for s in ("seed", "augment", "distill", "generate", "filter", "validate")}
)


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def flows_by_entrypoint(project) -> dict:
    from prefect.flows import load_flow_from_entrypoint

    return {d["entrypoint"]: load_flow_from_entrypoint(str(ROOT / d["entrypoint"])) for d in project["deployments"]}


def _full_names(project, flows_by_entrypoint) -> dict[str, dict]:
    return {f"{flows_by_entrypoint[d['entrypoint']].name}/{d['name']}": d for d in project["deployments"]}


# ---------------------------------------------------------------- prefect.yaml


def test_every_deployment_names_a_real_flow_and_the_expected_set_exists(project, flows_by_entrypoint):
    names = _full_names(project, flows_by_entrypoint)
    assert len(names) == len(project["deployments"]), "two deployments share a flow/name"
    assert EXPECTED <= set(names)
    for full, dep in names.items():
        flow_name, profile = full.split("/")
        assert dep["parameters"]["profile"] == profile
        assert profile in ("offline", "small", "paper")


def test_offline_deployments_use_the_process_pool_and_paper_ones_the_gpu_pool(project, flows_by_entrypoint):
    for full, dep in _full_names(project, flows_by_entrypoint).items():
        pool = dep["work_pool"]
        if full.endswith("/paper"):
            assert pool["name"] == "hierarcaps-gpu"
            requests = pool["job_variables"]["container_create_kwargs"]["device_requests"]
            assert any(["gpu"] in r["capabilities"] for r in requests)
            assert dep["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/hierarcaps"
        else:
            assert pool["name"] == "hierarcaps-local"
    steps = project["pull"]
    assert list(steps[0]) == ["prefect.deployments.steps.set_working_directory"]
    # the directory comes from the deploy-time build step that records the repo path
    assert "repo.stdout" in steps[0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert project["build"][0]["prefect.deployments.steps.run_shell_script"]["id"] == "repo"


def test_gpu_pool_job_template_requests_gpus_in_a_form_docker_py_accepts():
    from docker.types import HostConfig
    from jsonschema import validate as check_schema

    template = json.loads((ROOT / "docker" / "gpu-pool.json").read_text())
    assert template["job_configuration"]["container_create_kwargs"] == "{{ container_create_kwargs }}"
    variables = template["variables"]
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    check_schema(defaults, variables)  # the defaults are valid job variables
    kwargs = defaults["container_create_kwargs"]
    host = HostConfig(version="1.44", device_requests=kwargs["device_requests"])
    assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert host["DeviceRequests"][0]["Count"] == -1
    assert defaults["image"] == "hierarcaps-gpu:latest"


@pytest.mark.parametrize("dockerfile", ["cpu.Dockerfile", "gpu.Dockerfile"])
def test_dockerfiles_copy_only_paths_that_exist(dockerfile):
    text = (ROOT / "docker" / dockerfile).read_text()
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", text, flags=re.M)
    assert copies, f"{dockerfile} copies nothing from the repo"
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            if not source.startswith("--"):
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} is not in the repo"


# ---------------------------------------------------------------- flow parameters


def test_flow_parameters_carry_the_cli_option_names_with_types(flows_by_entrypoint):
    from prefect.utilities.callables import parameter_schema

    build = flows_by_entrypoint["flows/stages.py:build_hierarcaps"]
    schema = parameter_schema(build).model_dump()
    assert set(schema["properties"]) == {"input", "out", "profile", "set", "stages"}
    assert set(schema["required"]) == {"input", "out"}
    assert schema["properties"]["input"]["type"] == "string"
    params = build.validate_parameters({"input": "x.csv", "out": "runs/x", "set": ["seed.limit=2"], "stages": "input,seed"})
    assert params["set"] == ["seed.limit=2"]
    with pytest.raises(Exception, match="out"):
        build.validate_parameters({"input": "x.csv"})
    for entrypoint in ("seed", "augment", "distill", "generate", "filter_stage"):
        stage_schema = parameter_schema(flows_by_entrypoint[f"flows/stages.py:{entrypoint}"]).model_dump()
        assert set(stage_schema["properties"]) == {"out", "profile", "set"}
        assert stage_schema["required"] == ["out"]


def test_overrides_accept_the_cli_list_form_and_a_dict():
    assert orchestration.normalize_overrides(["seed.limit=2", "input.dedupe=false"]) == {"seed.limit": 2, "input.dedupe": False}
    assert orchestration.normalize_overrides({"seed.limit": 2}) == {"seed.limit": 2}
    assert orchestration.normalize_overrides(None) == {}
    assert select_stages("seed,input") == ("input", "seed") == select_stages(["seed", "input"])  # build order
    with pytest.raises(ValueError, match="nope"):
        select_stages(["nope"])


def test_serve_builds_the_same_offline_deployments_as_prefect_yaml(project, flows_by_entrypoint):
    served = orchestration.served_deployments(ROOT, "offline")
    expected = {n.split("/")[0] for n in _full_names(project, flows_by_entrypoint) if n.endswith("/offline")}
    assert {d.flow_name for d in served} == expected
    assert all(d.name == "offline" and d.parameters == {"profile": "offline"} for d in served)
    with pytest.raises(ValueError, match="no deployment named"):
        orchestration.served_deployments(ROOT, "nonesuch")


# ---------------------------------------------------------------- cache key


class PromptStage(Stage):
    """A stage whose fingerprint includes a prompt hash, as seed/augment do."""

    name = "seed"
    prompt = "Write a hierarchy for: {caption}"

    def fingerprint_parts(self) -> dict:
        return {"prompt_sha256": shards.sha256_text(self.prompt)}

    def plan(self) -> list[ShardTask]:
        return []

    def process(self, task: ShardTask) -> ShardOutput:  # pragma: no cover - never run here
        raise NotImplementedError


def _key(stage: Stage, task: ShardTask) -> str:
    params = {"spec": stage_spec(stage), "task": task.to_dict(), "fingerprint": stage.fingerprint()}
    return orchestration.shard_cache_key(None, params)


def test_cache_key_changes_with_config_prompt_and_input_bytes_only(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"caption": ["a dog", "a cat"]}), source)
    task = ShardTask("seed", 0, (str(source),), 0, 2)
    base = _key(PromptStage(load_profile("offline", {"seed.limit": 2}), tmp_path), task)

    assert _key(PromptStage(load_profile("offline", {"seed.limit": 2}), tmp_path), task) == base  # same inputs
    # another stage's section does not touch this stage's key
    assert _key(PromptStage(load_profile("offline", {"seed.limit": 2, "augment.limit": 5}), tmp_path), task) == base
    assert _key(PromptStage(load_profile("offline", {"seed.limit": 3}), tmp_path), task) != base  # config
    changed_prompt = PromptStage(load_profile("offline", {"seed.limit": 2}), tmp_path)
    changed_prompt.prompt = "Another prompt: {caption}"
    assert _key(changed_prompt, task) != base  # prompt
    assert _key(PromptStage(load_profile("offline", {"seed.limit": 2}), tmp_path), ShardTask("seed", 1, task.inputs, 0, 2)) != base
    pq.write_table(pa.table({"caption": ["a dog", "a bird"]}), source)  # same path, new bytes
    assert _key(PromptStage(load_profile("offline", {"seed.limit": 2}), tmp_path), task) != base


def test_cache_key_of_a_hub_source_needs_no_local_file(tmp_path):
    task = ShardTask("input", 0, ("hf:google-research-datasets/conceptual_captions:train",), 0, 1000)
    stage = PromptStage(load_profile("offline"), tmp_path)
    key = _key(stage, task)
    assert key == _key(stage, task)
    assert key != _key(stage, ShardTask("input", 0, ("hf:google-research-datasets/conceptual_captions:validation",), 0, 1000))


def test_task_runner_comes_from_config():
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    threads = orchestration.task_runner_for(load_profile("offline", {"runner.max_workers": 3}).runner)
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    procs = orchestration.task_runner_for(load_profile("offline", {"runner.task_runner": "processes"}).runner)
    assert isinstance(procs, ProcessPoolTaskRunner)
    # a flow runs its shards as Prefect tasks unless the profile asks for the Ray executor
    assert orchestration.flow_executor(load_profile("offline").runner).name == "prefect"
    assert orchestration.flow_executor(load_profile("offline", {"runner.executor": "ray"}).runner).name == "ray"


def test_the_build_flow_has_one_flow_per_stage_of_the_stage_list(flows):
    assert set(flows.STAGE_FLOWS) == set(STAGES)


# ---------------------------------------------------------------- a flow run against a temporary server


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    async def read() -> dict[str, str]:
        async with get_client() as client:
            children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            ids = [flow_run_id, *[c.id for c in children]]
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            return {r.name: r.state.name for r in runs if r.name.startswith("input-shard")}

    return asyncio.run(read())


@pytest.fixture(scope="module")
def flows():
    """flows/stages.py as a module (it is not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("hierarcaps_flows_stages", ROOT / "flows" / "stages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_flow_runs_shards_as_cached_tasks_and_redoes_only_a_missing_shard(harness, flows, sample_captions, tmp_path):
    out = tmp_path / "run"
    params = dict(input=str(sample_captions), out=str(out), stages=["input"], set={"input.rows_per_shard": 100})

    state = flows.build_hierarcaps(**params, return_state=True)
    result = state.result()
    assert [s["name"] for s in result["input"]["shards"]] == [shards.shard_name(i) for i in range(3)]
    assert result["input"]["stats"]["rows_in"] == 300
    assert set(_task_states(state.state_details.flow_run_id).values()) == {"Completed"}

    # stage complete: the flow reuses it without a single shard task
    again = flows.build_hierarcaps(**params, return_state=True)
    assert again.result()["input"]["skipped"] and _task_states(again.state_details.flow_run_id) == {}

    # manifest gone and one shard deleted: two shards come from Prefect's cache, the missing one is redone
    (out / "input" / shards.MANIFEST).unlink()
    (out / "input" / shards.shard_name(1)).unlink()
    marker0 = (out / "input" / "part-00000.done.json").stat().st_mtime_ns
    third = flows.build_hierarcaps(**params, return_state=True)
    assert third.result()["input"]["stats"]["rows_out"] == 300
    states = _task_states(third.state_details.flow_run_id)
    assert states == {"input-shard-0": "Cached", "input-shard-1": "Completed", "input-shard-2": "Cached"}
    assert (out / "input" / "part-00000.done.json").stat().st_mtime_ns == marker0
    assert (out / "input" / shards.shard_name(1)).exists()

    # a changed config is a new fingerprint: every shard is redone, none served from the old cache
    fourth = flows.build_hierarcaps(**{**params, "set": {"input.rows_per_shard": 100, "input.max_caption_chars": 500}},
                                    return_state=True)
    fourth.result()
    assert set(_task_states(fourth.state_details.flow_run_id).values()) == {"Completed"}


def test_stage_flow_publishes_the_summary_table_artifact(harness, flows, sample_captions, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    flows.input_stage(input=str(sample_captions), out=str(tmp_path / "run"), set=["input.rows_per_shard=150"])

    async def latest() -> str:
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["input-summary"])))
            return arts[-1].data

    markdown = asyncio.run(latest())
    assert "| stage | rows in | rows out |" in markdown and "rows/s" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| input"))
    assert "| 300 | 300 | 0 | 100% |" in row


def test_shards_run_on_the_process_pool_task_runner_from_config(harness, flows, sample_captions, tmp_path):
    overrides = {"input.rows_per_shard": 150, "runner.task_runner": "processes", "runner.max_workers": 2}
    result = flows.input_stage(input=str(sample_captions), out=str(tmp_path / "run"), set=overrides)
    assert [s["rows"] for s in result["shards"]] == [150, 150]
    markers = [shards.read_done(tmp_path / "run" / "input", i) for i in range(2)]
    assert all(m["fingerprint"] == result["fingerprint"] for m in markers)


@pytest.mark.slow
def test_validate_flow_writes_the_report_and_publishes_it(harness, flows, test_set, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    out = tmp_path / "report"
    result = flows.validate(data=str(test_set), out=str(out), model=["minilm"], max_images=20)
    assert "d_corr" in result["models"]["minilm"]["metrics"]
    assert "markdown" not in result  # the report text goes to the artifact, not into the flow result

    async def latest() -> str:
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["validate-report"])))
            return arts[-1].data

    assert asyncio.run(latest()) == (out / "report.md").read_text()


def test_train_nli_flow_calls_the_same_function_as_the_cli(monkeypatch, tmp_path):
    from prefect.flows import load_flow_from_entrypoint

    import hierarcaps.nli.train as train_module

    calls = []
    monkeypatch.setattr(train_module, "train_nli", lambda **kwargs: calls.append(kwargs) or {"ok": True})
    flow = load_flow_from_entrypoint(str(ROOT / "flows" / "nli.py:train_nli_flow"))
    assert flow.name == "train-nli"
    assert flow.fn(out=str(tmp_path / "nli"), backend="minilm-head", seed=3, max_hierarchies=10) == {"ok": True}
    assert calls[0]["out"] == tmp_path / "nli" and calls[0]["seed"] == 3 and calls[0]["max_hierarchies"] == 10


def test_train_nli_flow_trains_the_offline_default_cross_encoder(monkeypatch, tmp_path):
    from prefect.flows import load_flow_from_entrypoint

    import hierarcaps.nli.cross_train as cross_train

    calls = []
    monkeypatch.setattr(cross_train, "train_minilm_nli", lambda **kwargs: calls.append(kwargs) or {"ok": True})
    flow = load_flow_from_entrypoint(str(ROOT / "flows" / "nli.py:train_nli_flow"))
    assert flow.fn(out=str(tmp_path / "nli"), seed=3, threads=1) == {"ok": True}
    assert calls[0]["out"] == tmp_path / "nli" and calls[0]["seed"] == 3 and calls[0]["threads"] == 1
    assert calls[0]["epochs"] == cross_train.DEFAULTS["epochs"]
    with pytest.raises(ValueError, match="backend"):
        flow.fn(out=str(tmp_path / "nli"), backend="bert")


def test_train_student_flow_calls_the_same_function_as_the_cli(monkeypatch, tmp_path):
    from prefect.flows import load_flow_from_entrypoint

    import hierarcaps.student.train as train_module
    from hierarcaps.nli.pairs import DEFAULT_DATA

    calls = []
    card = {"eval_loss": 2.0, "seconds": 1.0}
    flow = load_flow_from_entrypoint(str(ROOT / "flows" / "student.py:train_student_flow"))  # parameters read from train_start
    monkeypatch.setattr(train_module, "train_start", lambda **kwargs: calls.append(kwargs) or card)  # looked up at each call
    assert flow.name == "train-student"
    assert flow.fn(out=str(tmp_path / "student"), work=str(tmp_path / "ckpt"), steps=7, seed=3) == card
    assert calls[0]["out"] == tmp_path / "student" and calls[0]["work"] == tmp_path / "ckpt"
    assert calls[0]["steps"] == 7 and calls[0]["seed"] == 3 and calls[0]["data"] == DEFAULT_DATA
