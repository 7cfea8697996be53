"""Benchmarks: scripts run as `python bench/<name>.py`, each printing its tables."""
