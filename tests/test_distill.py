"""The distill stage: training pairs, the split, training with checkpoints, kill/resume, the pretrained path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from fake_upstream import COCO_AUTO, SCRATCH_T5, coco_rows, write_upstream
from hierarcaps import pipeline, schema, shards
from hierarcaps.config import load_profile
from hierarcaps.stages.distill import DistillStage, select_hierarchies, split_of
from hierarcaps.student.pairs import hierarchy_pairs

pytestmark = pytest.mark.skipif(not COCO_AUTO.exists(), reason="../shared/data is not beside this checkout")

# A student small enough to train a few dozen steps in seconds on a shared 2-core CPU.
TINY = {
    **SCRATCH_T5,
    "distill.student.vocab_size": 300,
    "distill.student.d_model": 32,
    "distill.student.d_ff": 64,
    "distill.student.num_layers": 1,
    "distill.student.num_heads": 2,
    "distill.student.d_kv": 16,
    "distill.batch_size": 8,
    "distill.max_steps": 12,
    "distill.checkpoint_every": 5,
    "distill.eval_fraction": 0.2,
}

POS = ["dog", "brown dog", "brown dog on a beach", "A brown dog runs on the beach at sunset."]
NEG = ["cat", "black dog", "brown dog in a park", "A brown dog runs on the beach in the rain."]


def prepared_run(tmp_path: Path, overrides: dict, n: int = 30, duplicate: bool = True) -> Path:
    """A run dir whose seed and augment stages hold n COCO hierarchies (augment repeats one seed row if `duplicate`)."""
    profile = load_profile("offline", overrides=overrides)
    rows = coco_rows(0, n)
    half = n // 2
    augment = rows.slice(half)
    if duplicate:
        augment = pa.concat_tables([augment, rows.slice(0, 1)])
    write_upstream(profile, tmp_path, rows.slice(0, half), augment)
    return tmp_path


def test_pairs_have_direction_tags_prefixes_and_keep_the_caption_as_tier_4():
    pairs = hierarchy_pairs("h1", POS, NEG)
    s2g = [p for p in pairs if p["direction"] == "s2g"]
    assert [(p["source_text"], p["target_text"]) for p in s2g] == [
        ("s2g: A brown dog runs on the beach at sunset.", "dog => brown dog => brown dog on a beach")
    ]
    g2s = [(p["source_text"], p["target_text"]) for p in pairs if p["direction"] == "g2s"]
    assert g2s == [
        ("g2s:", " => ".join(POS)),
        ("g2s: dog", "brown dog => brown dog on a beach => A brown dog runs on the beach at sunset."),
        ("g2s: dog => brown dog", "brown dog on a beach => A brown dog runs on the beach at sunset."),
        ("g2s: dog => brown dog => brown dog on a beach", "A brown dog runs on the beach at sunset."),
    ]
    # negatives: the neg direction (its sources are tested in test_student.py)
    assert [p["target_text"] for p in pairs if p["direction"] == "neg"] == NEG
    assert all(p["id"] == "h1" for p in pairs)
    assert len(hierarchy_pairs("h1", POS, NEG, ("s2g", "g2s"))) == 5
    assert len(hierarchy_pairs("h1", POS, None)) == 5


def test_split_is_deterministic_by_id_and_close_to_the_fraction():
    ids = [f"id-{i}" for i in range(4000)]
    first = [split_of(i, 0.1) for i in ids]
    assert first == [split_of(i, 0.1) for i in ids]
    assert 0.08 < first.count("eval") / len(ids) < 0.12
    assert {split_of(i, 0.0) for i in ids} == {"train"}
    # a larger fraction only moves ids from train to eval, never back
    assert all(split_of(i, 0.3) == "eval" for i, s in zip(ids, first) if s == "eval")


def test_select_hierarchies_rejects_duplicates_and_malformed_rows_with_reasons():
    rows = [
        {"id": "a", "caption": POS[3], "positive": POS, "negative": NEG},
        {"id": "b", "caption": POS[3], "positive": [t.upper() for t in POS], "negative": None},  # same tiers, other case
        {"id": "a", "caption": "x", "positive": ["p", "q", "r", "s"], "negative": None},  # same id
        {"id": "c", "caption": "x", "positive": ["p", "q", "r"], "negative": None},
        {"id": "d", "caption": "x", "positive": ["p", "", "r", "s"], "negative": None},
        {"id": "e", "caption": "x", "positive": ["p", "q", "r", "s"], "negative": ["n", "q => r", "o", "t"]},
        {"id": "f", "caption": "s", "positive": ["p", "q", "r", "s"], "negative": None},
    ]
    kept, rejects = select_hierarchies(rows)
    assert [r["id"] for r in kept] == ["a", "f"]
    assert [r["reason"] for r in rejects] == ["duplicate", "duplicate", "malformed", "malformed", "malformed"]
    assert "3 tiers" in rejects[2]["detail"] and "tier 2 is empty" in rejects[3]["detail"] and "separator" in rejects[4]["detail"]


def test_distill_trains_saves_a_safetensors_student_and_accounts_for_every_row(tmp_path):
    run = prepared_run(tmp_path, TINY)
    progress = []
    manifest = pipeline.run_stage("distill", run, "offline", overrides=TINY, on_progress=lambda s, done, total: progress.append((done, total)))
    stage_dir = run / "distill"
    # the bar moves with the training steps, not all at once at the end
    assert progress[-1] == (31, 31) and len({d for d, _ in progress}) > 5 and progress == sorted(progress)
    stats = manifest["stats"]
    assert stats["rows_in"] == 31 and stats["rows_out"] == 30 and stats["rows_rejected"] == 1
    assert stats["rows_in"] == stats["rows_out"] + stats["rows_rejected"]
    assert shards.read_table(stage_dir / "rejects-00000.parquet")["reason"].to_pylist() == ["duplicate"]
    assert (stage_dir / "model" / "model.safetensors").exists() and (stage_dir / "model" / "tokenizer.json").exists()
    assert manifest["model_dir"] == "distill/model"
    assert manifest["model_sha256"] == shards.sha256_file(stage_dir / "model" / "model.safetensors")

    pairs = shards.read_table(stage_dir / "pairs.parquet")
    assert pairs.schema.equals(schema.DISTILL_PAIRS)
    assert pairs.num_rows == 30 * 9  # every COCO row has a negative: 1 s2g + 4 g2s + 4 neg
    rows = pairs.to_pylist()
    by_id: dict[str, set] = {}
    for r in rows:
        by_id.setdefault(r["id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_id.values()), "a hierarchy's pairs must not straddle train and eval"
    assert manifest["train_pairs"] == sum(r["split"] == "train" for r in rows) and manifest["eval_pairs"] > 0

    log = json.loads((stage_dir / "training_log.json").read_text())
    assert log["total_steps"] == 12 and log["resumes"] == []
    assert log["epochs"][-1]["step"] == 12 and all(e["eval_loss"] > 0 for e in log["epochs"])
    assert manifest["eval_loss"] == log["epochs"][-1]["eval_loss"]
    assert "weak" in manifest["note"] and "flan-t5-base" in manifest["note"]
    # keep_checkpoints = 2: the two newest survive
    assert sorted(p.name for p in (stage_dir / "checkpoints").iterdir()) == ["step-00000010", "step-00000012"]

    from hierarcaps.engines.seq2seq import load_student, student_generate

    model, tokenizer = load_student(stage_dir / "model")
    assert model.config.d_model == 32
    assert len(student_generate(model, tokenizer, ["s2g: a dog on a beach"], max_new_tokens=8)) == 1

    again = pipeline.run_stage("distill", run, "offline", overrides=TINY)
    assert again.get("skipped") is True and again["model_sha256"] == manifest["model_sha256"]


def test_checkpoints_of_another_config_are_deleted_not_resumed(tmp_path):
    run = prepared_run(tmp_path, TINY, n=10, duplicate=False)
    pipeline.run_stage("distill", run, "offline", overrides=TINY)
    changed = {**TINY, "distill.learning_rate": 5e-4}
    (run / "distill" / "manifest.json").unlink()  # as if the first run had been killed after its checkpoints
    pipeline.run_stage("distill", run, "offline", overrides=changed)
    log = json.loads((run / "distill" / "training_log.json").read_text())
    assert log["resumes"] == []
    stage = DistillStage(load_profile("offline", overrides=changed), run)
    for ckpt in (run / "distill" / "checkpoints").iterdir():
        assert json.loads((ckpt / "state.json").read_text())["fingerprint"] == stage.fingerprint()


KILL_SCRIPT = """
import json, sys
from hierarcaps import pipeline
pipeline.run_stage("distill", sys.argv[1], "offline", overrides=json.loads(sys.argv[2]))
"""


def test_a_killed_distill_resumes_from_its_last_checkpoint(tmp_path):
    overrides = {**TINY, "distill.max_steps": 240, "distill.checkpoint_every": 10, "distill.batch_size": 4}
    run = prepared_run(tmp_path, overrides, n=10, duplicate=False)
    ckpts = run / "distill" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run), json.dumps(overrides)], env={**os.environ})
    try:
        deadline = time.monotonic() + 120
        while not list(ckpts.glob("step-*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()  # reap it: a zombie's pid still looks alive to the shard lock
    seen = sorted(ckpts.glob("step-*"))
    assert seen, "no checkpoint appeared before the deadline"
    assert shards.read_manifest(run / "distill") is None, "the run finished before it could be killed; raise max_steps"
    killed_at = int(seen[-1].name.split("-")[1])
    assert 0 < killed_at < 240

    manifest = pipeline.run_stage("distill", run, "offline", overrides=overrides)
    log = json.loads((run / "distill" / "training_log.json").read_text())
    assert log["resumes"] == [killed_at]
    assert log["epochs"][-1]["step"] == 240
    assert [e["epoch"] for e in log["epochs"]] == list(range(1, len(log["epochs"]) + 1)), "no epoch lost or repeated"
    assert manifest["stats"]["train_steps_run"] == 240 - killed_at
    assert (run / "distill" / "model" / "model.safetensors").exists()


def test_pretrained_student_path_loads_a_local_t5_with_its_own_tokenizer(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from hierarcaps.engines.seq2seq import train_tokenizer

    texts = [" => ".join(POS), " => ".join(NEG), "s2g: a cat on a mat", "g2s: cat => black cat"] * 5
    tokenizer = train_tokenizer(texts, 200)
    config = T5Config(vocab_size=len(tokenizer), d_model=24, d_ff=48, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=3,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    pretrained = tmp_path / "tiny-t5"
    T5ForConditionalGeneration(config).save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)

    overrides = {**TINY, "distill.student.pretrained": str(pretrained), "distill.max_steps": 4}
    run = prepared_run(tmp_path / "run", overrides, n=8, duplicate=False)
    manifest = pipeline.run_stage("distill", run, "offline", overrides=overrides)
    assert manifest["models"]["student"] == str(pretrained)
    assert "fine-tuned" in manifest["note"] and "weak" not in manifest["note"]
    saved = json.loads((run / "distill" / "model" / "config.json").read_text())
    assert saved["d_model"] == 24 and saved["num_heads"] == 3  # the pretrained model's sizes, not the profile's
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(run / "distill" / "model").get_vocab() == tokenizer.get_vocab()  # not retrained


def test_pretrained_tokenizer_without_the_separator_gets_it_added(tmp_path):
    """flan-t5's vocabulary cannot write every character; a student that cannot emit '=>' could never write a tier."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from hierarcaps.config import StudentConfig
    from hierarcaps.engines.seq2seq import build_student

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "b": 4, "cat": 5}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    pretrained = tmp_path / "no-sep-t5"
    T5ForConditionalGeneration(T5Config(vocab_size=len(vocab), d_model=16, d_ff=32, d_kv=4, num_layers=1, num_heads=2)).save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    assert "=>" not in tokenizer.decode(tokenizer("a => b")["input_ids"])

    model, loaded = build_student(StudentConfig(pretrained=str(pretrained)), [])
    assert loaded.decode(loaded("a => b")["input_ids"], skip_special_tokens=True) == "a => b"
    assert model.get_input_embeddings().num_embeddings >= len(loaded)
