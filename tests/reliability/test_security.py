"""Security: no secret in the compiled pipeline, in what is sent to KFP or in the CLI's output;
containers run as a non-root user; decoding is guarded; local paths stay in the data root;
nothing is loaded unsafely."""

from __future__ import annotations

import json
import os
import pathlib
import re

from components.bit.analysis import AnalysisConfig, analyze
from pipelines import cli
from tests.kfp_fake import FakeKfpServer
from tests.training_helpers import TINY_RULE

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = "ya29.bittune-secret-8d1e5f"


def test_no_secret_in_compiled_yaml_submission_or_output(tmp_path, monkeypatch, capsys, ledger):
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": SECRET}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN", SECRET)
    compiled = tmp_path / "pipeline.yaml"
    registry = ["--image-registry", "us-docker.pkg.dev/p/bittune"]
    assert cli.main(["compile", "--output", str(compiled), *registry]) == 0
    with FakeKfpServer() as kfp:
        code = cli.main(["submit", "--host", kfp.url, "--token", SECRET, "--pipeline",
                         str(compiled), "--param", "data_source=gs://b/photos",
                         "--param", "data_fingerprint=given"])  # fmt: skip
        sent = json.dumps([kfp.pipelines, kfp.versions, kfp.runs, kfp.experiments])
    assert code == 0
    output = capsys.readouterr()
    scanned = {"compiled YAML": compiled.read_text(), "sent to KFP": sent,
               "stdout": output.out, "stderr": output.err}  # fmt: skip
    leaks = [where for where, text in scanned.items() if SECRET in text]
    ledger["files_scanned"] += len(scanned)
    ledger["secrets_found"] += len(leaks)
    assert leaks == []
    assert "data_source" in sent  # the scan looked at the real submission


def test_images_run_as_a_non_root_user(tmp_path):
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", final_stage, flags=re.MULTILINE)
    assert users and users[-1] == "1000:1000"  # numeric, so runAsNonRoot can verify it
    from components.bit.machines import TrainingMachine
    from pipelines import submit

    images = set()
    for accelerator in ("gpu", "tpu"):  # the shipped YAML trains on a GPU; compile a TPU one
        path = submit.compile_pipeline(str(tmp_path / f"{accelerator}.yaml"), "bittune",
                                       machine=TrainingMachine(accelerator))  # fmt: skip
        images |= set(re.findall(r"image: (\S+)", pathlib.Path(path).read_text()))
    kinds = {"cpu", "gpu", "tpu"}
    assert images == {f"bittune/bittune-{kind}:0.1.0" for kind in kinds}  # built from it


def test_local_paths_cannot_leave_the_data_root(tmp_path, ledger):
    root = tmp_path / "photos"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    os.symlink(secret, root / "cats" / "escape.png")  # inside the folder, pointing out of it
    from tests.imagegen import write_photo

    for n in range(4):
        write_photo(root / ("cats", "dogs")[n % 2] / f"{n}.jpg", n)
    result = analyze(AnalysisConfig(str(root), hyperrule_overrides=TINY_RULE, progress=False))
    flagged = {f["path"]: f for f in result.stats["flagged"]}
    assert flagged["cats/escape.png"]["code"] == "outside_root"
    assert "symlink escapes the data root" in flagged["cats/escape.png"]["reason"]

    manifest = root / "list.csv"
    manifest.write_text("image,label\ncats/0.jpg,cats\n../secret.png,cats\n/etc/hostname,dogs\n"
                        "dogs/1.jpg,dogs\n")  # fmt: skip
    result = analyze(AnalysisConfig(str(manifest), hyperrule_overrides=TINY_RULE, progress=False))
    codes = {f["path"]: f["code"] for f in result.stats["flagged"]}
    assert codes == {"../secret.png": "outside_root", "/etc/hostname": "outside_root"}
    ledger["items_rejected"] += 3


def test_nothing_is_loaded_unsafely():
    unsafe = re.compile(
        r"yaml\.load\(|yaml\.unsafe_load|yaml\.full_load|pickle\.loads?\(|\beval\(|\bexec\("
        r"|allow_pickle=True|shell=True|marshal\.loads"
    )
    sources = [
        p
        for folder in ("components", "pipelines", "benchmarks", "docker")
        for p in (ROOT / folder).rglob("*.py")
    ]
    assert len(sources) > 20
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sources
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert found == []
