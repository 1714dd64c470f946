"""The one setting for the container images the bittune components run in.

Images are ``{registry}/bittune-{cpu,gpu,tpu}:{tag}``, built from docker/Dockerfile by
docker/build.sh. Every component runs in the CPU image except training, which runs in the GPU
image (or, on Cloud TPUs, the TPU image). Point a compiled pipeline at your registry with
``bittune compile --image-registry R --image-tag T``; ``bittune run --runner docker`` runs every
step in the CPU image. A cluster pulls images from a registry: ``bittune submit`` refuses names
without a registry host (the default ``bittune/…`` would mean Docker Hub).
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
BITTUNE_TPU_IMAGE = image_for("tpu")  # training on Cloud TPUs


def retarget_images(
    containers: Iterable[dict],
    registry: str = IMAGE_REGISTRY,
    tag: str = IMAGE_TAG,
    accelerated: bool = True,
) -> None:
    """Point compiled executors' ``image`` fields at ``registry``/``tag``; with
    ``accelerated=False`` (local Docker runs) training runs in the CPU image too."""
    mapping = {
        image_for(kind): image_for(kind if accelerated else "cpu", registry, tag)
        for kind in ACCELERATORS
    }
    for container in containers:
        container["image"] = mapping.get(container["image"], container["image"])


def registry_host(image: str) -> str | None:
    """The registry host an image name names, or None when it has none (Docker Hub): the
    first path part when it has a dot or a port, or is ``localhost``."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return None
