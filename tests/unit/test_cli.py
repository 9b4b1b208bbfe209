"""The modelplane command: exit codes and output a user (and CI) relies on."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from modelplane.cli import app
from tests.factories import EXAMPLES, INVALID_EXAMPLES

runner = CliRunner()


def test_validate_accepts_the_examples() -> None:
    result = runner.invoke(app, ["validate", *map(str, sorted(EXAMPLES.glob("*.yaml")))])
    assert result.exit_code == 0, result.output
    assert "invalid" not in result.output


def test_validate_fails_on_an_invalid_file_and_names_the_field_and_rule() -> None:
    path = INVALID_EXAMPLES / "deployment-replicas-min-above-max.yaml"
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "spec.replicas.min: min must be less than or equal to max" in result.output
    assert "[rule: self.min <= self.max]" in result.output


def test_crds_check_fails_on_a_stale_folder_and_passes_after_writing(tmp_path: Path) -> None:
    assert runner.invoke(app, ["crds", "--dir", str(tmp_path), "--check"]).exit_code == 1
    assert runner.invoke(app, ["crds", "--dir", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["crds", "--dir", str(tmp_path), "--check"]).exit_code == 0
