"""Front end A: images/<name>.Dockerfile, rendered from the recipe (recipes.py).

The stages mirror the local build's layers: the Debian base (apt-get + the setup shell),
the dependencies layer (one uv install, without modelplane), the app layer (the wheel,
--no-deps). uv comes from its own pinned image and never lands in the result.
"""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

from modelplane_harness.recipes import (
    APP_SOURCES,
    LEFTOVERS,
    RECIPE_PATH,
    UV_ENV,
    Flavor,
    ImageRecipe,
    Recipe,
    app_install,
    deps_install,
    setup_script,
    wheel_build,
)

UV_MOUNT = (
    "--mount=from=uv,source=/uv,target=/usr/local/bin/uv --mount=type=cache,target=/root/.cache/uv"
)
"""uv and its cache, kept out of the image; uv copies from a cache on another mount."""


def dockerfile_path(repo: Path, image: ImageRecipe) -> Path:
    return repo / "images" / f"{image.name}.Dockerfile"


def _wheel_name(repo: Path) -> str:
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    return f"{project['name']}-{project['version']}-py3-none-any.whl"


def _uv(args: list[str]) -> str:
    env = " ".join(f"{key}={value}" for key, value in {**UV_ENV, "UV_LINK_MODE": "copy"}.items())
    return f"{env} uv {shlex.join(args)}"


def _leftovers(recipe: Recipe) -> str:
    return "rm -f " + " ".join(f"{recipe.python.prefix}/{path}" for path in LEFTOVERS)


def _header(recipe: Recipe, image: ImageRecipe) -> list[str]:
    lines = [
        "# syntax=docker/dockerfile:1",
        f"# GENERATED from {RECIPE_PATH} by `python -m modelplane_harness.images dockerfiles`;",
        "# do not edit (tests/unit/test_images.py fails when this file is stale). The same",
        "# recipe builds the image without Docker: `python -m modelplane_harness.images build`.",
        "#",
        f"# {image.description}",
        "#",
    ]
    flavors: list[Flavor | None] = list(image.flavors.values()) or [None]
    for flavor in flavors:
        arg = "" if flavor is None else f" --build-arg FLAVOR={flavor.name}"
        ref = recipe.ref(image, flavor)
        lines.append(f"#   docker build -f images/{image.name}.Dockerfile{arg} -t {ref} .")
    for flavor in image.flavors.values():
        lines.append(f"#   {flavor.name}: {flavor.description}")
    lines.append("#")
    lines.append(
        "# The base is pinned to a Debian point release; CI with registry access should pin "
        "its digest too."
    )
    return lines


def _flavor_switch(image: ImageRecipe) -> str:
    """Shell that sets $backend to the chosen flavor's uv flags, or fails on a typo."""
    cases = " ".join(
        f"{flavor.name}) backend={shlex.quote(f'--torch-backend {flavor.torch_backend}')};;"
        if flavor.torch_backend
        else f"{flavor.name}) backend=;;"
        for flavor in image.flavors.values()
    )
    names = " ".join(image.flavors)
    return f'case "$FLAVOR" in {cases} *) echo "FLAVOR must be one of: {names}" >&2; exit 1;; esac'


def render(recipe: Recipe, image: ImageRecipe, repo: Path) -> str:
    """The Dockerfile of `image`, built from the repository root as the context."""
    base = recipe.base
    wheel = f"/dist/{_wheel_name(repo)}"
    lines = _header(recipe, image)
    if image.flavors:
        lines.append(f"ARG FLAVOR={image.default_flavor}")
    lines += [
        "",
        f"FROM ghcr.io/astral-sh/uv:{recipe.python.uv} AS uv",
        "",
        f"FROM {base.docker_image} AS base",
        "RUN apt-get update \\",
        " && apt-get install --yes --no-install-recommends \\",
        *(f"      {package} \\" for package in base.packages),
        f" && {setup_script(recipe)}",
        "",
        "FROM base AS wheel",
        "WORKDIR /src",
        f"COPY {' '.join(source for source in APP_SOURCES if '.' in source)} ./",
        *(f"COPY {source} {source}" for source in APP_SOURCES if "." not in source),
        f"RUN {UV_MOUNT} \\",
        f"    {_uv(wheel_build(recipe, source='/src', out='/dist'))}",
        "",
        "FROM base",
    ]
    flavor: Flavor | None = None
    deps = _uv(deps_install(recipe, image, flavor))
    if image.flavors:
        lines.append("ARG FLAVOR")
        deps = f"{_flavor_switch(image)} \\\n && {deps} $backend"
    lines += [
        "# The dependencies layer: every pinned dependency of the extras, not modelplane.",
        f"RUN {UV_MOUNT} \\",
        "    --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \\",
        "    --mount=type=bind,source=constraints.txt,target=/src/constraints.txt \\",
        "    --mount=type=bind,source=uv.toml,target=/src/uv.toml \\",
        f"    {deps} \\",
        f" && {_leftovers(recipe)}",
        "# The app layer: the modelplane wheel alone.",
        f"RUN {UV_MOUNT} --mount=from=wheel,source=/dist,target=/dist \\",
        f"    {_uv(app_install(recipe, wheel))} \\",
        f" && {_leftovers(recipe)}",
    ]
    env = recipe.image_env(image)
    labels = recipe.image_labels(image, None)
    if image.flavors:
        labels[f"io.modelplane.{image.name}.flavor"] = "$FLAVOR"
    lines += [
        "ENV " + " \\\n    ".join(f"{key}={json.dumps(value)}" for key, value in env.items()),
        "LABEL "
        + " \\\n      ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in labels.items()),
        f"USER {recipe.user.uid}:{recipe.user.gid}",
        f"ENTRYPOINT {json.dumps(list(image.entrypoint))}",
    ]
    return "\n".join(lines) + "\n"


def stale(recipe: Recipe, repo: Path) -> list[Path]:
    """The Dockerfiles that differ from what the recipe renders."""
    return [
        dockerfile_path(repo, image)
        for image in recipe.images.values()
        if not dockerfile_path(repo, image).is_file()
        or dockerfile_path(repo, image).read_text() != render(recipe, image, repo)
    ]


def write(recipe: Recipe, repo: Path) -> list[Path]:
    """Render every image's Dockerfile; returns the ones that changed."""
    changed = stale(recipe, repo)
    for path in changed:
        image = recipe.image(path.name.removesuffix(".Dockerfile"))
        path.write_text(render(recipe, image, repo))
    return changed
