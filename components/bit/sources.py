"""Where a labelled image dataset comes from: an image folder, a manifest, or a TFDS dataset.

Every source is listed into :class:`Item` s (URI, stable identity, label, the source's own split
if it has one) plus :class:`Ignored` entries for what is not a dataset item. Folders and
manifests may be local or ``gs://``.

* Image folder: ``ROOT/<class>/...`` (nested folders belong to their class), or
  ``ROOT/<split>/<class>/...`` when every top-level folder is a split name.
* Manifest (``.csv`` / ``.jsonl``): rows ``image_uri,label[,split]``; also the Vertex AI
  import formats (CSV ``[ml_use,]gcs_uri,label``; JSONL ``imageGcsUri`` /
  ``classificationAnnotation.displayName`` / ``dataItemResourceLabels``). Relative paths are
  relative to the manifest's folder; local paths must stay inside the data root.
* TFDS: ``tfds:NAME`` (or ``tfds:NAME:VERSION``) with a ``data_dir`` that holds the prepared data.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import posixpath
from collections.abc import Iterator, Sequence

from components.bit import storage
from components.bit.errors import BittuneError
from components.bit.splits import SPLITS, hash_point

IMAGE_EXTENSIONS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}
TFDS_PREFIX = "tfds:"


class SourceError(BittuneError):
    """A dataset source that cannot be used, with a one-line reason."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One labelled image of the dataset.

    ``identity`` is stable across runs (path relative to the dataset root, manifest URI, or
    TFDS split/index) and decides hash-based splits. ``payload`` holds the encoded bytes when
    the source streams them (TFDS); otherwise they are read from ``uri``.
    """

    uri: str
    identity: str
    label: str
    split: str | None = None
    payload: bytes | None = dataclasses.field(default=None, repr=False, compare=False)
    problem: str | None = None  # a listing-time reason this item cannot be used


@dataclasses.dataclass(frozen=True)
class Ignored:
    """Something found in the source that is not a dataset item, and why."""

    path: str
    reason: str


@dataclasses.dataclass
class Listing:
    """The items of a source, what was ignored, and what kind of source it was."""

    kind: str
    root: str
    items: list[Item]
    ignored: list[Ignored]
    has_splits: bool

    @property
    def classes(self) -> list[str]:
        return sorted({item.label for item in self.items})


def normalise_split(value: str) -> str | None:
    return _SPLIT_ALIASES.get(value.strip().lower())


def hash_split(identity: str, fractions: Sequence[float]) -> str:
    """The split of an item by a stable hash of its identity alone (each image on its own: a
    class's shares are then binomial; analysis stratifies by class, :mod:`components.bit.splits`).
    ``fractions`` are (train, validation, test)."""
    point = hash_point(identity)
    cumulative = 0.0
    for split, fraction in zip(SPLITS, fractions, strict=True):
        cumulative += fraction
        if point < cumulative:
            return split
    return SPLITS[-1]


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise SourceError(f"split fractions must be three numbers >= 0, got {list(fractions)}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise SourceError(f"split fractions must add up to 1, got {list(fractions)}")
    if fractions[0] <= 0:
        raise SourceError("the train fraction must be above 0")
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def split_of(item: Item, fractions: Sequence[float]) -> str:
    return item.split or hash_split(item.identity, fractions)


def list_source(source: str, data_dir: str | None = None) -> Listing:
    """List a folder, manifest or ``tfds:NAME`` source; raise :class:`SourceError` if unusable."""
    if not source:
        raise SourceError("no data source given")
    if source.startswith(TFDS_PREFIX):
        return list_tfds(source[len(TFDS_PREFIX) :], data_dir)
    lower = source.lower()
    if lower.endswith((".csv", ".jsonl")):
        return list_manifest(source, data_root=data_dir)
    return list_folder(source)


def check_source(source: str, data_dir: str | None = None) -> None:
    """Cheap up-front check that a source exists (before launching a pipeline on it)."""
    if not source:
        raise SourceError("no data source given")
    if source.startswith(TFDS_PREFIX):
        if not source[len(TFDS_PREFIX) :]:
            raise SourceError("empty TFDS dataset name (use tfds:NAME)")
        if not data_dir or not storage.exists(data_dir):
            raise SourceError(f"{source} needs an existing --data-dir, got {data_dir!r}")
        return
    if not storage.exists(source):
        kind = "manifest" if source.lower().endswith((".csv", ".jsonl")) else "data folder"
        raise SourceError(f"{kind} not found: {source}")


# ---------------------------------------------------------------------------------------------
# Image folders


def list_folder(root: str) -> Listing:
    root = root.rstrip("/") if storage.is_gcs(root) else os.path.abspath(root)
    if not storage.exists(root):
        raise SourceError(f"data folder not found: {root}")
    if not storage.is_dir(root):
        raise SourceError(f"not a folder, nor a .csv/.jsonl manifest: {root}")
    entries = sorted(storage.list_files(root), key=lambda e: e.relpath)
    top_dirs = set(storage.list_dirs(root)) | {
        e.relpath.split("/", 1)[0] for e in entries if "/" in e.relpath
    }
    visible_top = {d for d in top_dirs if not d.startswith(".")}
    split_layout = bool(visible_top) and all(normalise_split(d) for d in visible_top)
    depth = 2 if split_layout else 1

    items: list[Item] = []
    ignored: list[Ignored] = []
    class_dirs: set[str] = set()
    for entry in entries:
        parts = entry.relpath.split("/")
        if any(p.startswith(".") for p in parts):
            ignored.append(Ignored(entry.relpath, "hidden file"))
            continue
        if len(parts) <= depth:
            where = "split folder" if split_layout and len(parts) == 2 else "class folder"
            ignored.append(Ignored(entry.relpath, f"file outside any {where}"))
            continue
        class_dirs.add("/".join(parts[:depth]))
        ext = posixpath.splitext(parts[-1])[1].lower()
        if ext not in IMAGE_EXTENSIONS:
            ignored.append(Ignored(entry.relpath, f"not an image extension ({ext or 'none'})"))
            continue
        split = normalise_split(parts[0]) if split_layout else None
        problem = None
        if not storage.is_gcs(root) and not _within(
            os.path.realpath(entry.uri), os.path.realpath(root)
        ):
            problem = f"symlink escapes the data root {root}"
        items.append(Item(entry.uri, entry.relpath, parts[depth - 1], split, problem=problem))

    found_dirs = _class_folders(root, split_layout) | class_dirs
    with_items = {"/".join(item.identity.split("/")[:depth]) for item in items}
    for folder in sorted(found_dirs - with_items):
        ignored.append(Ignored(folder + "/", "empty class folder (no images)"))
    listing = Listing("folder", root, items, ignored, has_splits=split_layout)
    _check_listing(listing, f"folder {root}")
    return listing


def _class_folders(root: str, split_layout: bool) -> set[str]:
    """Class folders (relative), including empty ones that hold no file at all (local only)."""
    if storage.is_gcs(root):
        return set()
    tops = [d for d in storage.list_dirs(root) if not d.startswith(".")]
    if not split_layout:
        return set(tops)
    return {
        f"{top}/{sub}"
        for top in tops
        for sub in storage.list_dirs(os.path.join(root, top))
        if not sub.startswith(".")
    }


# ---------------------------------------------------------------------------------------------
# Manifests

_URI_KEYS = ("image_uri", "uri", "image", "path", "imagegcsuri", "gcs_file_path")
_LABEL_KEYS = ("label", "class", "displayname")
_SPLIT_KEYS = ("split", "ml_use")
_VERTEX_ML_USE = "aiplatform.googleapis.com/ml_use"


def list_manifest(manifest: str, data_root: str | None = None) -> Listing:
    if not storage.exists(manifest):
        raise SourceError(f"manifest not found: {manifest}")
    try:
        text = storage.read_text(manifest)
    except UnicodeDecodeError:
        raise SourceError(f"manifest {manifest} is not UTF-8 text") from None
    name = posixpath.basename(manifest)
    rows = _jsonl_rows(text, name) if manifest.lower().endswith(".jsonl") else _csv_rows(text, name)
    if not rows:
        raise SourceError(f"manifest {manifest} has no rows")
    base = (
        posixpath.dirname(manifest)
        if storage.is_gcs(manifest)
        else os.path.dirname(os.path.abspath(manifest))
    )
    root = os.path.abspath(data_root) if data_root and not storage.is_gcs(manifest) else base
    items = [_manifest_item(uri, label, split, base, root) for uri, label, split in rows]
    listing = Listing("manifest", manifest, items, [], has_splits=any(i.split for i in items))
    _check_listing(listing, f"manifest {manifest}")
    return listing


def _manifest_item(uri: str, label: str, split: str | None, base: str, root: str) -> Item:
    if storage.is_gcs(uri):
        return Item(uri, uri, label, split)
    if storage.is_gcs(base):
        if uri.startswith("/") or ".." in uri.split("/"):
            return Item(uri, uri, label, split, problem="path escapes the manifest's folder")
        return Item(storage.join(base, uri), uri, label, split)
    path = os.path.normpath(os.path.join(base, uri))
    if not _within(path, root):
        return Item(path, uri, label, split, problem=f"path escapes the data root {root}")
    identity = os.path.relpath(path, root).replace(os.sep, "/")
    if not _within(os.path.realpath(path), os.path.realpath(root)):
        return Item(path, identity, label, split, problem=f"symlink escapes the data root {root}")
    return Item(path, identity, label, split)


def _within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _row_split(value: str, where: str) -> str | None:
    if not value.strip():
        return None
    split = normalise_split(value)
    if split is None:
        raise SourceError(f"{where}: unknown split {value!r} (use train, validation or test)")
    return split


def _csv_rows(text: str, name: str) -> list[tuple[str, str, str | None]]:
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[str, str, str | None]] = []
    columns: tuple[int, int, int | None] | None = None
    header_width, header = 0, ""
    for number, raw in enumerate(reader, start=1):
        cells = [c.strip() for c in raw]
        if not any(cells):
            continue
        where = f"{name} line {number}"
        if number == 1 and columns is None and _looks_like_header(cells):
            columns = _header_columns(cells, where)
            header_width, header = len(cells), ",".join(cells)
            continue
        while len(cells) > (header_width if columns else 2) and not cells[-1]:
            cells.pop()  # a trailing comma adds no column
        if columns is not None:
            uri_i, label_i, split_i = columns
            if len(cells) <= max(uri_i, label_i) or len(cells) > header_width:
                raise SourceError(
                    f"{where}: expected {header_width} columns like the header "
                    f"({header}), found {len(cells)}"
                )
            uri, label = cells[uri_i], cells[label_i]
            split_text = cells[split_i] if split_i is not None and split_i < len(cells) else ""
        elif len(cells) == 2:
            (uri, label), split_text = cells, ""
        elif len(cells) == 3 and normalise_split(cells[0]) and not normalise_split(cells[2]):
            split_text, uri, label = cells  # Vertex AI: ml_use,gcs_uri,label
        elif len(cells) == 3:
            uri, label, split_text = cells
        else:
            raise SourceError(
                f"{where}: expected 2 or 3 columns (image_uri,label[,split]), found {len(cells)}"
            )
        rows.append(_checked_row(uri, label, _row_split(split_text, where), where))
    return rows


def _looks_like_header(cells: list[str]) -> bool:
    lowered = {c.lower() for c in cells}
    return bool(lowered & set(_URI_KEYS)) and bool(lowered & set(_LABEL_KEYS))


def _header_columns(cells: list[str], where: str) -> tuple[int, int, int | None]:
    lowered = [c.lower() for c in cells]

    def find(keys: tuple[str, ...]) -> int | None:
        return next((i for i, c in enumerate(lowered) if c in keys), None)

    uri_i, label_i, split_i = find(_URI_KEYS), find(_LABEL_KEYS), find(_SPLIT_KEYS)
    if uri_i is None or label_i is None:
        raise SourceError(f"{where}: header needs image_uri and label columns")
    return uri_i, label_i, split_i


def _jsonl_rows(text: str, name: str) -> list[tuple[str, str, str | None]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise SourceError(f"{where}: expected a JSON object")
        uri = record.get("image_uri", record.get("imageGcsUri", ""))
        label = record.get("label", "")
        if not label and isinstance(record.get("classificationAnnotation"), dict):
            label = record["classificationAnnotation"].get("displayName", "")
        split = record.get("split", "")
        if not split and isinstance(record.get("dataItemResourceLabels"), dict):
            split = record["dataItemResourceLabels"].get(_VERTEX_ML_USE, "")
        if not all(isinstance(v, str) for v in (uri, label, split)):
            raise SourceError(f"{where}: image_uri, label and split must be strings")
        rows.append(_checked_row(uri.strip(), label.strip(), _row_split(split, where), where))
    return rows


def _checked_row(uri: str, label: str, split: str | None, where: str):
    if not uri:
        raise SourceError(f"{where}: empty image_uri")
    if not label:
        raise SourceError(f"{where}: empty label")
    return uri, label, split


# ---------------------------------------------------------------------------------------------
# TensorFlow Datasets


def list_tfds(name: str, data_dir: str | None) -> Listing:
    """Stream a prepared TFDS dataset's encoded images (no decoding) as items."""
    if not name:
        raise SourceError("empty TFDS dataset name (use tfds:NAME)")
    if not data_dir:
        raise SourceError(f"TFDS dataset {name} needs --data-dir (the folder with prepared data)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds  # heavy: only for TFDS sources

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as exc:  # tfds raises several registry error types
        raise SourceError(f"unknown TFDS dataset {name!r}: {str(exc).splitlines()[0]}") from None
    if not builder.is_prepared():
        raise SourceError(
            f"TFDS dataset {name!r} is not prepared in {data_dir} "
            "(prepare it with `tfds build` where downloads are possible)"
        )
    features = builder.info.features
    image_key = next((k for k, f in features.items() if isinstance(f, tfds.features.Image)), None)
    label_key = next(
        (k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)), None
    )
    if image_key is None or label_key is None:
        raise SourceError(f"TFDS dataset {name!r} has no image and class-label features")
    names = features[label_key].names
    splits = {normalise_split(s): s for s in builder.info.splits if normalise_split(s)}
    if not splits:
        raise SourceError(f"TFDS dataset {name!r} has no train/validation/test split")

    def stream() -> Iterator[Item]:
        for split, tfds_split in sorted(splits.items()):
            dataset = builder.as_dataset(
                split=tfds_split,
                decoders={image_key: tfds.decode.SkipDecoding()},
                shuffle_files=False,
            )
            for index, example in enumerate(tfds.as_numpy(dataset)):
                identity = f"{tfds_split}/{index}"
                yield Item(
                    f"tfds://{name}/{identity}",
                    identity,
                    names[int(example[label_key])],
                    split,
                    payload=bytes(example[image_key]),
                )

    listing = Listing("tfds", f"tfds:{name}", list(stream()), [], has_splits=True)
    _check_listing(listing, f"TFDS dataset {name}")
    return listing


def _check_listing(listing: Listing, what: str) -> None:
    if not listing.items:
        raise SourceError(f"no images found in {what}")
    classes = listing.classes
    if len(classes) < 2:
        raise SourceError(
            f"{what} has a single class ({classes[0]!r}); a classifier needs at least 2"
        )
