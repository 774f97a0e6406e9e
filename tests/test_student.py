"""The causal-LM + LoRA student (engines/student_lm.py) through the same functions the distill and generate stages use,
on a tiny Llama (SmolLM2's class) built here: save / load / fine-tune round trip, the neg direction, the shipped start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fake_upstream import COCO_AUTO, coco_rows, write_upstream
from hierarcaps import pipeline, shards
from hierarcaps.config import DistillConfig, StudentConfig, load_profile
from hierarcaps.engines.seq2seq import (
    ARTIFACTS,
    build_student,
    load_student,
    save_student,
    student_generate,
    student_score,
    student_sha256,
    train_tokenizer,
)
from hierarcaps.engines.seq2seq_train import epoch_batches, train_student
from hierarcaps.student.pairs import hierarchy_pairs, negative_source

POS = ["dog", "brown dog", "brown dog on a beach", "A brown dog runs on the beach at sunset."]
NEG = ["cat", "black dog", "brown dog in a park", "A brown dog runs on the beach in the rain."]
PAIRS = [(p["source_text"], p["target_text"]) for p in hierarchy_pairs("h", POS, NEG, ("s2g", "neg"))]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with a BPE tokenizer, saved like a hub checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [t for pair in PAIRS for t in pair]
    if COCO_AUTO.exists():
        texts += [t for r in coco_rows(0, 50).to_pylist() for t in r["positive"] + r["negative"]]
    tokenizer = train_tokenizer(texts * 3, 400)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def tiny_student(base: Path, start: str | None = None) -> StudentConfig:
    return StudentConfig(kind="causal-lora", base_model=str(base), base_package=None, base_gguf=None, start=start,
                         lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_targets=("q_proj", "v_proj", "down_proj"), threads=1)


def test_neg_pairs_hold_the_prefix_and_the_positive_tier_to_contradict():
    neg = [(p["source_text"], p["target_text"]) for p in hierarchy_pairs("h", POS, NEG) if p["direction"] == "neg"]
    assert neg == [
        ("neg: | dog", "cat"),
        ("neg: dog | brown dog", "black dog"),
        ("neg: dog => brown dog | brown dog on a beach", "brown dog in a park"),
        ("neg: dog => brown dog => brown dog on a beach | A brown dog runs on the beach at sunset.",
         "A brown dog runs on the beach in the rain."),
    ]
    assert [negative_source(POS, i) for i in range(1, 5)] == [s for s, _ in neg]
    # positive-only data has no neg pairs; the directions asked for are the directions given
    assert {p["direction"] for p in hierarchy_pairs("h", POS, None)} == {"s2g", "g2s"}
    assert {p["direction"] for p in hierarchy_pairs("h", POS, NEG, ("s2g", "neg"))} == {"s2g", "neg"}
    with pytest.raises(ValueError, match="unknown student direction"):
        hierarchy_pairs("h", POS, NEG, ("s2g", "sideways"))


def test_epoch_batches_cover_every_pair_once_and_depend_only_on_seed_and_epoch():
    lengths = [(i * 7919) % 53 for i in range(1000)]
    batches = epoch_batches(lengths, 16, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == epoch_batches(lengths, 16, seed=3, epoch=1) and batches != epoch_batches(lengths, 16, seed=3, epoch=2)
    # grouped by length: far less padding than the plain shuffle
    pad = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)  # noqa: E731
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    assert pad(batches) < pad([order[i : i + 16] for i in range(0, 1000, 16)]) / 3


def test_lora_student_trains_saves_loads_and_resumes_from_its_adapter(tiny_base, tmp_path):
    cfg = DistillConfig(student=tiny_student(tiny_base), max_steps=40, batch_size=5, learning_rate=2e-2, checkpoint_every=20,
                        max_source_len=128)
    model, tokenizer, summary = train_student(lambda: build_student(cfg.student, []), PAIRS * 4, PAIRS, cfg,
                                              checkpoint_dir=tmp_path / "ck", fingerprint="f", log_path=tmp_path / "log.json")
    log = json.loads((tmp_path / "log.json").read_text())
    assert summary["steps_run"] == 40 and log["epochs"][-1]["eval_loss"] < log["epochs"][0]["eval_loss"]
    # only the adapter is trained and saved: the base's weights are not in the student's folder
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    save_student(model, tokenizer, tmp_path / "student")
    saved = sorted(p.name for p in (tmp_path / "student").iterdir())
    assert "adapter_model.safetensors" in saved and "student.json" in saved and "model.safetensors" not in saved

    sources = [s for s, _ in PAIRS]
    model.eval()
    before = student_generate(model, tokenizer, sources, max_new_tokens=12, max_source_len=128)
    loaded, loaded_tok = load_student(tmp_path / "student")
    assert loaded.config.is_encoder_decoder is False
    assert student_generate(loaded, loaded_tok, sources, max_new_tokens=12, max_source_len=128) == before
    # the student's own likelihood ranks what it was trained on above other text (generate ranks negatives by it)
    trained = student_score(loaded, loaded_tok, sources, [t for _, t in PAIRS], max_source_len=128)
    swapped = student_score(loaded, loaded_tok, sources, [t for _, t in PAIRS[1:] + PAIRS[:1]], max_source_len=128)
    assert sum(a > b for a, b in zip(trained, swapped)) >= 4
    # sampling is seeded per row, whatever the batch
    one = student_generate(loaded, loaded_tok, sources, sample=True, seed=[5, 6, 7, 8, 9], max_new_tokens=12, max_source_len=128, batch_size=5)
    split = [student_generate(loaded, loaded_tok, [s], sample=True, seed=[k], max_new_tokens=12, max_source_len=128)[0]
             for s, k in zip(sources, [5, 6, 7, 8, 9])]
    assert one == split

    # fine-tuning starts from a saved adapter: the start's weights, trainable again
    resumed, _ = build_student(tiny_student(tiny_base, start=str(tmp_path / "student")), [])
    start_state = {n: p for n, p in loaded.named_parameters()}
    merged = resumed.merge_and_unload()
    assert all(torch.allclose(p, start_state[n], atol=1e-6) for n, p in merged.named_parameters() if n in start_state)


def test_a_start_without_an_adapter_is_a_clear_error(tiny_base, tmp_path):
    with pytest.raises(FileNotFoundError, match="no LoRA adapter"):
        build_student(tiny_student(tiny_base, start=str(tmp_path)), [])


def test_the_shipped_start_is_in_the_package_with_its_card():
    start = ARTIFACTS / "smollm2-lora"
    card = json.loads((start / "card.json").read_text())
    assert card["adapter_sha256"] == shards.sha256_file(start / "adapter_model.safetensors")
    assert card["training_data"]["hierarchies"]["train"] > 10_000 and "eval split never read" in card["split_rule"]
    assert json.loads((start / "student.json").read_text())["kind"] == "causal-lora"
    assert "hierarcaps train-student" in card["reproduce"]


@pytest.mark.skipif(not COCO_AUTO.exists(), reason="../shared/data is not beside this checkout")
@pytest.mark.parametrize("accepted", [0, 12])
def test_distill_fine_tunes_the_start_on_accepted_seeds_or_keeps_it_when_there_are_none(tiny_base, tmp_path, accepted):
    start = tmp_path / "start"
    model, tokenizer = build_student(tiny_student(tiny_base), [])
    save_student(model, tokenizer, start)
    overrides = {f"distill.student.{k}": v for k, v in tiny_student(tiny_base, str(start)).model_dump().items()}
    overrides.update({"distill.epochs": 1, "distill.batch_size": 4, "distill.checkpoint_every": 2, "distill.eval_fraction": 0.2})
    profile = load_profile("offline", overrides)
    rows = coco_rows(0, accepted)
    write_upstream(profile, tmp_path / "run", rows.slice(0, accepted // 2), rows.slice(accepted // 2))
    manifest = pipeline.run_stage("distill", tmp_path / "run", profile)
    assert manifest["stats"]["rows_in"] == manifest["stats"]["rows_out"] + manifest["stats"]["rows_rejected"] == accepted
    model_dir = tmp_path / "run" / "distill" / "model"
    if accepted:
        assert manifest["total_steps"] > 0 and manifest["model_sha256"] != student_sha256(start)
        assert "fine-tuned" in manifest["note"] and "accepted seeds" in manifest["note"]
    else:
        assert manifest["total_steps"] == 0 and manifest["model_sha256"] == student_sha256(start)
        assert "no seed or augment hierarchy was accepted" in manifest["note"]
    # the generate stage reads it without knowing its kind
    loaded, tok = load_student(model_dir)
    assert len(student_generate(loaded, tok, ["s2g: a dog on a beach", negative_source(POS, 2)], max_new_tokens=6, max_source_len=128)) == 2


def test_judged_training_keeps_only_the_positives_and_negative_tiers_the_offline_judge_accepts():
    from hierarcaps.nli.pairs import Hierarchy
    from hierarcaps.student.train import judge_hierarchies, training_pairs

    # the second row's negative tiers 2-4 repeat or refine their positive tier: none of them contradicts it
    refined = ["cat", "brown dog", "brown dog on a beach near the sea", "A brown dog runs on the beach at sunset near the sea."]
    rows = [Hierarchy(0, "u0", tuple(POS), tuple(NEG)), Hierarchy(1, "u1", tuple(POS), tuple(refined))]
    accepted = judge_hierarchies(rows, threads=1)
    assert accepted[0][0] and accepted[1][0]  # the same positive hierarchy, entailed at every tier
    assert accepted[1][2:] == [False, False, False] and accepted[0][2]  # "black dog" contradicts "brown dog"
    kept = training_pairs(rows, 2, accepted)
    assert kept.count(PAIRS[0]) == 4  # s2g, repeated twice per row
    assert ("neg: dog | brown dog", "black dog") in kept and ("neg: dog | brown dog", "brown dog") not in kept
    assert len(training_pairs(rows, 2)) == 2 * (2 + 4)


def test_next_words_are_the_model_s_likeliest_word_starts_whatever_the_batch(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hierarcaps.engines.student_lm import next_words

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base).eval(), AutoTokenizer.from_pretrained(tiny_base)
    prompts = ["a brown dog on a", "neg: dog | brown dog on the beach in the", "dog"]
    together = next_words(model, tokenizer, prompts, top_k=50)
    # left padding: a prompt gets the same words beside longer ones as alone
    assert together == [next_words(model, tokenizer, [p], top_k=50)[0] for p in prompts]
    with torch.no_grad():
        logits = model(**tokenizer(prompts[0], return_tensors="pt", add_special_tokens=False)).logits[0, -1]
    pieces = tokenizer.convert_ids_to_tokens(torch.argsort(logits, descending=True).tolist())
    space = tokenizer.convert_ids_to_tokens(tokenizer(" a", add_special_tokens=False)["input_ids"][0])[0]
    expected = [p[len(space):].lower() for p in pieces[:50] if p.startswith(space) and p[len(space):].isalpha()]
    assert together[0] == expected and expected  # best first, only pieces that begin a word
