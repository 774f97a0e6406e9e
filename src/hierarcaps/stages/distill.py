"""Stage `distill`: fine-tune the seq2seq student on the seed + augment hierarchies, in both directions.

Training pairs (a direction tag starts every source; tiers are joined with " => "):
- s2g (specific -> general): "s2g: <caption>"  ->  "t1 => t2 => t3"  (the caption stays tier 4, never generated)
- g2s (general -> specific), i = 0..3: "g2s: t1 => ... => ti"  ->  "t(i+1) => ... => t4"; i = 0 is "g2s:" alone, so
  the generate stage can sample a tier-1 alternative from nothing.
- g2s negatives (`include_negatives`, default on), i = 1..4: "g2s: t1 => ... => t(i-1)"  ->  "n_i". A negative tier i
  entails positive tier i-1 and contradicts tier i, so it is a valid alternative continuation of that prefix; training
  on it teaches the student that a prefix has several continuations, which is what sampled negatives draw on. Its
  target is the one tier (the negative's later tiers do not continue it), and generate reads only the first tier.
The split is by hierarchy (sha256 of its id), so no hierarchy has pairs in both train and eval. In training the s2g
pairs are repeated `s2g_repeat` times (default 4): a hierarchy has one s2g pair but up to eight g2s pairs, and every
generated positive comes from s2g. `pairs.parquet` lists each pair once.

Outputs: `part-00000.parquet` (the hierarchies trained on), `rejects-00000.parquet` (duplicates / malformed rows),
`pairs.parquet` (schema.DISTILL_PAIRS), `checkpoints/`, `training_log.json` (loss per epoch) and `model/`
(safetensors + tokenizer), which the generate stage loads.
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
from hierarcaps.config import DistillConfig
from hierarcaps.engines.embed import resolve_device
from hierarcaps.stage import ShardOutput, ShardTask, Stage, StageError
from hierarcaps.stats import Stats

log = logging.getLogger(__name__)

S2G, G2S = "s2g", "g2s"
MODEL_DIR, PAIRS_FILE, LOG_FILE, CHECKPOINTS = "model", "pairs.parquet", "training_log.json", "checkpoints"
OFFLINE_NOTE = (
    "the offline student is a tiny T5 trained from scratch on a few dozen hierarchies of this run: it is weak "
    "(expect repetitive, often wrong tiers) and is not the paper's flan-t5-base student"
)


def source_text(direction: str, tiers: list[str]) -> str:
    return f"{direction}: {schema.SEPARATOR.join(tiers)}".rstrip()


def hierarchy_pairs(row_id: str, positive: list[str], negative: list[str] | None, include_negatives: bool = True) -> list[dict]:
    """The training pairs of one hierarchy (without `split`), in a fixed order."""
    join = schema.SEPARATOR.join
    pairs = [{"id": row_id, "direction": S2G, "source_text": source_text(S2G, [positive[3]]), "target_text": join(positive[:3])}]
    for i in range(schema.TIERS):
        pairs.append({"id": row_id, "direction": G2S, "source_text": source_text(G2S, positive[:i]), "target_text": join(positive[i:])})
    if include_negatives and negative is not None:
        for i in range(1, schema.TIERS + 1):
            pairs.append({"id": row_id, "direction": G2S, "source_text": source_text(G2S, positive[: i - 1]), "target_text": negative[i - 1]})
    return pairs


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

    @property
    def cfg(self) -> DistillConfig:
        return self.profile.distill

    def plan(self) -> list[ShardTask]:
        inputs = [str(p) for name in self.upstream for p in shards.output_shards(self.run_dir / name)]
        return [ShardTask(self.name, 0, tuple(inputs))]

    def student_id(self) -> str:
        s = self.cfg.student
        if s.pretrained:
            return s.pretrained
        return f"t5-scratch(d_model={s.d_model},layers={s.num_layers},vocab={s.vocab_size})"

    def models(self) -> dict[str, str]:
        return {"student": self.student_id()}

    def process(self, task: ShardTask) -> ShardOutput:
        from hierarcaps.engines.runtime import torch_threads
        from hierarcaps.engines.seq2seq import build_student, save_student, student_threads
        from hierarcaps.engines.seq2seq_train import train_student

        # each row remembers its shard and row number, so a reject says where it came from
        rows = [
            {**row, "source_file": path, "source_row": n}
            for path in task.inputs
            for n, row in enumerate(shards.read_table(Path(path)).to_pylist())
        ]
        kept, rejects = select_hierarchies(rows)
        if not kept:
            raise StageError(f"distill: none of the {len(rows)} seed/augment hierarchies is usable; nothing to train on")
        pairs = [
            {**p, "split": split_of(row["id"], self.cfg.eval_fraction)}
            for row in kept
            for p in hierarchy_pairs(row["id"], row["positive"], row["negative"], self.cfg.include_negatives)
        ]
        if not any(p["split"] == "train" for p in pairs):
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
            target = len(rows) * done // total
            self.advance(target - advanced)
            advanced = target

        with torch_threads(student_threads(self.cfg.student, device)):
            model, tokenizer, summary = train_student(
                lambda: build_student(self.cfg.student, texts),
                train,
                evaluate,
                self.cfg,
                checkpoint_dir=self.dir / CHECKPOINTS,
                fingerprint=self.fingerprint(),
                log_path=self.dir / LOG_FILE,
                device=device,
                on_step=on_step,
            )
        tmp = self.dir / f".tmp-{MODEL_DIR}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_student(model, tokenizer, tmp)
        shutil.rmtree(self.dir / MODEL_DIR, ignore_errors=True)
        tmp.rename(self.dir / MODEL_DIR)
        shards.atomic_write_json(self.dir / MODEL_DIR / "training_summary.json", {**summary, "fingerprint": self.fingerprint()})
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

    def manifest_extra(self) -> dict[str, Any]:
        model_dir = self.dir / MODEL_DIR
        summary = json.loads((model_dir / "training_summary.json").read_text())
        split = shards.read_table(self.dir / PAIRS_FILE, ["split"])["split"].to_pylist()
        if self.cfg.student.pretrained:
            note = f"student: {self.cfg.student.pretrained} fine-tuned for {summary['total_steps']} steps"
        else:
            note = OFFLINE_NOTE
        eval_loss = summary["eval_loss"]
        return {
            "model_dir": str(model_dir.relative_to(self.run_dir)),
            "model_sha256": shards.sha256_file(model_dir / "model.safetensors"),
            "pairs_file": PAIRS_FILE,
            "train_pairs": split.count("train"),
            "eval_pairs": split.count("eval"),
            "eval_loss": eval_loss,
            "train_loss": summary["train_loss"],
            "total_steps": summary["total_steps"],
            "steps_per_second": summary["steps_per_second"],
            "note": note + ("" if eval_loss is None else f" (final eval loss {eval_loss:.2f})"),
        }
