"""The CRDs are generated, current, structural and carry the rules users rely on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane_operator.apidocs import api_reference_is_stale
from modelplane_operator.constants import ENGINE_DYNAMIC_BATCHING
from modelplane_operator.crdgen import render_crds, stale_crds, write_crds
from modelplane_runtime.contract import GENERATION_ENGINE, AdapterRef, GenerationArgs
from tests.factories import ROOT

CRDS_DIR = ROOT / "crds"
TYPELESS_OK = ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CRDS_DIR / name).read_text())  # type: ignore[no-any-return]


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def crd_schemas() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, yaml.safe_load(text)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        for name, text in render_crds().items()
        if name.startswith("modelplane.io_")
    ]


def all_rules(schema: dict[str, Any]) -> set[str]:
    return {r["rule"] for _, node in walk(schema) for r in node.get("x-kubernetes-validations", [])}


def test_crds_folder_matches_the_models_run_modelplane_crds_if_this_fails() -> None:
    assert stale_crds(CRDS_DIR) == []


def test_there_are_the_two_kinds_and_kopfs_peering_kinds() -> None:
    assert sorted(p.name for p in CRDS_DIR.glob("*.yaml")) == [
        "kopf.dev_peerings.yaml",
        "modelplane.io_modeldeployments.yaml",
        "modelplane.io_modeltrainings.yaml",
    ]
    peering = list(yaml.safe_load_all((CRDS_DIR / "kopf.dev_peerings.yaml").read_text()))
    assert [d["metadata"]["name"] for d in peering] == [
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ]


def test_the_charts_crds_are_the_same_files() -> None:
    chart = ROOT / "helm" / "modelplane" / "crds"
    assert stale_crds(chart) == []
    assert {p.name: p.read_text() for p in chart.glob("*.yaml")} == {
        p.name: p.read_text() for p in CRDS_DIR.glob("*.yaml")
    }


def test_the_api_reference_is_current_run_modelplane_docs_if_this_fails() -> None:
    reference = ROOT / "docs" / "api-reference.md"
    assert not api_reference_is_stale(reference)
    text = reference.read_text()
    for field in ("`requireMetrics`", "`downscaleDelaySeconds`", "`gpusPerNode`", "`image`"):
        assert field in text


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    write_crds(tmp_path)
    first = {p.name: p.read_text() for p in tmp_path.iterdir()}
    write_crds(tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == first
    assert stale_crds(tmp_path) == []


def test_a_hand_edit_is_detected_as_stale(tmp_path: Path) -> None:
    write_crds(tmp_path)
    target = tmp_path / "modelplane.io_modeltrainings.yaml"
    target.write_text(target.read_text().replace("minimum: 1", "minimum: 2", 1))
    (tmp_path / "extra.yaml").write_text("kind: Leftover\n")
    assert stale_crds(tmp_path) == ["extra.yaml", "modelplane.io_modeltrainings.yaml"]


@pytest.mark.parametrize(("name", "schema"), crd_schemas(), ids=lambda v: str(v)[:40])
def test_schema_is_structural_and_documented(name: str, schema: dict[str, Any]) -> None:
    for path, node in walk(schema):
        assert "$ref" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or any(node.get(k) for k in TYPELESS_OK), f"{name}{path} untyped"
        if path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{name}{path} has no description"
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, True), bool), path


def test_both_kinds_have_status_subresource_columns_and_short_names() -> None:
    for name in (n for n in render_crds() if n.startswith("modelplane.io_")):
        spec = load(name)["spec"]
        version = spec["versions"][0]
        assert version["subresources"] == {"status": {}}
        columns = {c["name"] for c in version["additionalPrinterColumns"]}
        assert {"Phase", "Age"} <= columns
        assert spec["names"]["shortNames"]
        assert spec["scope"] == "Namespaced"


def test_printer_columns_show_progress_metric_and_replicas() -> None:
    training = load("modelplane.io_modeltrainings.yaml")["spec"]["versions"][0]
    deployment = load("modelplane.io_modeldeployments.yaml")["spec"]["versions"][0]
    assert {"Progress", "Metric"} <= {c["name"] for c in training["additionalPrinterColumns"]}
    assert {"Ready", "Desired"} <= {c["name"] for c in deployment["additionalPrinterColumns"]}


def test_the_cross_field_rules_are_cel_validations() -> None:
    schemas = dict(crd_schemas())
    training = all_rules(schemas["modelplane.io_modeltrainings.yaml"])
    deployment = all_rules(schemas["modelplane.io_modeldeployments.yaml"])
    assert "self.min <= self.max" in deployment
    assert "has(self.fromTraining) != has(self.uri)" in deployment
    assert "!(has(self.validation) && has(self.validationSplit))" in training
    assert "self.parallelTrials <= self.maxTrials" in training
    assert any("self.min < self.max" in r for r in training)
    assert any("size(self.values) > 0" in r for r in training)


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    for _, schema in crd_schemas():
        conditions = schema["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_quantities_are_judged_by_the_cel_quantity_library() -> None:
    schemas = dict(crd_schemas())
    for name in ("modelplane.io_modeltrainings.yaml", "modelplane.io_modeldeployments.yaml"):
        resources = schemas[name]["properties"]["spec"]["properties"]["resources"]["properties"]
        for field in ("cpu", "memory"):
            node = resources[field]
            assert node["x-kubernetes-int-or-string"] is True
            rules = [r["rule"] for r in node["x-kubernetes-validations"]]
            assert "isQuantity(string(self))" in rules, (name, field)
            assert any("compareTo(quantity(" in r for r in rules), (name, field)


def test_gpus_per_replica_are_whole_and_rollout_is_gone() -> None:
    spec = dict(crd_schemas())["modelplane.io_modeldeployments.yaml"]["properties"]["spec"]
    assert spec["properties"]["resources"]["properties"]["gpusPerReplica"]["type"] == "integer"
    assert "rollout" not in spec["properties"]


def test_each_param_an_architecture_does_not_read_has_its_own_rule() -> None:
    model = dict(crd_schemas())["modelplane.io_modeltrainings.yaml"]["properties"]["spec"][
        "properties"
    ]["model"]
    paths = {r.get("fieldPath") for r in model["x-kubernetes-validations"]}
    for field in ("heads", "dropout", "maxLength", "vocabSize"):
        assert f".params.{field}" in paths


def test_generation_mirrors_the_contracts_bounds_and_the_engines_are_named() -> None:
    """spec.generation's bounds are the replica's own (GenerationArgs), so what the API
    server accepts the replica starts with; status.engine's description names the values
    the operator writes."""
    schema = dict(crd_schemas())["modelplane.io_modeldeployments.yaml"]["properties"]
    generation = schema["spec"]["properties"]["generation"]["properties"]
    contract = GenerationArgs.model_json_schema()["properties"]
    for field, name in (
        ("maxSequences", "max_sequences"),
        ("maxWaiting", "max_waiting"),
        ("maxTokens", "max_tokens"),
        ("kvCacheTokens", "kv_cache_tokens"),
        ("maxBatchTokens", "max_batch_tokens"),
        ("maxLoadedAdapters", "max_loaded_adapters"),
    ):
        ours, theirs = generation[field], contract[name]
        assert (ours["minimum"], ours["maximum"], ours["default"]) == (
            theirs["minimum"],
            theirs["maximum"],
            theirs["default"],
        ), field
    adapter = generation["adapters"]["items"]["properties"]["name"]
    theirs = AdapterRef.model_json_schema()["properties"]["name"]
    assert (adapter["pattern"], adapter["maxLength"]) == (theirs["pattern"], theirs["maxLength"])
    engine = schema["status"]["properties"]["engine"]["description"]
    assert GENERATION_ENGINE in engine
    assert ENGINE_DYNAMIC_BATCHING in engine
