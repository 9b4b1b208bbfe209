"""Every condition reason the operator can write is documented where users look: the
API reference (the status' `conditions` field) and the operations troubleshooting table."""

from __future__ import annotations

import re

import pytest

from modelplane_operator import constants as c
from tests.factories import ROOT

REASONS = sorted({v for k, v in vars(c).items() if k.startswith("REASON_")})
# Reasons that only say all is well: the troubleshooting table has nothing to add.
HEALTHY = {"Succeeded", "ModelAccepted"}


def test_the_reasons_are_the_constants() -> None:
    # A guard against the set above being empty or missing the ones #17 added.
    assert {"InvalidSpec", "ResultMissing", "TrainingFailed", "MetricMissing"} <= set(REASONS)


@pytest.mark.parametrize("reason", REASONS)
def test_the_api_reference_names_the_reason(reason: str) -> None:
    text = (ROOT / "docs" / "api-reference.md").read_text()
    assert re.search(rf"\b{reason}\b", text), f"{reason} is not in docs/api-reference.md"


@pytest.mark.parametrize("reason", sorted(set(REASONS) - HEALTHY))
def test_the_troubleshooting_table_has_a_row_for_the_reason(reason: str) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text[text.index("## Troubleshooting by condition reason") :]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert any(f"`{reason}`" in row.split("|")[1] for row in rows), reason
