"""Storage URIs to local paths.

- `file:///abs/path` is a path on this machine (inside the pod, or the laptop).
- `pvc://<claim>/<path>` is `<pvc root>/<claim>/<path>`: in a pod the operator mounts
  each claim at `/mnt/pvc/<claim>`; local mode points the root at a folder of its own.
- `builtin://<name>` is a data set shipped with an installed package (see data.builtin).
"""

from __future__ import annotations

import os
from pathlib import Path

from modelplane_runtime.contract import ENV_PVC_ROOT
from modelplane_runtime.errors import ConfigError

DEFAULT_PVC_ROOT = "/mnt/pvc"
SCHEMES = ("file", "pvc", "builtin")


def pvc_root() -> Path:
    return Path(os.environ.get(ENV_PVC_ROOT, DEFAULT_PVC_ROOT))


def split_uri(uri: str) -> tuple[str, str]:
    """(scheme, rest) of a URI; an unknown or missing scheme is a config error."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise ConfigError(
            f"{uri!r} is not a supported URI: use file:///path, pvc://<claim>/<path> "
            "or builtin://<name>"
        )
    return scheme, rest


def local_path(uri: str, *, field: str, root: Path | None = None) -> Path:
    """The local path of a file:// or pvc:// URI. `field` names the spec field in errors;
    `root` is where claims live when not this process's pvc_root() (local mode resolves
    paths for the runtime processes it starts, which get the root in their environment)."""
    scheme, rest = split_uri(uri)
    if scheme == "file":
        return Path("/" + rest.lstrip("/"))
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        if not claim:
            raise ConfigError(f"{field}: {uri!r} names no claim (pvc://<claim>/<path>)")
        return (root if root is not None else pvc_root()) / claim / path
    raise ConfigError(f"{field}: {uri!r} is a built-in data set, not a storage location")
