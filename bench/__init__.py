"""Benchmarks and load tests that print measured figures; each runs on its own as a script."""
