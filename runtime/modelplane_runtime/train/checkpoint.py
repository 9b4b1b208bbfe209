"""Atomic checkpoints: write to a temporary file, fsync, rename; keep the newest K.

A crash mid-write leaves a temporary file that is ignored, never a truncated checkpoint
under a real name. Loading tries the newest first and falls back past unreadable ones.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from modelplane_runtime import objectstore
from modelplane_runtime.objectstore import S3Uri

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_paths(directory: Path) -> list[Path]:
    """Checkpoints in `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def save_checkpoint(directory: Path, *, step: int, state: dict[str, Any], keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:09d}.pt"
    temporary = directory / f".{final.name}.tmp"
    with temporary.open("wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself survives a crash
    finally:
        os.close(descriptor)
    for old in checkpoint_paths(directory)[keep:]:
        old.unlink(missing_ok=True)
    return final


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint, or None."""
    for path in checkpoint_paths(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            log.warning("skipping unreadable checkpoint %s: %s", path.name, exc)
            continue
        return path, state
    return None


# -- checkpoints in object storage ------------------------------------------------------
# With an s3:// output, rank 0 saves each checkpoint locally as above, then uploads it to
# `<output>/<run>/checkpoints/`. One PUT (or one multipart upload, invisible until it
# completes) is atomic: a killed upload never shows as a checkpoint. The bucket is the
# truth: a resumed run (on another node, with an empty cache) downloads from there.


def upload_checkpoint(path: Path, prefix: S3Uri, *, keep: int) -> None:
    """Upload the checkpoint at `path` to the folder `prefix`, then delete the remote
    ones beyond the newest `keep`."""
    objectstore.upload_file(path, prefix.child(path.name), field="output.uri")
    for old in remote_checkpoints(prefix)[keep:]:
        objectstore.delete_object(old, field="output.uri")


def remote_checkpoints(prefix: S3Uri) -> list[S3Uri]:
    """Checkpoints in the folder `prefix`, newest first."""
    found = [
        uri
        for uri in objectstore.list_objects(prefix, field="output.uri")
        if _NAME.match(uri.key[len(prefix.folder) :])
    ]
    return sorted(found, key=lambda uri: uri.key, reverse=True)


def load_latest_remote(prefix: S3Uri, directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in the folder `prefix`, downloaded into `directory`;
    None when there is none."""
    for uri in remote_checkpoints(prefix):
        name = uri.key.rsplit("/", 1)[-1]
        path = objectstore.download_file(uri, directory / name, field="output.uri")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            log.warning("skipping unreadable checkpoint %s: %s", uri, exc)
            continue
        return path, state
    return None
