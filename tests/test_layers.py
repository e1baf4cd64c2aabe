"""The layer contract: imports go down the layers only, at module top, never guarded."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cinelab"


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(SRC.rglob("*.py"))]


def _is_cinelab(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return bool(node.module) and node.module.split(".")[0] == "cinelab"
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "cinelab" for a in node.names)
    return False


@pytest.mark.slow
def test_no_cinelab_import_inside_a_function() -> None:
    found = []
    for path, tree in _modules():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                found += [f"{path.relative_to(SRC)}:{n.lineno}" for n in ast.walk(fn)
                          if _is_cinelab(n)]
    assert found == []


@pytest.mark.slow
def test_no_import_error_guard_around_cinelab_modules() -> None:
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(_is_cinelab(n) for b in node.body
                                                 for n in ast.walk(b)):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []


def test_import_linter_layers_contract_is_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    root = SRC.parents[1]
    result = subprocess.run([exe], cwd=root,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
