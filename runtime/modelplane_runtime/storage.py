"""Storage URIs to local paths.

- `file:///abs/path` is a path on this machine (inside the pod, or the laptop).
- `pvc://<claim>/<path>` is `<pvc root>/<claim>/<path>`: in a pod the operator mounts
  each claim at `/mnt/pvc/<claim>`; local mode points the root at a folder of its own.
- `s3://<bucket>/<key>` is an object (or, for an artifact, a folder of objects) in an
  S3-compatible store (see objectstore); it is read through a local copy under the
  storage cache ($MODELPLANE_STORAGE_CACHE: a pod's emptyDir, or local mode's folder).
- `builtin://<name>` is a data set shipped with an installed package (see data.builtin).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from modelplane_runtime import objectstore
from modelplane_runtime.contract import ENV_PVC_ROOT, ENV_STORAGE_CACHE
from modelplane_runtime.errors import ConfigError

DEFAULT_PVC_ROOT = "/mnt/pvc"
SCHEMES = ("file", "pvc", "s3", "builtin")


def pvc_root() -> Path:
    return Path(os.environ.get(ENV_PVC_ROOT, DEFAULT_PVC_ROOT))


def cache_root() -> Path:
    """Where s3:// objects are downloaded to and staged for upload."""
    configured = os.environ.get(ENV_STORAGE_CACHE)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"modelplane-storage-{os.getuid()}"


def cache_key(uri: str) -> str:
    """A folder name for `uri` in the cache: the same URI always gets the same folder."""
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()


def split_uri(uri: str) -> tuple[str, str]:
    """(scheme, rest) of a URI; an unknown or missing scheme is a config error."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise ConfigError(
            f"{uri!r} is not a supported URI: use file:///path, pvc://<claim>/<path>, "
            "s3://<bucket>/<key> or builtin://<name>"
        )
    return scheme, rest


def is_remote(uri: str) -> bool:
    """Whether `uri` lives in object storage (read and written through the cache)."""
    return uri.startswith("s3://")


def local_path(uri: str, *, field: str, root: Path | None = None) -> Path:
    """The local path of a file:// or pvc:// URI. `field` names the spec field in errors;
    `root` is where claims live when not this process's pvc_root() (local mode resolves
    paths for the runtime processes it starts, which get the root in their environment).
    An s3:// URI has no local path: read it with `materialize`."""
    scheme, rest = split_uri(uri)
    if scheme == "file":
        return Path("/" + rest.lstrip("/"))
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        if not claim:
            raise ConfigError(f"{field}: {uri!r} names no claim (pvc://<claim>/<path>)")
        return (root if root is not None else pvc_root()) / claim / path
    if scheme == "s3":
        raise ConfigError(f"{field}: {uri!r} is in object storage; it has no local path")
    raise ConfigError(f"{field}: {uri!r} is a built-in data set, not a storage location")


def materialize(uri: str, *, field: str, folder: bool | None = None) -> Path:
    """A local path to read `uri` from: file:// and pvc:// as they are; s3:// downloaded
    under the cache. `folder` True reads the prefix `uri/` (an artifact), False one object
    (a data file), None whichever exists, the object first (an image folder or a file).
    A missing object is a ConfigError naming `field`."""
    scheme, _ = split_uri(uri)
    if scheme != "s3":
        return local_path(uri, field=field)
    location = objectstore.parse(uri, field=field)
    target = cache_root() / "objects" / cache_key(uri)
    if folder is False or (folder is None and location.key and _is_object(location, field)):
        name = location.key.rsplit("/", 1)[-1]
        if not name:
            raise ConfigError(f"{field}: {uri} names a folder; give the object's key")
        return objectstore.download_file(location, target / name, field=field)
    if folder is None and not objectstore.list_objects(location, field=field):
        raise ConfigError(
            f"{field}: {uri} not found (no such object, and no objects under {location.folder})"
        )
    # A fresh copy each time, swapped in whole: a folder left by an earlier run (local
    # mode keeps its cache) may hold files the prefix no longer has.
    fresh = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        objectstore.download_prefix(location, fresh, field=field)
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):  # another process put the same copy there first
            fresh.rename(target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return target


def _is_object(location: objectstore.S3Uri, field: str) -> bool:
    return not location.key.endswith("/") and objectstore.exists(location, field=field)
