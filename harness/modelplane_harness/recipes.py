"""The recipe of modelplane's images (images/recipes.toml), typed, and the commands both
front ends run from it.

Docker (dockerfiles.py) and the local build (images.py) differ only in how they get a
Debian root (`FROM debian:<point>-slim` + apt-get, or debootstrap) and where the prefix
lives while they write it; the setup shell and the uv command lines come from here.
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RECIPE_PATH = Path("images") / "recipes.toml"
CHART_PATH = Path("helm") / "modelplane" / "Chart.yaml"
UV_ENV = {"SOURCE_DATE_EPOCH": "0"}
"""Set for every uv install: its bytecode is then hash-checked, not stamped with the
source's mtime (the local layers' files all have mtime 0), and byte-for-byte repeatable."""
APP_SOURCES = ("pyproject.toml", "README.md", "operator", "runtime", "cli")
"""What the modelplane wheel is built from: Docker's wheel stage copies these, and the
local app layer hashes them (their git-tracked and untracked-but-not-ignored files)."""
LEFTOVERS = (".lock", "lib/*/site-packages/*.dist-info/direct_url.json")
"""Under the prefix, removed after each install: uv's lock, and the wheel's build path."""


class RecipeError(ValueError):
    """images/recipes.toml is missing a field, has an unknown one, or asks for the
    impossible (a flavor the image does not have, a local build of a non-PyPI flavor)."""


@dataclass(frozen=True)
class Base:
    suite: str
    point_release: str
    mirror: str
    packages: tuple[str, ...]
    trim: tuple[str, ...]

    @property
    def docker_image(self) -> str:
        return f"debian:{self.point_release}-slim"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class Python:
    interpreter: str
    prefix: str
    site_packages: str
    uv: str


@dataclass(frozen=True)
class Flavor:
    name: str
    description: str
    torch_backend: str
    """uv's --torch-backend; empty for PyPI."""


@dataclass(frozen=True)
class ImageRecipe:
    name: str
    description: str
    repository: str
    extras: tuple[str, ...]
    entrypoint: tuple[str, ...]
    env: dict[str, str]
    flavors: dict[str, Flavor]
    default_flavor: str | None

    def flavor(self, name: str | None) -> Flavor | None:
        """The flavor `name` (or the default one); None for an image without flavors."""
        if not self.flavors:
            if name is not None:
                raise RecipeError(f"image {self.name} has no flavors; drop --flavor {name}")
            return None
        chosen = name or self.default_flavor
        if chosen not in self.flavors:
            raise RecipeError(
                f"image {self.name} has no flavor {chosen!r}; it has {', '.join(self.flavors)}"
            )
        return self.flavors[chosen]


@dataclass(frozen=True)
class Recipe:
    base: Base
    user: User
    python: Python
    env: dict[str, str]
    labels: dict[str, str]
    images: dict[str, ImageRecipe]
    app_version: str
    """The chart's appVersion: every tag starts with it."""

    def image(self, name: str) -> ImageRecipe:
        if name not in self.images:
            raise RecipeError(
                f"no image {name!r} in {RECIPE_PATH}; there are {', '.join(self.images)}"
            )
        return self.images[name]

    def ref(self, image: ImageRecipe, flavor: Flavor | None) -> str:
        """`<repository>:<appVersion>`, or `...:<appVersion>-<flavor>` (the chart's scheme)."""
        tag = self.app_version if flavor is None else f"{self.app_version}-{flavor.name}"
        return f"{image.repository}:{tag}"

    def image_env(self, image: ImageRecipe) -> dict[str, str]:
        return {**self.env, **image.env}

    def image_labels(self, image: ImageRecipe, flavor: Flavor | None) -> dict[str, str]:
        labels = {
            **self.labels,
            "org.opencontainers.image.title": f"modelplane-{image.name}",
            "org.opencontainers.image.description": image.description,
            "org.opencontainers.image.version": self.app_version,
        }
        if flavor is not None:
            labels[f"io.modelplane.{image.name}.flavor"] = flavor.name
        return labels


def _take(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise RecipeError(f"{RECIPE_PATH}: [{where}] needs `{key}`")
    value = table.pop(key)
    if not isinstance(value, kind):
        raise RecipeError(f"{RECIPE_PATH}: [{where}].{key} must be a {kind.__name__}")
    return value


def _done(table: dict[str, Any], where: str) -> None:
    if table:
        raise RecipeError(f"{RECIPE_PATH}: [{where}] has unknown keys {sorted(table)}")


def _strings(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = _take(table, key, list, where)
    if not all(isinstance(value, str) for value in values):
        raise RecipeError(f"{RECIPE_PATH}: [{where}].{key} must be a list of strings")
    return tuple(values)


def _image(name: str, table: dict[str, Any]) -> ImageRecipe:
    where = f"images.{name}"
    flavors = {}
    for flavor_name, flavor in table.pop("flavors", {}).items():
        fwhere = f"{where}.flavors.{flavor_name}"
        flavors[flavor_name] = Flavor(
            name=flavor_name,
            description=_take(flavor, "description", str, fwhere),
            torch_backend=_take(flavor, "torch_backend", str, fwhere),
        )
        _done(flavor, fwhere)
    default = table.pop("default_flavor", None)
    if flavors and default not in flavors:
        raise RecipeError(f"{RECIPE_PATH}: [{where}].default_flavor must name one of its flavors")
    image = ImageRecipe(
        name=name,
        description=_take(table, "description", str, where),
        repository=_take(table, "repository", str, where),
        extras=_strings(table, "extras", where),
        entrypoint=_strings(table, "entrypoint", where),
        env=dict(table.pop("env", {})),
        flavors=flavors,
        default_flavor=default,
    )
    _done(table, where)
    return image


def load_recipe(repo: Path) -> Recipe:
    """Read images/recipes.toml and the chart's appVersion from the checkout `repo`."""
    data = tomllib.loads((repo / RECIPE_PATH).read_text())
    base, user, python = data.pop("base", {}), data.pop("user", {}), data.pop("python", {})
    recipe = Recipe(
        base=Base(
            suite=_take(base, "suite", str, "base"),
            point_release=_take(base, "point_release", str, "base"),
            mirror=_take(base, "mirror", str, "base"),
            packages=_strings(base, "packages", "base"),
            trim=_strings(base, "trim", "base"),
        ),
        user=User(
            name=_take(user, "name", str, "user"),
            uid=_take(user, "uid", int, "user"),
            gid=_take(user, "gid", int, "user"),
            home=_take(user, "home", str, "user"),
            shell=_take(user, "shell", str, "user"),
        ),
        python=Python(
            interpreter=_take(python, "interpreter", str, "python"),
            prefix=_take(python, "prefix", str, "python"),
            site_packages=_take(python, "site_packages", str, "python"),
            uv=_take(python, "uv", str, "python"),
        ),
        env=dict(data.pop("env", {})),
        labels=dict(data.pop("labels", {})),
        images={name: _image(name, dict(t)) for name, t in data.pop("images", {}).items()},
        app_version=str(yaml.safe_load((repo / CHART_PATH).read_text())["appVersion"]),
    )
    for where, table in (("base", base), ("user", user), ("python", python), ("", data)):
        _done(table, where)
    return recipe


def setup_script(recipe: Recipe) -> str:
    """Shell run as root inside the Debian root once its packages are in: the user, then
    the trim. Docker runs it in a RUN; the local build in a chroot."""
    user = recipe.user
    trim = " ".join(shlex.quote(path) for path in recipe.base.trim)
    return (
        f"groupadd --gid {user.gid} {user.name}"
        f" && useradd --uid {user.uid} --gid {user.gid} --no-create-home"
        f" --home-dir {user.home} --shell {user.shell} {user.name}"
        f' && for path in {trim}; do if [ -d "$path" ]; then'
        ' find "$path" -mindepth 1 ! -type d ! -name copyright -delete'
        ' && find "$path" -mindepth 1 -depth -type d -empty -delete; fi; done'
    )


def deps_install(recipe: Recipe, image: ImageRecipe, flavor: Flavor | None) -> list[str]:
    """uv's arguments that install every pinned dependency of the image's extras, and not
    modelplane itself, into the prefix. Paths are those of the Docker build (/src);
    the local build swaps in its own with `localize`."""
    args = [
        "pip", "install", "--prefix", recipe.python.prefix,
        "--python", recipe.python.interpreter, "--compile-bytecode",
        "--config-file", "/src/uv.toml",
        "-c", "/src/constraints.txt", "-r", "/src/pyproject.toml",
    ]  # fmt: skip
    for extra in image.extras:
        args += ["--extra", extra]
    if flavor is not None and flavor.torch_backend:
        args += ["--torch-backend", flavor.torch_backend]
    return args


def app_install(recipe: Recipe, wheel: str) -> list[str]:
    """uv's arguments that install the modelplane wheel alone (its dependencies are the
    layer below)."""
    return [
        "pip", "install", "--prefix", recipe.python.prefix,
        "--python", recipe.python.interpreter, "--compile-bytecode", "--no-deps", wheel,
    ]  # fmt: skip


def wheel_build(recipe: Recipe, *, source: str, out: str) -> list[str]:
    """uv's arguments that build the modelplane wheel from a tree of its source files."""
    return ["build", "--wheel", "--python", recipe.python.interpreter, "--out-dir", out, source]


def localize(args: list[str], replacements: dict[str, str]) -> list[str]:
    """`args` with each Docker-side path in `replacements` swapped for a local one."""
    return [replacements.get(arg, arg) for arg in args]
