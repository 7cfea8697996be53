"""RouterOps core library: train, evaluate, ship and audit cost-aware LLM routers.

It imports no Prefect, DVC or BentoML; stages, flows and services build on it.
"""
