"""Stage `distill`: fine-tune the student on the seed + augment hierarchies, in the directions generate uses.

Training pairs are defined once in student/pairs.py (s2g: caption -> tiers 1-3; g2s: prefix -> rest; neg: prefix |
positive tier i -> negative tier i). The split is by hierarchy (sha256 of its id), so no hierarchy has pairs in both
train and eval. In training the s2g pairs are repeated `s2g_repeat` times: a hierarchy has one s2g pair but up to
eight other pairs, and every generated positive comes from s2g. `pairs.parquet` lists each pair once.

Two kinds of student (engines/seq2seq.py): a T5 (paper: flan-t5-base, or a scratch T5) trained here, or a causal LM
with a LoRA adapter that starts from a shipped adapter trained on real hierarchies (offline: SmolLM2-135M; see
student/train.py) and is fine-tuned here on the run's accepted seeds. When no seed or augment row was accepted, a
student with a start is used as it is (the manifest says so); one without a start cannot be trained and the stage fails.

Outputs: `part-00000.parquet` (the hierarchies trained on), `rejects-00000.parquet` (duplicates / malformed rows),
`pairs.parquet` (schema.DISTILL_PAIRS), `checkpoints/`, `training_log.json` (loss per epoch) and `model/`, which
the generate stage loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from hierarcaps import schema, shards
from hierarcaps.checks import normalize
from hierarcaps.engines.embed import resolve_device
from hierarcaps.stage import ShardOutput, ShardTask, Stage, StageError
from hierarcaps.stats import Stats
from hierarcaps.student.pairs import S2G, hierarchy_pairs

log = logging.getLogger(__name__)

MODEL_DIR, PAIRS_FILE, LOG_FILE, CHECKPOINTS = "model", "pairs.parquet", "training_log.json", "checkpoints"
OFFLINE_NOTE = (
    "the offline student is a tiny T5 trained from scratch on a few dozen hierarchies of this run: it is weak "
    "(expect repetitive, often wrong tiers) and is not the paper's flan-t5-base student"
)


def split_of(row_id: str, eval_fraction: float) -> str:
    """'eval' for a stable ~eval_fraction of ids (sha256 of the id), else 'train'."""
    bucket = int(hashlib.sha256(row_id.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    return "eval" if bucket < eval_fraction else "train"


def _malformed(tiers: Any, label: str) -> str | None:
    if tiers is None:
        return f"{label} is missing" if label == "positive" else None
    if len(tiers) != schema.TIERS:
        return f"{label} has {len(tiers)} tiers, expected {schema.TIERS}"
    for i, tier in enumerate(tiers, start=1):
        if tier is None or not str(tier).strip():
            return f"{label} tier {i} is empty"
        if "=>" in tier:
            return f"{label} tier {i} contains the tier separator '=>'"
    return None


def select_hierarchies(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(usable rows, rejects): malformed rows and repeats of an id or of a positive hierarchy are rejected."""
    kept, rejects, seen_ids, seen_tiers = [], [], {}, {}
    for n, row in enumerate(rows):
        base = {"id": row.get("id"), "stage": "distill", "caption": row.get("caption"), "positive": row.get("positive"),
                "negative": row.get("negative"), "source_file": row.get("source_file"), "source_row": row.get("source_row", n)}
        where = f"{Path(base['source_file']).parent.name}/{Path(base['source_file']).name} row {base['source_row']}" if base["source_file"] else f"row {n}"
        problem = _malformed(row.get("positive"), "positive") or _malformed(row.get("negative"), "negative")
        if problem:
            rejects.append({**base, "reason": "malformed", "detail": f"{where}: {problem}"})
            continue
        key = tuple(normalize(t) for t in row["positive"])
        if row["id"] in seen_ids or key in seen_tiers:
            first = seen_ids.get(row["id"], seen_tiers.get(key))
            rejects.append({**base, "reason": "duplicate", "detail": f"{where} repeats {first} (same id or positive tiers)"})
            continue
        seen_ids[row["id"]] = seen_tiers[key] = where
        kept.append(row)
    return kept, rejects


class DistillStage(Stage):
    name = "distill"
    upstream = ("seed", "augment")
    output_schema = schema.HIERARCHIES

    def plan(self) -> list[ShardTask]:
        inputs = [str(p) for name in self.upstream for p in shards.output_shards(self.run_dir / name)]
        return [ShardTask(self.name, 0, tuple(inputs))]

    def student_id(self) -> str:
        s = self.cfg.student
        if s.kind == "causal-lora":
            return f"{s.base_model} + LoRA r={s.lora_r} (start: {s.start or 'new adapter'})"
        if s.pretrained:
            return s.pretrained
        return f"t5-scratch(d_model={s.d_model},layers={s.num_layers},vocab={s.vocab_size})"

    def models(self) -> dict[str, str]:
        return {"student": self.student_id()}

    def fingerprint_parts(self) -> dict[str, Any]:
        from hierarcaps.engines.seq2seq import student_start, student_sha256

        start = student_start(self.cfg.student) if self.cfg.student.kind == "causal-lora" else None
        return {"student_start_sha256": student_sha256(start)} if start else {}

    def process(self, task: ShardTask) -> ShardOutput:
        from hierarcaps.engines.runtime import torch_threads
        from hierarcaps.engines.seq2seq import build_student, student_threads
        from hierarcaps.engines.seq2seq_train import train_student

        # each row remembers its shard and row number, so a reject says where it came from
        rows = [
            {**row, "source_file": path, "source_row": n}
            for path in task.inputs
            for n, row in enumerate(shards.read_table(Path(path)).to_pylist())
        ]
        kept, rejects = select_hierarchies(rows)
        has_start = self.cfg.student.kind == "causal-lora" and self.cfg.student.start is not None
        if not kept and not has_start:
            raise StageError(f"distill: none of the {len(rows)} seed/augment hierarchies is usable; nothing to train on")
        pairs = [
            {**p, "split": split_of(row["id"], self.cfg.eval_fraction)}
            for row in kept
            for p in hierarchy_pairs(row["id"], row["positive"], row["negative"], tuple(self.cfg.directions))
        ]
        if kept and not any(p["split"] == "train" for p in pairs):
            raise StageError(f"distill: all {len(kept)} hierarchies fell in the eval split; lower distill.eval_fraction")
        shards.write_table(pa.Table.from_pylist(pairs, schema=schema.DISTILL_PAIRS), self.dir / PAIRS_FILE)
        train = [
            (p["source_text"], p["target_text"])
            for p in pairs
            if p["split"] == "train"
            for _ in range(self.cfg.s2g_repeat if p["direction"] == S2G else 1)
        ]
        evaluate = [(p["source_text"], p["target_text"]) for p in pairs if p["split"] == "eval"]
        log.info("distill: %d hierarchies -> %d train (s2g x%d) / %d eval pairs", len(kept), len(train), self.cfg.s2g_repeat, len(evaluate))
        texts = [t for p in pairs for t in (p["source_text"], p["target_text"])]
        device = resolve_device(self.cfg.device)
        advanced = 0

        def on_step(done: int, total: int) -> None:
            # the progress bar counts rows; training is nearly all of this stage's time, so move it with the steps
            nonlocal advanced
            target = len(rows) * done // max(1, total)
            self.advance(target - advanced)
            advanced = target

        with torch_threads(student_threads(self.cfg.student, device)):
            if train:
                model, tokenizer, summary = train_student(
                    lambda: build_student(self.cfg.student, texts, device),
                    train,
                    evaluate,
                    self.cfg,
                    checkpoint_dir=self.dir / CHECKPOINTS,
                    fingerprint=self.fingerprint(),
                    log_path=self.dir / LOG_FILE,
                    device=device,
                    on_step=on_step,
                )
            else:  # nothing accepted: the shipped start, unchanged
                model, tokenizer = build_student(self.cfg.student, texts, device)
                summary = {"total_steps": 0, "steps_run": 0, "seconds": 0.0, "steps_per_second": None, "eval_loss": None,
                           "train_loss": None, "resumed_from_step": None}
        self._save_model(model, tokenizer, {**summary, "hierarchies": len(kept), "fingerprint": self.fingerprint()})
        stats = Stats()
        stats.set("train_pairs", sum(p["split"] == "train" for p in pairs))
        stats.set("eval_pairs", len(evaluate))
        stats.set("train_steps_run", summary["steps_run"])
        stats.set("train_seconds", summary["seconds"])
        for r in rejects:
            stats.reject(r["reason"])
        self.advance(len(rows) - advanced)
        out = pa.Table.from_pylist([{k: r.get(k) for k in schema.HIERARCHIES.names} for r in kept], schema=schema.HIERARCHIES)
        return ShardOutput(out, schema.rejects_table(rejects), stats)

    def _save_model(self, model, tokenizer, summary: dict) -> None:
        from hierarcaps.engines.seq2seq import save_student

        tmp = self.dir / f".tmp-{MODEL_DIR}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_student(model, tokenizer, tmp)
        shards.atomic_write_json(tmp / "training_summary.json", summary)
        shutil.rmtree(self.dir / MODEL_DIR, ignore_errors=True)
        tmp.rename(self.dir / MODEL_DIR)

    def note(self, summary: dict) -> str:
        s = self.cfg.student
        if s.kind == "causal-lora":
            if not summary.get("hierarchies"):
                return (f"no seed or augment hierarchy was accepted, so the student is its start ({s.start}) unchanged: "
                        f"{s.base_model} with a LoRA adapter trained on the original pipeline's hierarchies")
            return f"student: {s.base_model} + LoRA from {s.start or 'a new adapter'}, fine-tuned for {summary['total_steps']} steps on this run's accepted seeds"
        if s.pretrained:
            return f"student: {s.pretrained} fine-tuned for {summary['total_steps']} steps"
        return OFFLINE_NOTE

    def manifest_extra(self) -> dict[str, Any]:
        from hierarcaps.engines.seq2seq import student_sha256

        model_dir = self.dir / MODEL_DIR
        summary = json.loads((model_dir / "training_summary.json").read_text())
        split = shards.read_table(self.dir / PAIRS_FILE, ["split"])["split"].to_pylist()
        eval_loss = summary["eval_loss"]
        return {
            "model_dir": str(model_dir.relative_to(self.run_dir)),
            "model_sha256": student_sha256(model_dir),
            "pairs_file": PAIRS_FILE,
            "train_pairs": split.count("train"),
            "eval_pairs": split.count("eval"),
            "eval_loss": eval_loss,
            "train_loss": summary["train_loss"],
            "total_steps": summary["total_steps"],
            "steps_per_second": summary["steps_per_second"],
            "note": self.note(summary) + ("" if eval_loss is None else f" (final eval loss {eval_loss:.2f})"),
        }
