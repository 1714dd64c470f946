"""The one setting for the container images the bittune components run in.

Images are ``{registry}/bittune-{cpu,gpu,tpu}:{tag}``, built from docker/Dockerfile by
docker/build.sh. Every component runs in the CPU image except training, which runs in the GPU
image. Point a compiled pipeline at your registry with ``bittune compile --image-registry R
--image-tag T``; ``bittune run --runner docker`` runs every step in the CPU image.
"""

from __future__ import annotations

from collections.abc import Iterable

IMAGE_REGISTRY = "bittune"
IMAGE_TAG = "0.1.0"
ACCELERATORS = ("cpu", "gpu", "tpu")


def image_for(kind: str, registry: str = IMAGE_REGISTRY, tag: str = IMAGE_TAG) -> str:
    """The image name for one accelerator kind (cpu, gpu or tpu)."""
    if kind not in ACCELERATORS:
        raise ValueError(f"unknown image kind {kind!r} (use {', '.join(ACCELERATORS)})")
    return f"{registry.rstrip('/')}/bittune-{kind}:{tag}"


BITTUNE_IMAGE = image_for("cpu")  # every component but training
BITTUNE_GPU_IMAGE = image_for("gpu")  # training (CUDA TensorFlow)


def retarget_images(
    containers: Iterable[dict],
    registry: str = IMAGE_REGISTRY,
    tag: str = IMAGE_TAG,
    training: str = "gpu",
) -> None:
    """Point compiled executors' ``image`` fields at ``registry``/``tag``; training runs in the
    ``training`` kind's image."""
    mapping = {
        BITTUNE_IMAGE: image_for("cpu", registry, tag),
        BITTUNE_GPU_IMAGE: image_for(training, registry, tag),
    }
    for container in containers:
        container["image"] = mapping.get(container["image"], container["image"])
