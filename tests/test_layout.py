"""Project layout rules (docs/architecture.md): a KFP-free core library whose stages import
shared modules only, short functions, nothing importing back up, and lint-clean code."""

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


STAGES = {"analysis", "preprocess", "training", "evaluation", "push"}


def bittune_imports(path: pathlib.Path) -> set[str]:
    """The components.bit modules a library module imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "components.bit":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("components.bit."):
            found.add(node.module.split(".")[2])
    return found


def test_stages_import_shared_modules_only():
    for stage in STAGES:
        others = bittune_imports(ROOT / "components" / "bit" / f"{stage}.py") & (STAGES - {stage})
        assert not others, f"{stage} imports the stage(s) {others}"


def test_nothing_imports_back_up():
    """The library never imports components/, pipelines/ or benchmarks/; components never
    import pipelines/ or benchmarks/; the shipped command line never imports benchmarks/."""
    for path in (ROOT / "components" / "bit").glob("*.py"):
        upward = {m for m in _modules(path) if m.startswith(("pipelines", "benchmarks"))}
        upward |= {m for m in _modules(path) if m.startswith("components.")
                   and not m.startswith("components.bit")}  # fmt: skip
        assert not upward, (path, upward)
    for path in [*(ROOT / "components").glob("*.py"), *(ROOT / "pipelines").glob("*.py")]:
        assert not {m for m in _modules(path) if m.startswith("benchmarks")}, path
    for path in (ROOT / "components").glob("*.py"):
        assert not {m for m in _modules(path) if m.startswith("pipelines")}, path


def _modules(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_function_is_over_80_lines():
    long = []
    for folder in ("components", "pipelines", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {length}")
    assert long == []


def test_hyperrule_module_imports_no_tensorflow():
    assert not {"tensorflow", "numpy"} & imported_modules(ROOT / "components/bit/hyperrule.py")


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    done = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
