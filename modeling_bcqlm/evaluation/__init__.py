"""Evaluation: the official VQA accuracy metric, as an `evaluate` module and as plain functions."""
