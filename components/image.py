"""The one setting for the container images the bittune components run in.

Images are ``{IMAGE_REGISTRY}/bittune-{cpu,gpu}:{IMAGE_TAG}``, built from docker/. Point a
compiled pipeline at your registry with ``bittune compile --image-registry R --image-tag T``.
"""

IMAGE_REGISTRY = "bittune"
IMAGE_TAG = "0.1.0"
BITTUNE_IMAGE = f"{IMAGE_REGISTRY}/bittune-cpu:{IMAGE_TAG}"  # every component but training
BITTUNE_GPU_IMAGE = f"{IMAGE_REGISTRY}/bittune-gpu:{IMAGE_TAG}"  # training (CUDA TensorFlow)


def image_for(kind: str, registry: str = IMAGE_REGISTRY, tag: str = IMAGE_TAG) -> str:
    return f"{registry}/bittune-{kind}:{tag}"
