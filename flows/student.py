"""Prefect flow for the offline student's shipped start: `train_start`, whose arguments are also `hierarcaps
train-student`'s options; the flow's parameters and defaults are read from its signature (options.py)."""

from __future__ import annotations

from hierarcaps.options import prefect_flow
from hierarcaps.student.train import train_start

train_student_flow = prefect_flow(
    train_start, "train-student", "Train the offline student's start (SmolLM2-135M + LoRA) on HierarCaps hierarchies.",
    lambda card: f"trained the student start: eval loss {card['eval_loss']:.3f}, {card['seconds']:.0f} s",
)
