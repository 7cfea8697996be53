"""Pipeline stages, one module each: `python -m stages.<name>` is the `cmd:` of its DVC stage."""
