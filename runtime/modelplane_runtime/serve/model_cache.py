"""A served model's local copy: an s3:// artifact is downloaded once per pod.

`$MODELPLANE_STORAGE_CACHE/models/<sha256 of the uri>/` holds a verified copy. Replicas
in one pod take an fcntl lock on `<folder>.lock` before looking, so only the first
downloads; it downloads into a temporary folder, checks the weights against the card's
digest and the digest the serving args expect, writes a marker holding the digest and
renames the folder into place. The next replica finds the marker and loads the copy.
Weights that do not match leave nothing in the cache. A rollout to another URI gets
another folder, so only the new model is downloaded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from modelplane_runtime import objectstore, storage
from modelplane_runtime.artifacts import CARD, verify_artifact
from modelplane_runtime.contract import ServeArgs
from modelplane_runtime.storage import cache_key, cache_root, is_remote, local_path

log = logging.getLogger("modelplane.serve")

MARKER = ".modelplane-verified"
"""In a cached copy: the digest of the weights it was verified with."""


def model_dir(uri: str, *, expected_digest: str | None) -> Path:
    """The local folder to load the artifact at `uri` from (file:// and pvc:// as they
    are, verified by the loader; s3:// through the pod's cache, verified here)."""
    if not is_remote(uri):
        return local_path(uri, field="model.uri")
    models = cache_root() / "models"
    models.mkdir(parents=True, exist_ok=True)
    final = models / cache_key(uri)
    with (models / f"{final.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        cached = _verified_digest(final)
        if cached is not None and expected_digest in (None, cached):
            log.info("serving %s from the copy in %s", uri, final)
            return final
        return _download(uri, final, expected_digest=expected_digest)


def _verified_digest(folder: Path) -> str | None:
    try:
        return (folder / MARKER).read_text().strip() or None
    except OSError:
        return None


def _download(uri: str, final: Path, *, expected_digest: str | None) -> Path:
    fresh = final.with_name(f".{final.name}.{os.getpid()}")
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        prefix = objectstore.parse(uri, field="model.uri")
        objectstore.download_prefix(prefix, fresh, field="model.uri")
        card = verify_artifact(fresh, source=uri, expected_digest=expected_digest)
        (fresh / MARKER).write_text(card["digest"])
        shutil.rmtree(final, ignore_errors=True)
        fresh.rename(final)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    log.info("downloaded %s to %s", uri, final)
    return final


def is_language_model(args: ServeArgs) -> bool:
    """Whether `args.model_uri` is a text-generation model, decided from the card (or,
    for a plain Hugging Face folder, its config) without loading weights."""
    if storage.split_uri(args.model_uri)[0] == "builtin":
        return True
    folder = model_dir(args.model_uri, expected_digest=args.expected_digest)
    card_path = folder / CARD
    if card_path.is_file():
        card = verify_artifact(folder, expected_digest=args.expected_digest)
        return bool(card["task"] == "text-generation")
    return (folder / "config.json").is_file()
