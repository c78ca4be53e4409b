"""Evaluation: metrics of a model on the eval split, the deploy decision, and the report."""
