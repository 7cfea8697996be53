"""Prefect flows: orchestration only (tasks run stages and commands, gate on metrics, publish files)."""
