import json
import subprocess
import sys

import pytest

from pipelines.cli import build_parser, main


def run_cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_hyperrule_json(capsys):
    assert main(["hyperrule", "--examples", "50000", "--image-size", "375x500", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["resize"], data["crop"], data["total_steps"], data["mixup_alpha"]) == (
        512,
        480,
        10_000,
        0.1,
    )
    assert data["decay_steps"] == [3000, 6000, 9000] and data["variant"] == "reference"


def test_hyperrule_table_with_overrides(capsys):
    argv = [
        "hyperrule",
        "--examples",
        "1000",
        "--image-size",
        "32x32",
        "--batch-size",
        "128",
        "--micro-batch-size",
        "32",
        "--mixup-alpha",
        "0.2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "accumulation_steps  4" in out
    assert "mixup_alpha         0.2                   override" in out
    assert "decay 1     801-1200          7.5e-05" in out  # lr of each phase, linear rule


def test_hyperrule_errors_are_one_line(capsys):
    assert main(["hyperrule", "--examples", "10", "--image-size", "32x32", "--crop", "999"]) == 2
    err = capsys.readouterr().err
    assert err == "bittune: error: crop 999 is larger than resize 160\n"
    with pytest.raises(SystemExit):
        main(["hyperrule", "--examples", "10", "--image-size", "32by32"])
    assert "expected HxW" in capsys.readouterr().err


def test_light_commands_do_not_import_tensorflow_or_kfp(odd_folder, tmp_path):
    root, _ = odd_folder
    code = (
        "import sys; from pipelines.cli import main\n"
        "assert main(['hyperrule', '--examples', '5', '--image-size', '9x9']) == 0\n"
        f"assert main(['analyze', {str(root)!r}, '--output', {str(tmp_path)!r}]) == 0\n"
        "heavy = [m for m in ('tensorflow', 'kfp', 'tensorflow_datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_every_command_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"hyperrule", "analyze", "run"} <= set(commands)
    for name in commands:
        done = run_cli(name, "--help")
        assert done.returncode == 0 and "usage: bittune " + name in done.stdout
        for action in commands[name]._actions:
            assert action.help, f"{name} {action.dest} has no help"


def test_analyze_command(odd_folder, tmp_path):
    root, _ = odd_folder
    done = run_cli("analyze", str(root), "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "25 images, 16 valid, 9 flagged, 5 non-items ignored; 3 classes" in done.stdout
    assert "flagged truncated: 2" in done.stdout
    assert "split balance: every class within " in done.stdout  # bittune's own splits
    assert (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/folder"], "bittune: error: data folder not found: /no/such/folder"),
        (["tfds:"], "bittune: error: empty TFDS dataset name"),
        (["{root}", "--split-fractions", "0.9,0.2,0"], "split fractions must add up to 1"),
        (["{root}", "--micro-batch-size", "7"], "micro_batch_size 7 must divide batch_size 512"),
    ],
)
def test_analyze_bad_input(odd_folder, tmp_path, args, message):
    root, _ = odd_folder
    args = [a.format(root=root) for a in args]
    done = run_cli("analyze", *args, "--output", str(tmp_path / "out"))
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bench_runs_a_named_benchmark_and_writes_its_table(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        ["bittune", "bench", "analysis", "--output", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # the console script finds the benchmarks beside its own source
    )
    # The exit status says whether the target was met; on a loaded machine it may not be.
    assert done.returncode in (0, 2), done.stderr[-2000:]
    assert "analysis vs full decode" in done.stdout
    table = report.read_text()
    assert "| analysis vs full decode |" in table and "| benchmark | setup |" in table


def test_bench_rejects_an_unknown_benchmark(tmp_path):
    done = subprocess.run(
        ["bittune", "bench", "no-such", "--output", "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "no-such" in done.stderr and "Traceback" not in done.stderr


def test_hyperrule_fields_are_typed_options_of_submit_merged_into_the_json_form():
    from pipelines import cli

    args = build_parser().parse_args(
        ["submit", "--host", "http://kfp", "--param", "data_source=gs://b/photos",
         "--param", 'hyperrule_overrides={"batch_size": 64, "crop": 96}',
         "--micro-batch-size", "16", "--crop", "128", "--hyperrule-variant", "paper"]
    )  # fmt: skip
    values = cli._params(args)
    assert json.loads(values["hyperrule_overrides"]) == {
        "batch_size": 64, "crop": 128, "micro_batch_size": 16,
    }  # fmt: skip
    assert values["hyperrule_variant"] == "paper"
    plain = cli._params(build_parser().parse_args(
        ["submit", "--host", "http://kfp", "--param", "data_source=gs://b/photos"]
    ))  # fmt: skip
    assert "hyperrule_overrides" not in plain and "hyperrule_variant" not in plain


def test_run_and_train_take_the_same_typed_hyperrule_options():
    commands = build_parser()._subparsers._group_actions[0].choices

    def options(name):
        return {o for action in commands[name]._actions for o in action.option_strings}

    typed = {"--batch-size", "--micro-batch-size", "--total-steps", "--decay-steps", "--crop"}
    for name in ("train", "run", "submit", "trigger"):
        assert typed <= options(name), name
