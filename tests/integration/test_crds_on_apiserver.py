"""The generated CRDs on a real API server: validation, explain, printer columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from modelplane_harness.cluster import LocalCluster
from modelplane_operator.validation import check_file
from tests.factories import EXAMPLES, INVALID_EXAMPLES, expected_message

VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted(INVALID_EXAMPLES.glob("*.yaml"))


def test_both_crds_are_established(crds: LocalCluster) -> None:
    names = crds.kubectl("get", "crd", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/modeltrainings.modelplane.io" in names
    assert "customresourcedefinition.apiextensions.k8s.io/modeldeployments.modelplane.io" in names


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_every_example_passes_server_side_dry_run(
    crds: LocalCluster, namespace: str, path: Path
) -> None:
    result = crds.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_search_that_leaves_its_fields_to_their_defaults_is_accepted_with_them_filled_in(
    crds: LocalCluster, namespace: str
) -> None:
    # The CRD carries pydantic's defaults, so the rules comparing parallelTrials with
    # maxTrials (or reading algorithm) see 1 and 10 instead of "no such key".
    obj = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelTraining",
        "metadata": {"name": "search-defaults"},
        "spec": {
            "model": {"architecture": "mlp", "task": "tabular-classification"},
            "data": {"train": {"uri": "builtin://breast-cancer"}},
            "output": {"uri": "pvc://models/t"},
            "tuning": {
                "objective": {"metric": "accuracy"},
                "space": {"learningRate": {"type": "loguniform", "min": 1e-4, "max": 1e-2}},
            },
        },
    }
    result = crds.kubectl(
        "apply", "--dry-run=server", "-o", "json", "-n", namespace, "-f", "-",
        input_text=json.dumps(obj), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tuning = json.loads(result.stdout)["spec"]["tuning"]
    assert (tuning["parallelTrials"], tuning["maxTrials"], tuning["algorithm"]) == (1, 10, "tpe")
    assert tuning["objective"]["goal"] == "maximize"


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_every_invalid_example_is_refused_by_the_api_server_as_by_validate(
    crds: LocalCluster, namespace: str, path: Path
) -> None:
    result = crds.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False
    )
    assert result.returncode != 0, f"{path.name} was accepted by the API server"
    expected = expected_message(path)
    assert expected in result.stderr, result.stderr
    # `modelplane validate` refuses it with the same words: one rule, two enforcers.
    local = [str(p) for c in check_file(path) for p in c.problems]
    assert any(expected in m for m in local), local


def test_kubectl_explain_shows_the_field_descriptions(crds: LocalCluster) -> None:
    text = crds.kubectl("explain", "modeltraining.spec.resources").stdout
    assert "gpusPerNode" in text
    assert "GPUs per pod" in text
    assert "Pods, GPUs and placement" in text


def test_kubectl_explain_shows_which_architectures_take_each_param(crds: LocalCluster) -> None:
    text = " ".join(crds.kubectl("explain", "modeltraining.spec.model.params").stdout.split())
    assert "heads <integer> transformer, bert and llama only: attention heads" in text
    assert "vocabSize <integer> transformer, bert and llama only" in text
    assert "dropout <number> transformer, bert and mlp only (not resnet)" in text
    assert "layers <integer> All but huggingface" in text
    assert "maxLength <integer> transformer, bert, llama and huggingface only" in text


def test_kubectl_get_shows_the_printer_columns(
    crds: LocalCluster, namespace: str, paused_operator: None
) -> None:
    # The status is written by hand here; a running operator would overwrite it.
    crds.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "text-training.yaml"))
    status = {
        "status": {
            "phase": "Running",
            "progress": {"percent": 42},
            "keyMetric": "f1=0.910",
            "restarts": 1,
        }
    }
    crds.kubectl(
        "patch",
        "mt",
        "sentiment",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        yaml.safe_dump(status),
    )
    lines = crds.kubectl("get", "mt", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "METRIC", "RESTARTS", "TRIALS", "AGE"]
    assert lines[1].split()[:5] == ["sentiment", "Running", "42", "f1=0.910", "1"]


def test_status_is_a_subresource_so_spec_writes_do_not_touch_it(
    crds: LocalCluster, namespace: str
) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "image-deployment.yaml"))
    crds.kubectl(
        "patch",
        "md",
        "digits",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        yaml.safe_dump({"status": {"phase": "Ready"}}),
    )
    obj = crds.get_json("md", "digits", "-n", namespace)
    assert obj.get("status", {}).get("phase") != "Ready"
