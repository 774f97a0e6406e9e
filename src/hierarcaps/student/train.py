"""Train the offline student's shipped start: SmolLM2-135M-Instruct + a LoRA adapter, on real hierarchies.

Why shipped (as the NLI stand-in is): a run's seed stage gives a few dozen hierarchies, far too few to teach a student
the task, and the development share it is trained on is not redistributable (the HierarCaps release states no
license). Training it takes ~20 CPU-minutes once; the distill stage then fine-tunes this start on the run's own
accepted seeds (or uses it as it is when none were accepted).

Data: the original pipeline's accepted hierarchies (`hierarcaps_coco_auto`), split by image with the NLI stand-in's
rule (nli/pairs.py: sha256 of the image URL, 80 / 10 / 10 train / dev / eval); training reads train, the eval loss
reads a fixed sample of dev, and the eval images are never read here (the quality bench draws its captions from them).
The training loop is the distill stage's (engines/seq2seq_train.py): resumable, and bit for bit the same on the same
machine, torch build and thread count.

`--judged` (issue #18) keeps only what the offline judge (the filter's NLI, `judge.Judge`) accepts: a caption -> tiers
pair when the caption and each tier entail the tier before, a negative tier when it contradicts positive tier i and
entails positive tier i-1. Reviewers found most of the original pipeline's negative tiers 2-4 compatible with their
positive; a student trained on all of them learns to write compatible ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path

from typing import Annotated

from hierarcaps import __version__, shards
from hierarcaps.config import DistillConfig, StudentConfig
from hierarcaps.nli import pairs as nli_pairs
from hierarcaps.options import Opt
from hierarcaps.student.pairs import NEG, S2G, hierarchy_pairs

log = logging.getLogger(__name__)

DIRECTIONS = (S2G, NEG)  # what the generate stage asks of the student; g2s pairs would cost steps it never uses
EVAL_PAIRS = 400


def training_pairs(hierarchies, s2g_repeat: int, accepted: dict | None = None) -> list[tuple[str, str]]:
    """(source, target) pairs in a fixed order; with `accepted` (row -> [positive ok, negative tier 1..4 ok]) only
    the accepted ones."""
    out = []
    for h in hierarchies:
        keep = accepted[h.row] if accepted is not None else [True] * 5
        tier = 0  # hierarchy_pairs gives the neg pairs in tier order; other directions follow the positive's verdict
        for p in hierarchy_pairs(str(h.row), list(h.positive), list(h.negative), DIRECTIONS):
            tier += p["direction"] == NEG
            if keep[tier if p["direction"] == NEG else 0]:
                out += [(p["source_text"], p["target_text"])] * (s2g_repeat if p["direction"] == S2G else 1)
    return out


def judge_hierarchies(hierarchies, threads: int) -> dict:
    """row -> [positive side passes, negative tier 1..4 passes] by the offline profile's judge (one NLI pass)."""
    from hierarcaps.config import load_profile
    from hierarcaps.engines.runtime import torch_threads
    from hierarcaps.judge import Judge, negative_tier_pairs, rule_pairs

    judge = Judge(load_profile("offline"))
    groups = [group for h in hierarchies for group in
              [rule_pairs(list(h.positive), None)] + [negative_tier_pairs(list(h.positive), t, h.negative[t - 1]) for t in range(1, 5)]]
    with torch_threads(threads):
        margins = judge.margins(groups)
    return {h.row: [m >= 0 for m in margins[5 * k : 5 * k + 5]] for k, h in enumerate(hierarchies)}


def train_start(
    out: Annotated[Path, Opt("adapter folder (adapter + tokenizer + student.json + card.json)", ("--out", "-o"))],
    data: Annotated[Path, Opt("hierarcaps_coco_auto CSV (positive,negative,image_url)", ("--data", "-d"))] = nli_pairs.DEFAULT_DATA,
    work: Annotated[Path | None, Opt("checkpoint folder, so a killed run resumes from it (default: OUT/../.NAME-work)")] = None,
    steps: Annotated[int, Opt("optimizer steps")] = 480,
    batch_size: Annotated[int, Opt("pairs per step")] = 16,
    learning_rate: Annotated[float, Opt("peak learning rate (linear warm-up and decay)", ("--lr", "--learning-rate"))] = 5e-4,
    s2g_repeat: Annotated[int, Opt("copies of each caption -> tiers pair")] = 2,
    seed: Annotated[int, Opt("seeds the adapter init, batch order and dropout")] = 0,
    threads: Annotated[int, Opt("torch CPU threads (bit-for-bit reproduction needs the same count)")] = 2,
    judged: Annotated[bool, Opt("train only on what the offline judge accepts: entailed positives, contradicting negatives")] = False,
    student: StudentConfig | None = None,
) -> dict:
    """Train the adapter into `out` (adapter + tokenizer + student.json + card.json) and return the card. `work` holds
    the checkpoints (default: `out`/../.<name>-work): a killed run resumes from its last one. The annotated arguments
    are `hierarcaps train-student`'s options and the `train-student` flow's parameters (options.py)."""
    import torch  # here, not at the top: the CLI reads this signature without loading torch

    from hierarcaps.engines.embed import packaged_path
    from hierarcaps.engines.runtime import torch_threads
    from hierarcaps.engines.seq2seq import build_student, save_student
    from hierarcaps.engines.seq2seq_train import train_student

    started = time.perf_counter()
    out = Path(out)
    work = Path(work) if work else out.parent / f".{out.name}-work"
    student = (student or StudentConfig(kind="causal-lora")).model_copy(update={"start": None, "threads": threads})
    hierarchies = nli_pairs.load_hierarchies(data)
    splits = nli_pairs.split_hierarchies(hierarchies)
    accepted = judge_hierarchies(splits["train"] + splits["dev"], threads) if judged else None
    train = training_pairs(splits["train"], s2g_repeat, accepted)
    dev = training_pairs(splits["dev"], 1, accepted)
    evaluate = random.Random(seed).sample(dev, min(EVAL_PAIRS, len(dev)))
    cfg = DistillConfig(student=student, max_steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                        checkpoint_every=max(1, min(40, steps)), keep_checkpoints=1, eval_fraction=0.0,
                        max_source_len=128, max_target_len=64)
    data_sha = nli_pairs.file_sha256(Path(data))
    hyper = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "s2g_repeat": s2g_repeat, "seed": seed,
             "threads": threads, "directions": list(DIRECTIONS), "student": student.model_dump(mode="json")}
    if judged:
        from hierarcaps.engines.minilm_nli import MINILM_NLI

        hyper["judged_by"] = {"nli": "minilm-nli", "weights_sha256": json.loads((MINILM_NLI / "card.json").read_text())["weights_sha256"],
                              "accepted": {"positive": sum(a[0] for a in accepted.values()),
                                           **{f"negative_{t}": sum(a[t] for a in accepted.values()) for t in range(1, 5)}},
                              "of": len(accepted)}
    fingerprint = hashlib.sha256(json.dumps({"data": data_sha, **hyper, "code": __version__}, sort_keys=True).encode()).hexdigest()
    log.info("student start: %d train pairs (%d hierarchies), %d eval pairs, %d steps of %d", len(train), len(splits["train"]),
             len(evaluate), steps, batch_size)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch_threads(threads):
            model, tokenizer, summary = train_student(
                lambda: build_student(student, []), train, evaluate, cfg, checkpoint_dir=work / "checkpoints",
                fingerprint=fingerprint, log_path=work / "training_log.json",
            )
    finally:
        torch.use_deterministic_algorithms(deterministic)
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_student(model, tokenizer, tmp)
    card = {
        "name": out.name,
        "description": (
            f"LoRA adapter (r={student.lora_r}) for {student.base_model} ({student.base_gguf} from the {student.base_package} "
            "package), trained to write HierarCaps tiers: 's2g: <caption>' -> 't1 => t2 => t3' and "
            "'neg: t1 => ... => t(i-1) | p_i' -> a negative tier i. A 135M-parameter stand-in for the paper's flan-t5-base "
            "student, trained on the original pipeline's uncurated hierarchies: it writes plausible tiers for COCO-like "
            "captions, is weaker than the paper's student, and has never seen other domains."
        ),
        "base": {"model": student.base_model, "package": student.base_package, "gguf": student.base_gguf,
                 "gguf_sha256": shards.sha256_file(packaged_path(student.base_package, student.base_gguf)) if student.base_package else None},
        "training_data": {"file": Path(data).name, "sha256": data_sha, "hierarchies": {s: len(v) for s, v in splits.items()},
                          "images": {s: len({h.image_url for h in v}) for s, v in splits.items()}, "train_pairs": len(train),
                          "eval_pairs": len(evaluate), "examples_seen": steps * batch_size},
        "split_rule": nli_pairs.SPLIT_RULE + "; trained on train, eval loss on a fixed sample of dev, eval split never read",
        "hyper_parameters": hyper,
        "eval_loss": summary["eval_loss"],
        "train_loss": summary["train_loss"],
        "training_log": json.loads((work / "training_log.json").read_text()),
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "adapter_sha256": shards.sha256_file(tmp / "adapter_model.safetensors"),
        "reproduce": (f"hierarcaps train-student --out {out.name} --steps {steps} --batch-size {batch_size} --lr {learning_rate} "
                      f"--s2g-repeat {s2g_repeat} --seed {seed} --threads {threads}" + (" --judged" if judged else "")),
    }
    shards.atomic_write_json(tmp / "card.json", card)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return card
