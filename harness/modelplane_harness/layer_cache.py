"""A content-addressed cache of image layers (tars) under one folder.

A layer is `layers/<name>-<key>.tar` plus `<name>-<key>.json`, its digest and size; the
JSON is written last, by rename, so an interrupted build leaves nothing that looks
complete. Builds happen in `tmp/`, which the next `open` clears; one process at a time
holds the cache (a lock file), so that clearing never races a build.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from modelplane_harness import oci

Build = Callable[[Path, Path], None]
"""Fills the root folder (first argument) with the layer's files; logs to the second."""


def human_size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def _unmount_under(folder: Path) -> None:
    """Unmount whatever a killed build left mounted below `folder` (debootstrap mounts
    /proc and /sys in its target), deepest first, so removing it stays inside it."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = [line.split()[1] for line in mounts]
    inside = [p for p in points if p == str(folder) or p.startswith(f"{folder}/")]
    for point in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


class LayerCache:
    def __init__(self, root: Path, say: Callable[[str], None]) -> None:
        self.root, self.say = root, say
        self.layers, self.tmp = root / "layers", root / "tmp"

    @classmethod
    @contextlib.contextmanager
    def open(cls, root: Path, *, say: Callable[[str], None]) -> Iterator[LayerCache]:
        """Hold the cache at `root` for one process, after clearing older builds' leftovers."""
        root.mkdir(parents=True, exist_ok=True)
        with (root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cache = cls(root, say)
            cache.layers.mkdir(exist_ok=True)
            for leftover in cache.tmp.glob("*") if cache.tmp.exists() else ():
                cache._remove(leftover)
            for partial in cache.layers.glob("*.tmp"):
                partial.unlink()
            yield cache

    def _remove(self, work: Path) -> None:
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)

    def find(self, name: str, key: str) -> oci.Layer | None:
        """The complete layer `name` for `key`, or None."""
        meta, tar = self.layers / f"{name}-{key}.json", self.layers / f"{name}-{key}.tar"
        if not meta.is_file() or not tar.is_file():
            return None
        recorded = json.loads(meta.read_text())
        if recorded["size"] != tar.stat().st_size:
            return None
        return oci.Layer(path=tar, digest=recorded["digest"], size=recorded["size"])

    def layer(self, name: str, key: str, build: Build, *, label: str) -> oci.Layer:
        """The layer `name` for `key`: cached, or built by `build` and then cached."""
        found = self.find(name, key)
        if found is not None:
            self.say(f"{label} layer cached ({human_size(found.size)})")
            return found
        started = time.monotonic()
        work = self.tmp / f"{name}-{key}"
        self._remove(work)
        (work / "root").mkdir(parents=True)
        (work / "root").chmod(0o755)  # the tar's "./" entry becomes the image's "/"
        build(work / "root", work / "build.log")
        layer = oci.layer_from_dir(work / "root", self.layers / f"{name}-{key}.tar")
        meta = self.layers / f"{name}-{key}.json"
        partial = meta.with_suffix(".json.tmp")
        partial.write_text(json.dumps({"digest": layer.digest, "size": layer.size}))
        partial.replace(meta)
        self._remove(work)
        self.say(f"{label} layer {human_size(layer.size)} in {time.monotonic() - started:.0f} s")
        self._prune(name, keep=key)
        return layer

    def _prune(self, name: str, *, keep: str) -> None:
        """Drop the older layers of `name`: a changed pin would otherwise leave another
        multi-GB dependencies layer behind every time."""
        for path in self.layers.glob(f"{name}-*"):
            key = path.name.removeprefix(f"{name}-").split(".", 1)[0]
            if key != keep and len(key) == len(keep) and key.isalnum():
                path.unlink(missing_ok=True)
