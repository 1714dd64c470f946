"""Which BiT models bittune knows and where each comes from; no TensorFlow needed, so that a
bad model name is refused before anything expensive starts (see :mod:`components.bit.models`)."""

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


class ModelError(BittuneError):
    """A model source that cannot be loaded, with the reason."""


def tiny_checkpoint_path() -> str:
    return str(resources.files("components.bit").joinpath("assets", _TINY_FILE))


def valid_names() -> list[str]:
    return [TINY_MODEL, *HUB_MODELS, *NPZ_MODELS]


def resolve(source: str) -> tuple[str, str]:
    """(kind, location) for a model source: kind is 'npz' or 'hub'."""
    if not source:
        raise ModelError("no model given")
    lowered = source.lower()
    if lowered == TINY_MODEL:
        return "npz", tiny_checkpoint_path()
    if lowered in HUB_MODELS:
        return "hub", HUB_MODELS[lowered]
    npz_names = {name.lower(): url for name, url in NPZ_MODELS.items()}
    if lowered in npz_names or lowered.removesuffix(".npz") in npz_names:
        return "npz", npz_names[lowered.removesuffix(".npz")]
    if lowered.endswith(".npz"):
        return "npz", source
    if lowered.startswith(("https://tfhub.dev/", "https://www.kaggle.com/models/")):
        return "hub", source
    if storage.exists(storage.join(source, "saved_model.pb")):
        return "hub", source
    if lowered.startswith("bit-") or lowered.startswith("bittune"):
        raise ModelError(f"unknown model {source!r}; valid names: {', '.join(valid_names())}")
    raise ModelError(
        f"model {source!r} is neither a known name, an .npz checkpoint nor a SavedModel "
        f"folder; valid names: {', '.join(valid_names())}"
    )


def check_model(source: str) -> None:
    """Refuse an unknown model name or a checkpoint path that does not exist."""
    kind, location = resolve(source)
    downloaded = location.startswith(("https://", "http://"))  # fetched when training starts
    if kind == "npz" and not downloaded and not storage.exists(location):
        raise ModelError(f"model checkpoint not found: {location}")
