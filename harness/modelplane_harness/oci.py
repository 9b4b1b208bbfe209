"""OCI image archives written here, without a registry or a container engine.

An image is a list of layers (each an uncompressed, reproducible tar of a folder) plus a
config (entrypoint, environment, user). `write_archive` streams them as an OCI image
layout tar, which `ctr images import` takes. Layers are uncompressed on purpose: they
never cross a network, and gzip of a multi-GB torch layer costs minutes on two cores.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
CONTAINERD_NAME = "io.containerd.image.name"
"""The annotation `ctr images import` reads as the image's full name."""
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Layer:
    """One layer tar on disk; its digest is also its diff ID (it is not compressed)."""

    path: Path
    digest: str
    size: int


@dataclass(frozen=True)
class ImageConfig:
    """What the image runs, as the OCI image config spells it."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def layer_from_dir(root: Path, out: Path) -> Layer:
    """Tar `root`'s contents into `out`, byte-for-byte the same for the same files.

    GNU tar with sorted names, a fixed mtime and numeric root ownership: the digest then
    depends only on file contents, modes and links, so a rebuilt layer of an unchanged
    tree reuses what containerd already holds.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    subprocess.run(
        [
            "tar", "--create", f"--file={tmp}", f"--directory={root}",
            "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner",
            "--format=posix", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            ".",
        ],
        check=True,
    )  # fmt: skip
    tmp.replace(out)
    return Layer(path=out, digest=_sha256_file(out), size=out.stat().st_size)


def _config_blob(layers: Sequence[Layer], config: ImageConfig) -> bytes:
    body: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            key: value
            for key, value in {
                "Entrypoint": config.entrypoint,
                "Cmd": config.cmd,
                "Env": [f"{k}={v}" for k, v in config.env.items()],
                "User": config.user,
                "WorkingDir": config.workdir,
                "Labels": config.labels,
            }.items()
            if value
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _digest(blob: bytes) -> str:
    return f"sha256:{hashlib.sha256(blob).hexdigest()}"


def _add_bytes(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def _manifest_blob(layers: Sequence[Layer], config_blob: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": MEDIA_CONFIG,
                "digest": _digest(config_blob),
                "size": len(config_blob),
            },
            "layers": [
                {"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def manifest_digest(layers: Sequence[Layer], config: ImageConfig) -> str:
    """The digest `write_archive` returns for this image, without reading any layer."""
    return _digest(_manifest_blob(layers, _config_blob(layers, config)))


def write_archive(
    layers: Sequence[Layer],
    config: ImageConfig,
    *,
    name: str,
    out: IO[bytes],
    omit: frozenset[str] = frozenset(),
) -> str:
    """Stream an OCI image layout tar of the image `name` (registry/repo:tag) to `out`.

    Layers whose digest is in `omit` are left out of the tar: containerd's import takes
    them from its content store when it already holds them, so re-importing an image
    whose only new layer is small streams only that layer.

    Returns the manifest digest, which is what containerd reports as the image's digest.
    """
    config_blob = _config_blob(layers, config)
    manifest_blob = _manifest_blob(layers, config_blob)
    digest = _digest(manifest_blob)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": digest,
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {CONTAINERD_NAME: name, REF_NAME: name.rsplit(":", 1)[-1]},
            }
        ],
    }
    with tarfile.open(fileobj=out, mode="w|") as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tar, "index.json", json.dumps(index).encode())
        for blob in (config_blob, manifest_blob):
            _add_bytes(tar, f"blobs/sha256/{_digest(blob).split(':', 1)[1]}", blob)
        seen = set()
        for layer in layers:
            if layer.digest in seen or layer.digest in omit:
                continue
            seen.add(layer.digest)
            tar.add(str(layer.path), arcname=f"blobs/sha256/{layer.digest.split(':', 1)[1]}")
    return digest
