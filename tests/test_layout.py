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
    for path in (ROOT / "components" / "bit").rglob("*.py"):
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


def stage_modules(stage: str) -> list[pathlib.Path]:
    """A stage's source: its module, or every module of its package."""
    module = ROOT / "components" / "bit" / f"{stage}.py"
    return [module] if module.exists() else sorted((module.parent / stage).glob("*.py"))


def test_stages_import_shared_modules_only():
    for stage in STAGES:
        assert stage_modules(stage), f"no source for the stage {stage}"
        for path in stage_modules(stage):
            others = bittune_imports(path) & (STAGES - {stage})
            assert not others, f"{path.name} of {stage} imports the stage(s) {others}"


def test_nothing_imports_back_up():
    """The library never imports components/, pipelines/ or benchmarks/; components never
    import pipelines/ or benchmarks/; the shipped command line never imports benchmarks/."""
    for path in (ROOT / "components" / "bit").rglob("*.py"):
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
    """Product code and tests alike."""
    long = []
    for folder in ("components", "pipelines", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {length}")
    assert long == []


def test_no_test_module_imports_another():
    """Shared test code lives in conftest.py or helper modules, never in a test module."""
    found = []
    for path in (ROOT / "tests").rglob("*.py"):
        imported = {m.rsplit(".", 1)[-1] for m in _modules(path) if m.startswith("tests")}
        found += [f"{path.relative_to(ROOT)}: {m}" for m in imported if m.startswith("test_")]
    assert found == []


def test_each_parameter_has_one_name_on_the_command_line():
    """A table parameter's option is ``--its-name`` (``--no-its-name`` for a true boolean) in
    every command that has it."""
    from components.bit import params
    from pipelines.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    wrong = []
    for command, parser in commands.items():
        for action in parser._actions:
            if action.dest in params.PARAMETERS and action.option_strings:
                dashed = action.dest.replace("_", "-")
                if set(action.option_strings) - {f"--{dashed}", f"--no-{dashed}"}:
                    wrong.append(f"{command} {action.option_strings} for {action.dest}")
    assert wrong == []


# Component inputs that are table parameters but no field of the stage's config, and why.
NOT_CONFIG = {
    "data_fingerprint": "only keeps changed data from being a cache hit",
    "checkpoint_root": "picks the checkpoint folder (durable_folder)",
    "training_memory": "a pod resource, not training's business",
    "preprocess_workers": "the number of tasks: plan_workers' and write_shards' own input",
}


@pytest.mark.parametrize(
    ("component", "config"),
    [
        ("components.analyze:analyze_dataset", "components.bit.analysis:AnalysisConfig"),
        ("components.preprocess:write_shards", "components.bit.preprocess:PreprocessConfig"),
        ("components.train:train_model", "components.bit.training:TrainConfig"),
        ("components.evaluate:evaluate_model", "components.bit.evaluation:EvalConfig"),
    ],
)
def test_each_parameter_has_one_name_in_components_and_configs(component, config):
    """Every table parameter a component takes reaches its stage's config under the same
    name (``…Config.from_params`` matches them by name), or is listed in NOT_CONFIG."""
    import dataclasses
    import importlib

    from components.bit import params

    def load(spec):
        module, name = spec.split(":")
        return getattr(importlib.import_module(module), name)

    inputs = load(component).component_spec.inputs
    fields = {field.name for field in dataclasses.fields(load(config))}
    table = {name for name in inputs if name in params.PARAMETERS}
    assert table - fields - set(NOT_CONFIG) == set()


def test_hyperrule_module_imports_no_tensorflow():
    assert not {"tensorflow", "numpy"} & imported_modules(ROOT / "components/bit/hyperrule.py")


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    done = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
