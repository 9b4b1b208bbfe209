"""Read a data source (a URI) into RawData, refusing what does not fit the task."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from modelplane_runtime.data.builtin import BUILTIN
from modelplane_runtime.data.raw import Kind, RawData
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.storage import materialize, split_uri

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def read_source(
    uri: str,
    *,
    kind: Kind,
    text_column: str,
    label_column: str,
    field: str,
    labelled: bool = True,
) -> RawData:
    """Read the examples at `uri`. `field` (e.g. "data.train") prefixes every error."""
    scheme, rest = split_uri(uri)
    if scheme == "builtin":
        if rest not in BUILTIN:
            raise ConfigError(
                f"{field}.uri: unknown built-in data set {rest!r}; "
                f"known: {', '.join(sorted(BUILTIN))}"
            )
        builtin_kind, load = BUILTIN[rest]
        if builtin_kind != kind:
            raise ConfigError(
                f"{field}.uri: builtin://{rest} holds {builtin_kind} data, "
                f"but the task needs {kind} data"
            )
        return load()
    # An s3:// object is downloaded to the storage cache; an s3:// folder (of images) too.
    path = materialize(uri, field=f"{field}.uri")
    if not path.exists():
        raise ConfigError(f"{field}.uri: {uri} not found (looked at {path})")
    columns = {"text_column": text_column, "label_column": label_column, "field": field}
    if path.is_dir():
        if kind != "image":
            raise ConfigError(f"{field}.uri: {uri} is a folder; only images are read from one")
        return _read_image_folder(path, field=field)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_records(_jsonl_rows(path, field), kind=kind, labelled=labelled, **columns)
    if suffix == ".csv":
        return _read_records(_csv_rows(path, field), kind=kind, labelled=labelled, **columns)
    if suffix == ".npz":
        return _read_npz(path, kind=kind, label_column=label_column, field=field)
    raise ConfigError(
        f"{field}.uri: cannot read {path.name}: use .jsonl, .csv, .npz or an image folder"
    )


def _jsonl_rows(path: Path, field: str) -> list[dict[str, object]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{field}: {path.name} line {number} is not JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise ConfigError(f"{field}: {path.name} line {number} is not a JSON object")
        rows.append(row)
    return rows


def _csv_rows(path: Path, field: str) -> list[dict[str, object]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _read_records(
    rows: list[dict[str, object]],
    *,
    kind: Kind,
    text_column: str,
    label_column: str,
    field: str,
    labelled: bool,
) -> RawData:
    if not rows:
        raise ConfigError(f"{field}: the data holds no examples")
    present = list(rows[0])
    if labelled and label_column not in present:
        raise ConfigError(
            f"{field}: no label column {label_column!r} (columns: {', '.join(present)}); "
            "set spec.data.labelColumn"
        )
    labels = tuple(str(r.get(label_column)) for r in rows) if labelled else None
    if kind == "text":
        if text_column not in present:
            raise ConfigError(
                f"{field}: no text column {text_column!r} (columns: {', '.join(present)}); "
                "set spec.data.textColumn"
            )
        return RawData(
            kind="text", texts=tuple(str(r.get(text_column, "")) for r in rows), labels=labels
        )
    if kind == "tabular":
        features = [c for c in present if c != label_column]
        try:
            table = np.array(
                [[float(r[c]) for c in features] for r in rows],  # type: ignore[arg-type]
                dtype=np.float32,
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"{field}: every column but {label_column!r} must be numeric ({exc})"
            ) from exc
        return RawData(kind="tabular", array=table, labels=labels, feature_names=tuple(features))
    raise ConfigError(f"{field}: {kind} data cannot be read from JSONL or CSV")


def _read_npz(path: Path, *, kind: Kind, label_column: str, field: str) -> RawData:
    with np.load(path) as archive:
        keys = list(archive.keys())
        feature_key = next((k for k in ("x", "inputs", "features", "images") if k in keys), None)
        if feature_key is None or label_column not in keys:
            raise ConfigError(
                f"{field}: {path.name} needs arrays 'x' and {label_column!r} (has: "
                f"{', '.join(keys)})"
            )
        array = archive[feature_key].astype(np.float32)
        labels = tuple(str(v) for v in archive[label_column].tolist())
    if len(array) != len(labels):
        raise ConfigError(f"{field}: {len(array)} inputs but {len(labels)} labels in {path.name}")
    if kind == "image":
        if array.ndim == 3:
            array = array[:, None]
        if array.ndim != 4:
            raise ConfigError(f"{field}: images must be [N, H, W] or [N, C, H, W]")
    elif kind == "tabular":
        if array.ndim != 2:
            raise ConfigError(f"{field}: a table must be [N, features], got {array.shape}")
    else:
        raise ConfigError(f"{field}: {kind} data cannot be read from NPZ")
    return RawData(kind=kind, array=array, labels=labels)


def _read_image_folder(path: Path, *, field: str) -> RawData:
    """`<folder>/<class>/<image>`: the sub-folder names are the labels."""
    from PIL import Image  # noqa: PLC0415

    images, labels = [], []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(file) as image:
                mode = "L" if image.mode in ("1", "L", "I", "F") else "RGB"
                pixels = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
            images.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
            labels.append(class_dir.name)
    if not images:
        raise ConfigError(f"{field}: no images in {path} (expected <folder>/<class>/<image>)")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ConfigError(f"{field}: images differ in size or channels: {sorted(shapes)}")
    return RawData(kind="image", array=np.stack(images), labels=tuple(labels))
