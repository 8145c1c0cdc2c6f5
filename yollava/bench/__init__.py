"""Benchmarks of the training path: the Yo'LLaVA reference loop, a true-width LLaVA-1.5-13B model, a FLOP model (nothing here is used by training)."""
