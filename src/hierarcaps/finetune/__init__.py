"""Radial Embedding fine-tuning of text encoders on hierarchies (`hierarcaps finetune`)."""
