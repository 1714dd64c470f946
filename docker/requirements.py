"""Write the install lists of one image (cpu, gpu or tpu), so that pyproject.toml stays the one
list of dependencies and constraints.txt the one set of versions:

* ``requirements.txt``: pyproject's runtime dependencies (cpu: and the ``export`` extra), plus
  the accelerator's packages;
* ``build-constraints.txt``: constraints.txt, less the TensorFlow family on TPU;
* ``no-deps.txt``: packages installed afterwards without their declared dependencies.

TPU: Google publishes TensorFlow for Cloud TPUs as ``tensorflow-tpu``, whose newest release is
2.20.0, paired with ``libtpu`` 0.0.14 (its declared ``libtpu~=0.0.14``): the TPU image runs
TensorFlow 2.20 while the others run 2.21. tf-keras 2.20.1 and tensorflow-hub would pull in the
plain ``tensorflow`` wheel beside ``tensorflow-tpu`` (both provide the ``tensorflow`` module),
so they are installed without dependencies, on top of tensorflow-tpu.
"""

import sys
import tomllib

TENSORFLOW_FAMILY = ("tensorflow", "tf-keras", "tensorboard", "tensorflow-hub")
TPU = {
    "requirements": ["tensorflow-tpu==2.20.0", "libtpu==0.0.14"],
    "no_deps": ["tf-keras==2.20.1", "tensorflow-hub==0.16.1"],
}
ACCELERATOR_PACKAGES = {
    "cpu": [],
    "gpu": ["tensorflow[and-cuda]"],  # CUDA and cuDNN as pip wheels, versions chosen by TF
    "tpu": TPU["requirements"],
}
# The cpu image runs push (exports, TF Serving warm-up requests): it carries the export extra.
EXTRAS = {"cpu": ("export",)}


def _name(requirement: str) -> str:
    for mark in "=<>![ ;~":
        requirement = requirement.split(mark, 1)[0]
    return requirement.strip().lower().replace("_", "-")


def lists(accelerator: str, dependencies: list[str], constraints: list[str]):
    """(requirements, build constraints, no-deps packages) for one image."""
    if accelerator not in ACCELERATOR_PACKAGES:
        choices = ", ".join(ACCELERATOR_PACKAGES)
        raise SystemExit(f"ACCELERATOR must be one of {choices}, not {accelerator!r}")
    if accelerator != "tpu":
        return [*dependencies, *ACCELERATOR_PACKAGES[accelerator]], constraints, []
    kept = [d for d in dependencies if _name(d) not in TENSORFLOW_FAMILY]
    pinned = [c for c in constraints if _name(c) not in TENSORFLOW_FAMILY]
    return [*kept, *TPU["requirements"]], pinned, TPU["no_deps"]


def main(accelerator: str) -> None:
    with open("pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    dependencies = project["dependencies"]
    for extra in EXTRAS.get(accelerator, ()):
        dependencies = [*dependencies, *project["optional-dependencies"][extra]]
    with open("constraints.txt", encoding="utf-8") as f:
        constraints = [line.strip() for line in f if line.strip()]
    outputs = zip(
        ("requirements.txt", "build-constraints.txt", "no-deps.txt"),
        lists(accelerator, dependencies, constraints),
        strict=True,
    )
    for path, lines in outputs:
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
