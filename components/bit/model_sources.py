"""Which BiT models bittune knows and where each comes from; no TensorFlow needed, so that a
bad model name is refused before anything expensive starts (see :mod:`components.bit.models`).

Names are exact, as their publishers spell them: ``BiT-M-R50x1`` (upper case) is the official
``.npz`` checkpoint in the public ``bit_models`` bucket, ``bit-m-r50x1`` (lower case) the TF Hub
feature vector. Any other spelling of a known name is refused with the two right ones.
"""

from __future__ import annotations

from importlib import resources

from components.bit import storage
from components.bit.errors import BittuneError

_HUB_ARCHS = ("50x1", "50x3", "101x1", "101x3", "152x4")
_NPZ_ARCHS = ("50x1", "50x3", "101x1", "101x3", "152x2", "152x4")
HUB_MODELS = {
    f"bit-{family}-r{arch}": f"https://tfhub.dev/google/bit/{family}-r{arch}/1"
    for family in "sm"
    for arch in _HUB_ARCHS
}
NPZ_MODELS = {
    f"BiT-{family}-R{arch}": f"https://storage.googleapis.com/bit_models/BiT-{family}-R{arch}.npz"
    for family in "SM"
    for arch in _NPZ_ARCHS
}
TINY_MODEL = "bittune-tiny"
_TINY_FILE = "bittune-tiny.npz"
NPZ, HUB = "npz", "hub"


class ModelError(BittuneError):
    """A model source that cannot be loaded, with the reason."""


def tiny_checkpoint_path() -> str:
    return str(resources.files("components.bit").joinpath("assets", _TINY_FILE))


def valid_names() -> list[str]:
    return [TINY_MODEL, *NPZ_MODELS, *HUB_MODELS]


def _known(source: str) -> tuple[str, str] | None:
    """(kind, location) for an exactly spelt name, else None."""
    if source == TINY_MODEL:
        return NPZ, tiny_checkpoint_path()
    if source in HUB_MODELS:
        return HUB, HUB_MODELS[source]
    if source.removesuffix(".npz") in NPZ_MODELS:
        return NPZ, NPZ_MODELS[source.removesuffix(".npz")]
    return None


def check_name(source: str) -> None:
    """Refuse an empty source and a known name spelt in another case (no I/O)."""
    if not source:
        raise ModelError("no model given")
    if _known(source):
        return
    lowered = source.lower().removesuffix(".npz")
    hub = lowered if lowered in HUB_MODELS else None
    npz = next((name for name in NPZ_MODELS if name.lower() == lowered), None)
    if hub or npz:
        spelt = " or ".join(
            f"{name} ({what})" for name, what in ((npz, ".npz"), (hub, "TF Hub")) if name
        )
        raise ModelError(f"unknown model {source!r}: names are exact; did you mean {spelt}?")
    if lowered.startswith(("bit-", "bittune")) and "/" not in source:
        raise ModelError(f"unknown model {source!r}; valid names: {', '.join(valid_names())}")


def resolve(source: str) -> tuple[str, str]:
    """(kind, location) for a model source: kind is 'npz' or 'hub'."""
    check_name(source)
    known = _known(source)
    if known:
        return known
    if source.lower().endswith(".npz"):
        return NPZ, source
    if source.startswith(("https://tfhub.dev/", "https://www.kaggle.com/models/")):
        return HUB, source
    if storage.exists(storage.join(source, "saved_model.pb")):
        return HUB, source
    raise ModelError(
        f"model {source!r} is neither a known name, an .npz checkpoint nor a SavedModel "
        f"folder; valid names: {', '.join(valid_names())}"
    )


def check_model(source: str) -> None:
    """Refuse an unknown model name or a checkpoint path that does not exist."""
    kind, location = resolve(source)
    downloaded = location.startswith(("https://", "http://"))  # fetched when training starts
    if kind == NPZ and not downloaded and not storage.exists(location):
        raise ModelError(f"model checkpoint not found: {location}")
