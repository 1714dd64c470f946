"""bittune's CPU training step against the reference PyTorch BiT R50x1, side by side.

One optimizer step (forward, backward, SGD with momentum 0.9) of R50x1 on 8 float32 images of
128 x 128 px and 10 classes, with 2 intra-op and 2 inter-op threads on each side. The
reference is the official implementation, big_transfer's ``bit_pytorch/models.py``: it is not
packaged, so it is fetched once from its public source (GitHub, a pinned commit, checked by
SHA-256) into ``~/.cache/bittune/reference/``, or read from ``BIT_PYTORCH_DIR`` (a checkout's
``bit_pytorch`` folder). timm's ``resnetv2_50x1_bit`` (the same architecture, installed from
PyPI by the ``bench`` extra) is measured alongside. Each model runs in its own process
(torchvision's extension crashes once TensorFlow is loaded); warm-up steps are excluded, repeats
alternate between the processes, and a ratio is the median of the per-repeat ratios.
Target: bittune >= 1.2x the official implementation's images/s.

TensorFlow's kernels are measured both ways in the same run: bittune's own setting (oneDNN on,
``TF_ENABLE_ONEDNN_OPTS=1``) and TensorFlow's default on CPUs without AVX-512 VNNI/BF16 or AMX
(the Eigen fallback, ``TF_ENABLE_ONEDNN_OPTS=0``), each in a process of its own. The main job's
own training step (the shipped bittune-tiny, 28 px crops, batch 128) is measured the same way.
Target: oneDNN >= 2x the fallback on the main job's step.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable

BATCH, SIZE, CLASSES, THREADS = 8, 128, 10, 2
MAIN_JOB = {"model": "bittune-tiny", "size": 28, "batch": 128}  # the demo schedule's step
WARMUP, REPEATS, STEPS = 3, 9, 2
TARGET = 1.2
ONEDNN_TARGET = 2.0
EIGEN = "-eigen"  # a kind's suffix: the same step with oneDNN off (TensorFlow's AVX2 default)
ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCES = {"timm": "timm resnetv2_50x1_bit", "official": "big_transfer bit_pytorch ResNetV2"}
OFFICIAL_COMMIT = "140de6e704fd8d61f3e5ea20ffde130b7d5fd065"  # google-research/big_transfer
OFFICIAL_URL = (
    f"https://raw.githubusercontent.com/google-research/big_transfer/{OFFICIAL_COMMIT}"
    "/bit_pytorch/models.py"
)
OFFICIAL_SHA256 = "209e5af7d3e58f9efcaccc63163ac0659b80c08430c74f9ea4f2c0e3f1e62972"
OFFICIAL_CACHE = pathlib.Path.home() / ".cache" / "bittune" / "reference" / OFFICIAL_COMMIT


def official_folder() -> tuple[str | None, str]:
    """The folder holding big_transfer's ``models.py`` and where it came from, or ``None`` and
    why it is unavailable: ``BIT_PYTORCH_DIR``, else the cached (or now fetched) pinned file."""
    given = os.environ.get("BIT_PYTORCH_DIR")
    if given:
        if not os.path.isfile(os.path.join(given, "models.py")):
            return None, f"BIT_PYTORCH_DIR={given} has no models.py"
        return given, f"BIT_PYTORCH_DIR={given}"
    cached = OFFICIAL_CACHE / "models.py"
    if not cached.exists():
        try:
            with urllib.request.urlopen(OFFICIAL_URL, timeout=30) as response:
                body = response.read()
        except OSError as exc:
            return None, f"cannot fetch {OFFICIAL_URL} ({exc}); set BIT_PYTORCH_DIR instead"
        if hashlib.sha256(body).hexdigest() != OFFICIAL_SHA256:
            return None, f"{OFFICIAL_URL} is not the pinned file (SHA-256 differs)"
        OFFICIAL_CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(body)
    return str(OFFICIAL_CACHE), OFFICIAL_URL


def bittune_step(main_job: bool = False) -> Callable[[], None]:
    """bittune's training step (``training._make_train_step``, as ``train`` runs it on CPU):
    R50x1 on 8 x 128 px, or the main job's (bittune-tiny, 28 px, batch 128)."""
    from components.bit.tf_env import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    from components.bit import hyperrule, models, training
    from components.bit.optimizer import MomentumSGD

    if main_job:
        backbone = models.load_backbone(MAIN_JOB["model"])
        size, batch = MAIN_JOB["size"], MAIN_JOB["batch"]
    else:
        backbone = models.build_resnet(models.Architecture((3, 4, 6, 3), 1.0))
        size, batch = SIZE, BATCH
    model = models.build_classifier(backbone, CLASSES)
    rule = hyperrule.derive(
        1000, size**2, overrides={"batch_size": batch, "micro_batch_size": batch}
    )
    optimizer = MomentumSGD(0.001, momentum=0.9)
    strategy = tf.distribute.get_strategy()
    train_step = training._make_train_step(strategy, model, optimizer, [], rule, xla=False)
    pixels = tf.random.uniform((batch, size, size, 3), maxval=256, dtype=tf.int32)
    images = tf.cast(pixels, tf.uint8)  # what the input pipeline yields
    labels = tf.one_hot(tf.random.uniform((batch,), 0, CLASSES, tf.int32), CLASSES)
    iterator = iter(tf.data.Dataset.from_tensors(({"images": images}, labels)).repeat())

    def step() -> None:
        loss, _ = train_step(iterator)
        float(loss)

    return step


def torch_step(kind: str) -> Callable[[], None]:
    """The reference PyTorch model's step: NCHW float32, cross-entropy, SGD momentum 0.9."""
    import torch

    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(THREADS)
    if kind == "timm":
        import timm

        model = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=CLASSES)
    else:
        sys.path.insert(0, official_folder()[0])
        import models as bit_models  # big_transfer's bit_pytorch/models.py

        model = bit_models.KNOWN_MODELS["BiT-M-R50x1"](head_size=CLASSES, zero_head=True)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    labels = torch.randint(0, CLASSES, (BATCH,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        float(loss.detach())

    return step


def worker(kind: str) -> None:
    """Build ``kind``'s step, warm it up, then run the number of steps each stdin line asks
    for and answer with the wall and CPU seconds per step."""
    base = kind.removesuffix(EIGEN)
    step = torch_step(kind) if base in REFERENCES else bittune_step(base == "main-job")
    for _ in range(WARMUP):
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        count = int(line)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            step()
        seconds = time.perf_counter() - wall, time.process_time() - cpu
        print(seconds[0] / count, seconds[1] / count, flush=True)


class _Worker:
    """One model's process, driven over its stdin and stdout."""

    def __init__(self, kind: str, log):
        self.kind = kind
        onednn = "0" if kind.endswith(EIGEN) else "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cpu_step", "--worker", kind],
            cwd=ROOT,
            env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.seconds: list[float] = []
        self._read("ready")

    def _read(self, expect: str | None = None) -> str:
        line = self.process.stdout.readline().strip()
        if not line or (expect and line != expect):
            code = self.process.poll()
            raise RuntimeError(f"the {self.kind} worker stopped (exit {code}): its log is above")
        return line

    def run(self, steps: int) -> None:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        self.seconds.append(float(self._read().split()[0]))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=120)


def measure(kinds: list[str]) -> dict[str, list[float]]:
    """Seconds per step for each kind, repeats alternating (and reversing order) between them."""
    with tempfile.TemporaryFile("w+") as log:
        workers: list[_Worker] = []
        try:
            for kind in kinds:  # one at a time: set-up and warm-up are not measured
                workers.append(_Worker(kind, log))
            for repeat in range(REPEATS):
                for w in workers if repeat % 2 == 0 else workers[::-1]:
                    w.run(STEPS)
        except RuntimeError:
            log.seek(0)
            print(log.read()[-4000:], file=sys.stderr)
            raise
        finally:
            for w in workers:
                w.close()
    return {w.kind: w.seconds for w in workers}


def _median_ratio(slow: list[float], fast: list[float]) -> float:
    """The median of the per-repeat ratios of seconds per step (``fast``'s speed-up)."""
    return statistics.median(a / b for a, b in zip(slow, fast, strict=True))


def _kernels_row(seconds: dict[str, list[float]], kind: str, what: str, batch: int) -> dict:
    """oneDNN against the Eigen fallback on one step."""
    on, off = seconds[kind], seconds[kind + EIGEN]
    ratio = _median_ratio(off, on)
    target = ONEDNN_TARGET if kind == "main-job" else None
    return {
        "name": f"CPU kernels: oneDNN vs TensorFlow's AVX2 default, {what}",
        "setup": f"one training step, float32, {THREADS} threads; TF_ENABLE_ONEDNN_OPTS=1 vs 0, "
        f"each in its own process; median of {REPEATS} alternated repeats",
        "figures": {
            "oneDNN images/s": batch / statistics.median(on),
            "Eigen fallback images/s": batch / statistics.median(off),
            "load average (1 min)": os.getloadavg()[0],
        },
        "ratio": ratio,
        "ratio_label": "oneDNN over the fallback images/s",
        "target": target,
        "passed": ratio >= target if target else True,
    }


def _reference_row(seconds: dict[str, list[float]], ref: str, ours: str, origin: str) -> dict:
    """bittune's R50x1 step (with ``ours``' kernels) against a PyTorch reference."""
    ratio = _median_ratio(seconds[ref], seconds[ours])
    kernels = "oneDNN off (TensorFlow's AVX2 default)" if ours.endswith(EIGEN) else "oneDNN on"
    gated = ref == "official" and not ours.endswith(EIGEN)
    source = f"; reference from {origin}" if ref == "official" else ""
    return {
        "name": f"CPU training step vs {REFERENCES[ref]}, bittune with {kernels}",
        "setup": f"R50x1, float32, {BATCH} x {SIZE} px, {CLASSES} classes, SGD momentum; "
        f"{THREADS} threads each, PyTorch's own defaults otherwise; median of {REPEATS} "
        f"alternated repeats{source}",
        "figures": {
            "bittune images/s": BATCH / statistics.median(seconds[ours]),
            f"{REFERENCES[ref]} images/s": BATCH / statistics.median(seconds[ref]),
            "load average (1 min)": os.getloadavg()[0],
        },
        "ratio": ratio,
        "ratio_label": "bittune over the reference images/s",
        "target": TARGET if gated else None,
        "passed": ratio >= TARGET if gated else True,
    }


def run() -> list[dict]:
    seconds = measure(["main-job", "main-job" + EIGEN])
    rows = [_kernels_row(seconds, "main-job", "the main job's step (bittune-tiny, 28 px)", 128)]
    missing = [name for name in ("torch", "timm") if importlib.util.find_spec(name) is None]
    if missing:
        names = " and ".join(missing)
        print(f"cpu-step: PyTorch rows skipped: {names} not installed (pip install -e '.[bench]')")
        return rows
    folder, origin = official_folder()
    if folder is None:
        print(f"cpu-step: the official reference is unavailable: {origin}")
    references = (["official"] if folder else []) + ["timm"]
    seconds = measure(["bittune", "bittune" + EIGEN, *references])
    rows.append(_kernels_row(seconds, "bittune", f"R50x1 ({BATCH} x {SIZE} px)", BATCH))
    for ref in references:
        rows += [
            _reference_row(seconds, ref, ours, origin) for ours in ("bittune", "bittune" + EIGEN)
        ]
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
    else:
        for row in run():
            target = f"{row['target']:g}x" if row["target"] else "none"
            print(f"{row['name']}: {row['ratio']:.2f}x (target {target})")
            for key, value in row["figures"].items():
                print(f"  {key}: {value:,.2f}")
