"""One recipe (images/recipes.toml), two front ends: the Dockerfiles rendered from it and
the local layer builds agree, and the tags follow the chart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from modelplane_harness import dockerfiles
from modelplane_harness.images import ImageBuildError, require_local_flavor
from modelplane_harness.layer_cache import LayerCache
from modelplane_harness.recipes import (
    RecipeError,
    deps_install,
    load_recipe,
    setup_script,
)
from modelplane_operator.settings import DEFAULT_RUNTIME_IMAGE

REPO = Path(__file__).resolve().parents[2]


def copy_of_repo(tmp_path: Path) -> Path:
    """The files the recipe and the renderer read, in a scratch checkout."""
    for path in ("images", "helm/modelplane", "pyproject.toml"):
        source, target = REPO / path, tmp_path / path
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    return tmp_path


def edit_recipe(repo: Path, old: str, new: str) -> None:
    path = repo / "images" / "recipes.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_the_committed_dockerfiles_are_what_the_recipe_renders() -> None:
    stale = dockerfiles.stale(load_recipe(REPO), REPO)
    assert stale == [], "run: python -m modelplane_harness.images dockerfiles"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"libquadmath0",', '"libquadmath0", "curl",'),
        ('uv = "0.13.8"', 'uv = "0.13.9"'),
        ('PYTHONUNBUFFERED = "1"', 'PYTHONUNBUFFERED = "0"'),
    ],
    ids=["a new base package", "a new uv", "a changed environment variable"],
)
def test_a_recipe_edit_makes_every_dockerfile_stale(tmp_path: Path, old: str, new: str) -> None:
    repo = copy_of_repo(tmp_path)
    edit_recipe(repo, old, new)
    recipe = load_recipe(repo)
    assert {path.name for path in dockerfiles.stale(recipe, repo)} == {
        "operator.Dockerfile",
        "runtime.Dockerfile",
    }
    dockerfiles.write(recipe, repo)
    assert dockerfiles.stale(recipe, repo) == []


def test_a_new_chart_app_version_retags_and_makes_the_dockerfiles_stale(tmp_path: Path) -> None:
    repo = copy_of_repo(tmp_path)
    chart = repo / "helm/modelplane/Chart.yaml"
    chart.write_text(chart.read_text().replace('appVersion: "0.1.0"', 'appVersion: "0.2.0"'))
    recipe = load_recipe(repo)
    runtime = recipe.image("runtime")
    assert recipe.ref(runtime, runtime.flavor("cpu")) == "ghcr.io/modelplane/runtime:0.2.0-cpu"
    assert len(dockerfiles.stale(recipe, repo)) == 2


def test_tags_follow_the_charts_image_values() -> None:
    recipe = load_recipe(REPO)
    values = yaml.safe_load((REPO / "helm/modelplane/values.yaml").read_text())
    app_version = yaml.safe_load((REPO / "helm/modelplane/Chart.yaml").read_text())["appVersion"]
    operator, runtime = recipe.image("operator"), recipe.image("runtime")
    default = runtime.flavor(None)
    assert default is not None
    assert default.name == values["runtime"]["image"]["flavor"]
    assert recipe.ref(operator, None) == f"{values['image']['repository']}:{app_version}"
    assert recipe.ref(runtime, default) == (
        f"{values['runtime']['image']['repository']}:{app_version}-{default.name}"
    )
    # An operator run outside the chart starts pods of that same image.
    assert recipe.ref(runtime, default) == DEFAULT_RUNTIME_IMAGE


@pytest.mark.parametrize(
    "name",
    ["operator", "runtime"],
    ids=["the operator image", "the runtime image"],
)
def test_the_dockerfile_runs_the_recipes_commands_and_config(name: str) -> None:
    recipe = load_recipe(REPO)
    image = recipe.image(name)
    text = (REPO / "images" / f"{name}.Dockerfile").read_text()
    assert f"FROM {recipe.base.docker_image} AS base" in text
    assert setup_script(recipe) in text
    for package in recipe.base.packages:
        assert f"      {package} \\\n" in text
    assert " ".join(deps_install(recipe, image, None)) in text
    assert "USER 1000:1000" in text
    assert f'ENTRYPOINT ["python", "-m", "modelplane_{name}"]' in text
    for key, value in recipe.image_env(image).items():
        assert f'{key}="{value}"' in text


def test_the_runtime_dockerfile_takes_the_cpu_flavors_torch_from_pytorchs_index() -> None:
    text = (REPO / "images/runtime.Dockerfile").read_text()
    assert "cpu) backend='--torch-backend cpu';;" in text
    assert "cuda) backend=;;" in text


def test_the_image_user_exists_in_passwd_and_group() -> None:
    script = setup_script(load_recipe(REPO))
    assert "groupadd --gid 1000 modelplane" in script
    assert "useradd --uid 1000 --gid 1000" in script


def test_a_cpu_runtime_cannot_be_built_locally_and_the_error_says_what_to_do() -> None:
    recipe = load_recipe(REPO)
    runtime = recipe.image("runtime")
    with pytest.raises(ImageBuildError) as error:
        require_local_flavor(recipe, runtime, runtime.flavor("cpu"))
    assert "PyPI" in str(error.value)
    assert "--flavor cuda" in str(error.value)
    assert "docker build -f images/runtime.Dockerfile --build-arg FLAVOR=cpu" in str(error.value)
    require_local_flavor(recipe, runtime, runtime.flavor("cuda"))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('suite = "bookworm"\n', "", "[base] needs `suite`"),
        ('home = "/tmp"', 'home = "/tmp"\nhomedir = "/tmp"', "[user] has unknown keys ['homedir']"),
        ('default_flavor = "cuda"', 'default_flavor = "rocm"', "default_flavor must name"),
        ("uid = 1000", 'uid = "1000"', "[user].uid must be a int"),
    ],
    ids=["a missing field", "an unknown field", "a default flavor it lacks", "a mistyped field"],
)
def test_recipe_mistakes_name_the_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    repo = copy_of_repo(tmp_path)
    edit_recipe(repo, old, new)
    with pytest.raises(RecipeError) as error:
        load_recipe(repo)
    assert message in str(error.value)


def test_an_unknown_flavor_lists_the_known_ones() -> None:
    with pytest.raises(RecipeError, match="it has cuda, cpu"):
        load_recipe(REPO).image("runtime").flavor("rocm")


def test_a_cached_layer_is_not_rebuilt_and_keeps_its_digest(tmp_path: Path) -> None:
    calls: list[str] = []

    def build(root: Path, log: Path) -> None:
        calls.append("built")
        (root / "opt").mkdir()
        (root / "opt/file").write_text("content")

    with LayerCache.open(tmp_path, say=lambda _: None) as cache:
        first = cache.layer("app", "k1", build, label="app")
    with LayerCache.open(tmp_path, say=lambda _: None) as cache:
        again = cache.layer("app", "k1", build, label="app")
        other = cache.layer("app", "k2", build, label="app")
    assert calls == ["built", "built"]
    assert again == first
    assert other.digest == first.digest  # same files, same bytes: reproducible layers


def test_an_interrupted_build_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    def interrupted(root: Path, log: Path) -> None:
        (root / "half").write_text("written")
        raise KeyboardInterrupt

    with LayerCache.open(tmp_path, say=lambda _: None) as cache:
        with pytest.raises(KeyboardInterrupt):
            cache.layer("deps-runtime", "k", interrupted, label="runtime: deps")
        assert cache.find("deps-runtime", "k") is None
    with LayerCache.open(tmp_path, say=lambda _: None) as cache:
        assert list(cache.tmp.iterdir()) == []
        assert cache.find("deps-runtime", "k") is None


def test_a_new_layer_drops_the_older_ones_of_its_name_only(tmp_path: Path) -> None:
    def build(root: Path, log: Path) -> None:
        (root / "file").write_text("content")

    with LayerCache.open(tmp_path, say=lambda _: None) as cache:
        cache.layer("deps", "k1", build, label="deps")
        cache.layer("deps-runtime", "k1", build, label="runtime deps")
        cache.layer("deps", "k2", build, label="deps")
        assert cache.find("deps", "k1") is None  # a changed pin leaves no stale GBs behind
        assert cache.find("deps", "k2") is not None
        assert cache.find("deps-runtime", "k1") is not None
