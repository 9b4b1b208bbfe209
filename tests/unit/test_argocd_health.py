"""The Argo CD health checks that docs/operations.md tells users to install, run in a
real Lua interpreter (lupa) against statuses the operator's own status derivation
produces, so the documented checks and the conditions cannot drift apart."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from lupa import LuaRuntime

from modelplane_operator.status.serving import derive_deployment_status
from modelplane_operator.status.training import derive_training_status
from tests.factories import ROOT
from tests.unit import test_serving_status as serving
from tests.unit import test_training_status as training

HEALTH = {"Succeeded": "Healthy", "Failed": "Degraded", "Suspended": "Suspended"}
SERVING_HEALTH = {"Ready": "Healthy", "Rejected": "Degraded", "Degraded": "Degraded"}


def documented_checks() -> dict[str, str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    block = next(b for b in blocks if "resource.customizations.health" in b)
    data: dict[str, str] = yaml.safe_load(block)["data"]
    return {key.rsplit("_", 1)[-1]: script for key, script in data.items()}


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj) {script} end")
    result = check(lua.table_from(obj, recursive=True))
    return str(result["status"]), str(result["message"])


def as_object(status: Any, generation: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": status.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


def test_both_kinds_have_a_documented_check() -> None:
    assert set(documented_checks()) == {"ModelTraining", "ModelDeployment"}


@pytest.mark.parametrize(
    ("t", "observed", "phase"),
    [case[1:4] for case in training.CASES],
    ids=[case[0] for case in training.CASES],
)
def test_a_training_is_healthy_degraded_or_progressing_as_its_phase_says(
    t: Any, observed: Any, phase: str
) -> None:
    status = derive_training_status(t, observed, now=training.NOW).status
    state, message = health(documented_checks()["ModelTraining"], as_object(status, 2))
    assert state == HEALTH.get(phase, "Progressing")
    assert message  # the Ready condition's message, or the waiting text


@pytest.mark.parametrize(
    ("observed", "phase"),
    [case[1:3] for case in serving.CASES],
    ids=[case[0] for case in serving.CASES],
)
def test_a_deployment_is_healthy_degraded_or_progressing_as_its_phase_says(
    observed: Any, phase: str
) -> None:
    status = derive_deployment_status(serving.deployment(), observed, now=serving.NOW).status
    state, _ = health(documented_checks()["ModelDeployment"], as_object(status, 3))
    assert state == SERVING_HEALTH.get(phase, "Progressing")


def test_a_spec_the_operator_has_not_seen_yet_is_progressing() -> None:
    observed = serving.CASES[-1][1]
    status = derive_deployment_status(serving.deployment(), observed, now=serving.NOW).status
    state, message = health(documented_checks()["ModelDeployment"], as_object(status, 4))
    assert (state, message) == ("Progressing", "Waiting for the operator")
    assert health(documented_checks()["ModelTraining"], {"metadata": {"generation": 1}})[0] == (
        "Progressing"
    )
