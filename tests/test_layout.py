"""Project layout rules: a KFP-free core library, and lint-clean code."""

import ast
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_library_does_not_import_kfp():
    for path in (ROOT / "components" / "bit").glob("*.py"):
        assert "kfp" not in imported_modules(path), path


def test_hyperrule_module_imports_no_tensorflow():
    assert not {"tensorflow", "numpy"} & imported_modules(ROOT / "components/bit/hyperrule.py")


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    done = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
