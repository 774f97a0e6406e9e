"""Evaluation: RE metrics, encoders, semantic RSM retrieval, and the validate report."""
