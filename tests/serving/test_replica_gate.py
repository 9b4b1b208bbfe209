"""The replica's own gate: a model is held to requireMetrics by its model card where it
is loaded, so a `model.uri` model (whose card the operator cannot read) is gated on a
cluster as local mode gates it, and the operator turns the refusal into Rejected."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelplane.serving import LocalServeError, start_server
from modelplane_harness.cluster import free_port
from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.conditions import find_condition
from modelplane_operator.serve_config import ResolvedModel
from modelplane_operator.status.serving import (
    ObservedDeployment,
    ServeState,
    derive_deployment_status,
)
from modelplane_runtime.contract import REQUIRE_METRICS_REFUSAL, ServeArgs
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.serve.predictor import Predictor
from tests.factories import make_deployment
from tests.serving.conftest import Artifact, application, serve_config

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def serve_args(model: Artifact, require: dict[str, float]) -> ServeArgs:
    return ServeArgs(
        model_name="m",
        model_uri=model.uri,
        expected_digest=model.digest,
        require_metrics=require,
    )


def test_a_card_that_meets_require_metrics_is_served(table_model: Artifact) -> None:
    f1 = table_model.metrics["f1"]
    predictor = Predictor(serve_args(table_model, {"f1": round(f1 - 0.01, 4)}))
    assert predictor.card["metrics"]["f1"] == f1


@pytest.mark.parametrize(
    ("require", "said"),
    [
        (lambda f1: {"f1": round(f1 + 0.01, 4)}, "f1 is {f1:.4g}, below the required"),
        (lambda f1: {"top5Accuracy": 0.5}, "the model reports no top5Accuracy"),
    ],
    ids=["a metric below its threshold", "a metric the card does not report"],
)
def test_a_card_below_require_metrics_is_refused_with_the_marker(
    table_model: Artifact, require: Any, said: str
) -> None:
    f1 = table_model.metrics["f1"]
    with pytest.raises(ConfigError) as refused:
        Predictor(serve_args(table_model, require(f1)))
    assert str(refused.value).startswith(REQUIRE_METRICS_REFUSAL)
    assert said.format(f1=f1) in str(refused.value)


def test_the_operator_rejects_a_uri_deployment_whose_replica_refused_the_card(
    table_model: Artifact, tmp_path: Path
) -> None:
    """Real Serve runs the replica, which refuses; Serve's words, as the head reports
    them, give the operator's verdict: Rejected, naming the metric and threshold."""
    threshold = round(table_model.metrics["f1"] + 0.01, 4)
    app = application("gated", table_model, {"requireMetrics": {"f1": threshold}})
    with pytest.raises(LocalServeError) as failed:
        start_server(serve_config(app, port=free_port()), workdir=tmp_path, num_cpus=1)
    # Local mode says it as a cluster does; Serve's own words are what a head reports.
    assert str(failed.value).startswith("spec.requireMetrics: the replica refused")
    said = failed.value.serve_message
    assert REQUIRE_METRICS_REFUSAL in said

    body = make_deployment(
        {"spec.model": {"uri": table_model.uri}, "spec.requireMetrics": {"f1": threshold}},
        name="gated",
    )
    body["metadata"].update({"namespace": "ml", "uid": "uid-g"})
    deployment = ModelDeployment.model_validate(body)
    model = ResolvedModel(uri=table_model.uri, digest="", metrics={})
    first = derive_deployment_status(
        deployment, ObservedDeployment(model=model, endpoint="http://gated"), now=NOW
    )
    assert first.actions is not None  # the operator itself does not gate a uri model
    head = {"metadata": {"annotations": {c.ANNOTATION_SPEC_HASH: first.actions.spec_hash}}}
    observed = ObservedDeployment(
        model=model,
        endpoint="http://gated",
        head=head,
        workers={"spec": {"replicas": 1}},
        token_exists=True,
        serve=ServeState(status="DEPLOY_FAILED", message=said),
    )
    decision = derive_deployment_status(deployment, observed, now=NOW)
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert (decision.status.phase, ready.reason) == ("Rejected", c.REASON_METRICS_BELOW_THRESHOLD)
    assert f"below the required {threshold}" in ready.message
