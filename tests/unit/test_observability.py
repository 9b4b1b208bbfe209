"""The operator's metrics and structured log lines."""

from __future__ import annotations

import json
import logging

from prometheus_client import generate_latest

from modelplane_operator import observability as obs


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("modelplane.test", logging.INFO, __file__, 1, message, None, None)


def test_a_json_line_logged_during_a_pass_names_the_resource() -> None:
    formatter = obs.JsonFormatter()
    with obs.reconciling("ModelTraining", "ml", "sentiment"):
        inside = json.loads(formatter.format(record("applied the Job")))
    outside = json.loads(formatter.format(record("watching")))
    assert inside["message"] == "applied the Job"
    assert (inside["kind"], inside["namespace"], inside["name"]) == (
        "ModelTraining",
        "ml",
        "sentiment",
    )
    assert inside["level"] == "INFO"
    assert "namespace" not in outside


def test_a_text_line_logged_during_a_pass_is_prefixed_with_the_resource() -> None:
    with obs.reconciling("ModelDeployment", "ml", "api"):
        line = obs.TextFormatter().format(record("pushed"))
    assert line.startswith("[ModelDeployment ml/api] ")
    assert line.endswith("pushed")


def sample(name: str, **labels: str) -> float:
    value = obs.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_passes_errors_phases_and_scale_decisions_are_counted() -> None:
    before = sample("modelplane_reconcile_duration_seconds_count", kind="ModelTraining")
    errors = sample("modelplane_reconcile_errors_total", kind="ModelTraining")
    with obs.reconciling("ModelTraining", "ml", "a"):
        obs.failed("ModelTraining")
    obs.scaled("up")
    obs.record_phase("ModelTraining", "ml", "a", "Running")
    obs.record_phase("ModelTraining", "ml", "b", "Running")
    obs.record_phase("ModelTraining", "ml", "c", "Succeeded")
    obs.record_phase("ModelTraining", "ml", "c", None)
    assert sample("modelplane_reconcile_duration_seconds_count", kind="ModelTraining") == (
        before + 1
    )
    assert sample("modelplane_reconcile_errors_total", kind="ModelTraining") == errors + 1
    assert sample("modelplane_scale_decisions_total", direction="up") >= 1
    assert sample("modelplane_resources", kind="ModelTraining", phase="Running") == 2
    assert sample("modelplane_resources", kind="ModelTraining", phase="Succeeded") == 0
    assert b"modelplane_resources{" in generate_latest(obs.REGISTRY)
