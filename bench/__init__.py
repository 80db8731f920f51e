"""Benchmarks: quality against ground truth (quality.py) and speed (speed.py)."""
