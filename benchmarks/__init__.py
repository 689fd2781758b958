"""Benchmarks of Dolphin Desk; results are written to benchmarks/results/."""
