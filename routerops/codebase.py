"""Which of the project's own source files a module runs: its static import closure.

DVC re-runs a stage when one of its listed deps changes, and a training checkpoint is only
resumed by the code that wrote it, so both need the set of files a stage's code is made of. It
is computed, never restated by hand: every `import`/`from ... import` statement in a file (at any
depth, including imports inside functions and `TYPE_CHECKING` blocks, so the answer errs on the
side of including), resolved against the repository, followed transitively. Packages bring
their `__init__.py` files (Python runs them on import). Imports of anything outside the
repository (verl, torch, ...) are not followed.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["code_hash", "import_closure", "module_file"]


def module_file(module: str, root: Path) -> Path | None:
    """The file of `module` inside `root` (a module or a package's `__init__.py`), if any."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imported(tree: ast.AST, module: str, path: Path) -> Iterator[str]:
    """Every module name an import statement of the file may load (parents included)."""
    package = _package_of(module, path)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base_parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{a.name}" if base else a.name for a in node.names if a.name != "*"]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                yield ".".join(parts[:i])


def import_closure(modules: Iterable[str], root: Path) -> tuple[str, ...]:
    """Repository-relative POSIX paths of the files `modules` run, sorted."""
    root = root.resolve()
    todo = list(modules)
    seen_modules: set[str] = set()
    files: set[Path] = set()
    while todo:
        module = todo.pop()
        if module in seen_modules:
            continue
        seen_modules.add(module)
        path = module_file(module, root)
        if path is None:
            continue  # not part of the repository (a dependency, or a name inside a module)
        files.add(path)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        todo.extend(_imported(tree, module, path))
    return tuple(sorted(p.relative_to(root).as_posix() for p in files))


def code_hash(paths: Iterable[str], root: Path) -> str:
    """A content hash of the given repository files (names and bytes), 16 hex digits."""
    h = hashlib.sha256()
    for rel in sorted(paths):
        h.update(rel.encode())
        h.update(b"\0")
        h.update((root / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]
