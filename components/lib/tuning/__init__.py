"""Hyperparameter tuning: the study (what is tuned, over which ranges, for which metric), its
trials, and the two ways of running it: a Vertex AI hyperparameter tuning job, or a seeded
search in one step where the pipeline runs elsewhere (kfp.local)."""
