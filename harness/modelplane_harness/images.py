"""Front end B: modelplane's images built here from the recipe, without a container engine.

Each image is three layers, each cached under ~/.cache/modelplane/images/ by a hash of
what goes into it, so an unchanged tree rebuilds nothing and a source edit rebuilds only
the last, small one:

  base  debootstrap --variant=minbase of the recipe's suite and packages, then the
        recipe's setup shell (user 1000, trim) in a chroot     key: the recipe's base
  deps  every pinned dependency of the image's extras, from uv's cache, into the prefix
                                                    key: constraints, pyproject, extras
  app   the modelplane wheel built from the source tree, --no-deps   key: its sources

`import_image` streams an image into a containerd (the dev node's), skipping what it
already holds. CLI: `python -m modelplane_harness.images build|import|dockerfiles`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from modelplane_harness import dockerfiles, oci
from modelplane_harness.cluster import cache_dir, repo_root
from modelplane_harness.layer_cache import LayerCache, human_size
from modelplane_harness.recipes import (
    APP_SOURCES,
    LEFTOVERS,
    UV_ENV,
    Flavor,
    ImageRecipe,
    Recipe,
    RecipeError,
    app_install,
    deps_install,
    load_recipe,
    localize,
    setup_script,
    wheel_build,
)


class ImageBuildError(RuntimeError):
    """An image could not be built or imported here; the message says why and what to do."""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    ref: str
    digest: str
    """The manifest digest, which containerd reports for the image."""
    layers: tuple[oci.Layer, ...]
    config: oci.ImageConfig

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


def _say(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def _run(args: Sequence[str], *, log: Path, env: dict[str, str] | None = None) -> None:
    """Run a build step with its output in `log`; fail with the log's tail."""
    with log.open("ab") as out:
        done = subprocess.run(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            check=False,
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise ImageBuildError(
            f"`{' '.join(args[:4])} ...` failed ({done.returncode}); log {log}:\n" + "\n".join(tail)
        )


def _key(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _check_host(recipe: Recipe) -> Path:
    """The uv to run; fails unless this host can build what Docker would."""
    if os.geteuid() != 0:
        raise ImageBuildError("local image builds need root: debootstrap and chroot do")
    if not Path(recipe.python.interpreter).is_file():
        raise ImageBuildError(
            f"local builds install with the image's interpreter {recipe.python.interpreter}"
            " (the console scripts' shebangs and the bytecode come from it), which this host"
            f" lacks: build on Debian {recipe.base.suite} or with Docker (images/*.Dockerfile)"
        )
    uv = Path(sys.executable).parent / "uv"
    found = subprocess.run([uv, "--version"], capture_output=True, text=True, check=False)
    if found.returncode != 0 or found.stdout.split()[1:2] != [recipe.python.uv]:
        raise ImageBuildError(
            f"the recipe pins uv {recipe.python.uv} (Docker's ghcr.io/astral-sh/uv image);"
            f" {uv} is {found.stdout.strip() or 'missing'}: run scripts/bootstrap.sh"
        )
    return uv


def _host_python(recipe: Recipe) -> str:
    args = [recipe.python.interpreter, "-c", "import sys; print(sys.version)"]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()


def _mirror_release(recipe: Recipe) -> str | None:
    url = f"{recipe.base.mirror}/dists/{recipe.base.suite}/Release"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            head = bytes(response.read(4096)).decode(errors="replace")
    except OSError:
        return None
    for line in head.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return None


def require_local_flavor(recipe: Recipe, image: ImageRecipe, flavor: Flavor | None) -> None:
    """Fail unless `flavor`'s wheels all come from PyPI, the only index local builds use."""
    if flavor is None or not flavor.torch_backend:
        return
    raise ImageBuildError(
        f"the {flavor.name} flavor of {image.name} takes torch from PyTorch's"
        f" `{flavor.torch_backend}` index (uv --torch-backend), and local builds"
        " install only PyPI wheels (uv's cache; download.pytorch.org may be out of"
        f" reach). Build {image.name} --flavor {image.default_flavor} here (PyPI's"
        f" torch runs on CPUs too), or this flavor with Docker:"
        f" docker build -f images/{image.name}.Dockerfile --build-arg"
        f" FLAVOR={flavor.name} -t {recipe.ref(image, flavor)} ."
    )


class Builder:
    """Builds the recipe's images in one checkout; the app layer is shared by all."""

    def __init__(self, repo: Path, recipe: Recipe, cache: LayerCache) -> None:
        self.repo, self.recipe, self.cache = repo, recipe, cache
        self.uv = _check_host(recipe)
        self._app: oci.Layer | None = None

    def _chroot(self, root: Path, script: str, log: Path) -> None:
        _run(["chroot", str(root), "/bin/sh", "-c", script], log=log)

    def base(self) -> oci.Layer:
        recipe = self.recipe
        key = _key("base", recipe.base, recipe.user, setup_script(recipe))

        def build(root: Path, log: Path) -> None:
            release = _mirror_release(recipe)
            if release not in (None, recipe.base.point_release):
                _say(
                    f"warning: {recipe.base.mirror} serves {recipe.base.suite} {release};"
                    f" the recipe (and Docker's base) pin {recipe.base.point_release}:"
                    " bump base.point_release in images/recipes.toml"
                )
            _run(
                [
                    "debootstrap", "--variant=minbase",
                    f"--include={','.join(recipe.base.packages)}",
                    recipe.base.suite, str(root), recipe.base.mirror,
                ],
                log=log,
            )  # fmt: skip
            self._chroot(root, setup_script(recipe), log)
            # What debootstrap leaves that a container's runtime provides: device nodes,
            # the host's resolver and name.
            for entry in (root / "dev").iterdir():
                entry.unlink() if not entry.is_dir() or entry.is_symlink() else shutil.rmtree(entry)
            for name in ("etc/resolv.conf", "etc/hostname"):
                (root / name).unlink(missing_ok=True)

        return self.cache.layer("base", key, build, label="base")

    def deps(self, image: ImageRecipe, flavor: Flavor | None) -> oci.Layer:
        recipe = self.recipe
        constraints = self.repo / "constraints.txt"
        project = tomllib.loads((self.repo / "pyproject.toml").read_text())["project"]
        wanted = {extra: project["optional-dependencies"][extra] for extra in image.extras}
        args = deps_install(recipe, image, flavor)
        key = _key(
            "deps", constraints.read_text(), (self.repo / "uv.toml").read_text(),
            project["dependencies"], wanted, args,
            recipe.python, UV_ENV, LEFTOVERS, _host_python(recipe),
        )  # fmt: skip

        def build(root: Path, log: Path) -> None:
            paths = {
                "/src/constraints.txt": str(constraints),
                "/src/pyproject.toml": str(self.repo / "pyproject.toml"),
                "/src/uv.toml": str(self.repo / "uv.toml"),
            }
            self._install(root, localize(args, paths), log)

        return self.cache.layer(f"deps-{image.name}", key, build, label=f"{image.name}: deps")

    def app(self) -> oci.Layer:
        if self._app is not None:
            return self._app
        recipe, sources = self.recipe, self._app_sources()
        digest = hashlib.sha256()
        for path in sources:
            mode = "x" if os.access(self.repo / path, os.X_OK) else "-"
            digest.update(f"{path}\0{mode}\0".encode() + (self.repo / path).read_bytes())
        key = _key("app", digest.hexdigest(), recipe.python, UV_ENV, LEFTOVERS)

        def build(root: Path, log: Path) -> None:
            source, dist = root.parent / "src", root.parent / "dist"
            for path in sources:
                (source / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.repo / path, source / path)
            args = wheel_build(recipe, source=str(source), out=str(dist))
            _run([str(self.uv), *args], log=log, env=UV_ENV)
            wheels = sorted(dist.glob("*.whl"))
            if len(wheels) != 1:
                raise ImageBuildError(f"uv build left {len(wheels)} wheels in {dist}, not one")
            self._install(root, app_install(recipe, str(wheels[0])), log)

        self._app = self.cache.layer("app", key, build, label="app")
        return self._app

    def _app_sources(self) -> list[str]:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
             *APP_SOURCES],
            cwd=self.repo, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
        return sorted({p for p in listed.split("\0") if p and (self.repo / p).is_file()})

    def _install(self, root: Path, args: list[str], log: Path) -> None:
        """Run uv with the prefix moved under `root`, then drop the recipe's leftovers."""
        prefix = self.recipe.python.prefix
        staged = root / prefix.lstrip("/")
        _run([str(self.uv), *localize(args, {prefix: str(staged)})], log=log, env=UV_ENV)
        for pattern in LEFTOVERS:
            for leftover in staged.glob(pattern):
                leftover.unlink()
        site = root / self.recipe.python.site_packages.lstrip("/")
        if not site.is_dir():
            raise ImageBuildError(
                f"uv did not install into {self.recipe.python.site_packages}, which the"
                " recipe puts on PYTHONPATH: fix python.site_packages in images/recipes.toml"
            )

    def image(self, name: str, flavor_name: str | None = None) -> BuiltImage:
        recipe = self.recipe
        image = recipe.image(name)
        flavor = image.flavor(flavor_name)
        require_local_flavor(recipe, image, flavor)
        started = time.monotonic()
        layers = (self.base(), self.deps(image, flavor), self.app())
        config = oci.ImageConfig(
            entrypoint=list(image.entrypoint),
            env=recipe.image_env(image),
            user=f"{recipe.user.uid}:{recipe.user.gid}",
            labels=recipe.image_labels(image, flavor),
        )
        built = BuiltImage(
            name=name,
            ref=recipe.ref(image, flavor),
            digest=oci.manifest_digest(layers, config),
            layers=layers,
            config=config,
        )
        _say(f"{built.ref}: {human_size(built.size)} in {time.monotonic() - started:.1f} s")
        return built


def build_images(
    names: Sequence[str], *, flavor: str | None = None, repo: Path | None = None
) -> list[BuiltImage]:
    """Build (or find cached) each image in `names`; `flavor` applies to images with
    flavors. Progress goes to stderr."""
    repo = repo or repo_root()
    recipe = load_recipe(repo)
    with LayerCache.open(cache_dir() / "images", say=_say) as cache:
        builder = Builder(repo, recipe, cache)
        return [
            builder.image(name, flavor if recipe.image(name).flavors else None) for name in names
        ]


def _ctr(address: Path) -> list[str]:
    return ["ctr", "--address", str(address), "-n", "k8s.io"]


def held_digest(ref: str, *, containerd_address: Path) -> str | None:
    """The manifest digest containerd holds under `ref`, if any."""
    listed = subprocess.run(
        [*_ctr(containerd_address), "images", "ls", f"name=={ref}"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    rows = [line.split() for line in listed[1:] if line.split()[:1] == [ref]]
    return str(rows[0][2]) if rows else None


def import_image(image: BuiltImage, *, containerd_address: Path) -> bool:
    """Put `image` into containerd's k8s.io namespace, where the kubelet finds it.

    Returns False when containerd already holds this exact digest under this name.
    Layers containerd already holds (a previous build's base and deps) are not streamed.
    """
    if held_digest(image.ref, containerd_address=containerd_address) == image.digest:
        return False
    ctr = _ctr(containerd_address)
    content = subprocess.run(
        [*ctr, "content", "ls", "-q"], capture_output=True, text=True, check=True
    ).stdout.split()
    omit = frozenset(layer.digest for layer in image.layers) & frozenset(content)
    with (
        tempfile.TemporaryFile() as output,
        subprocess.Popen(
            [*ctr, "images", "import", "-"], stdin=subprocess.PIPE, stdout=output,
            stderr=subprocess.STDOUT,
        ) as proc,
    ):  # fmt: skip
        stream = cast("IO[bytes]", proc.stdin)
        try:
            oci.write_archive(image.layers, image.config, name=image.ref, out=stream, omit=omit)
        finally:
            stream.close()
        proc.wait()
        output.seek(0)
        logged = output.read().decode(errors="replace")
    if proc.returncode != 0:
        raise ImageBuildError(f"ctr images import {image.ref} failed:\n{logged}")
    held = held_digest(image.ref, containerd_address=containerd_address)
    if held != image.digest:
        raise ImageBuildError(f"containerd holds {image.ref} as {held}, not {image.digest}")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelplane_harness.images")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build images here and print ref, digest, size")
    build.add_argument("names", nargs="*", help="images to build (default: all)")
    build.add_argument("--flavor", help="the flavor of images that have flavors")
    build.add_argument("--import-to", type=Path, metavar="SOCKET", help="containerd to import into")
    docker = commands.add_parser("dockerfiles", help="render images/*.Dockerfile from the recipe")
    docker.add_argument("--check", action="store_true", help="fail if any is stale; write none")
    args = parser.parse_args(argv)
    repo = repo_root()
    try:
        recipe = load_recipe(repo)
        if args.command == "dockerfiles":
            return _dockerfiles(recipe, repo, check=args.check)
        names = args.names or list(recipe.images)
        for image in build_images(names, flavor=args.flavor, repo=repo):
            print(f"{image.ref}\t{image.digest}\t{human_size(image.size)}")
            if args.import_to is not None:
                started = time.monotonic()
                imported = import_image(image, containerd_address=args.import_to)
                what = "imported" if imported else "already held"
                _say(f"{image.ref}: {what} in {time.monotonic() - started:.1f} s")
    except (ImageBuildError, RecipeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _dockerfiles(recipe: Recipe, repo: Path, *, check: bool) -> int:
    if check:
        stale = dockerfiles.stale(recipe, repo)
        for path in stale:
            print(
                f"stale: {path.relative_to(repo)} (python -m modelplane_harness.images dockerfiles)"
            )
        return 1 if stale else 0
    for path in dockerfiles.write(recipe, repo):
        print(f"wrote {path.relative_to(repo)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
