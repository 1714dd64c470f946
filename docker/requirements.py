"""Print bittune's runtime requirements for one accelerator (cpu, gpu or tpu); used by the
image build so that pyproject.toml stays the one list of dependencies."""

import sys
import tomllib

ACCELERATOR_PACKAGES = {
    "cpu": [],
    "gpu": ["tensorflow[and-cuda]"],  # CUDA and cuDNN as pip wheels, versions chosen by TF
    # the TPU runtime TensorFlow loads on a Cloud TPU VM, from Google's libtpu index
    "tpu": ["--find-links https://storage.googleapis.com/libtpu-tf-releases/index.html", "libtpu"],
}


def main(accelerator: str) -> None:
    if accelerator not in ACCELERATOR_PACKAGES:
        choices = ", ".join(ACCELERATOR_PACKAGES)
        sys.exit(f"ACCELERATOR must be one of {choices}, not {accelerator!r}")
    with open("pyproject.toml", "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    print("\n".join([*dependencies, *ACCELERATOR_PACKAGES[accelerator]]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
