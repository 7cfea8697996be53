"""Local infrastructure for RouterOps: services the pipeline needs, run on loopback."""
