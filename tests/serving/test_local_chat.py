"""`modelplane run examples/llm-deployment.yaml --chat "..."`: local mode serves the
built-in SmolLM2 and streams a chat answer to the terminal, as the README shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelplane.cli import app
from modelplane_harness.cluster import free_port

EXAMPLE = Path(__file__).parents[2] / "examples" / "llm-deployment.yaml"


def test_chat_streams_an_answer_from_the_example_deployment(
    tmp_path: Path, storage_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MODELPLANE_STORAGE_CACHE", str(storage_cache))
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(EXAMPLE),
            "--chat",
            "What is the capital of France?",
            "--port",
            str(free_port()),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "(the OpenAI API)" in result.output
    assert "The capital of France is Paris." in result.output
