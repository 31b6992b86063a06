"""Tiny, randomly initialised BcQLM models, processors and CLIP teachers built offline, for tests and benchmarks."""
