"""Bad configuration or data ends with a clear message and the config-error exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelplane_runtime.__main__ import main
from modelplane_runtime.contract import DataConfig, ExitCode, OptimConfig
from tests.runtime.conftest import make_config


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return f"file://{path}"


def run(tmp_path: Path, config_json: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    config_path = tmp_path / "run.json"
    config_path.write_text(config_json)
    message = tmp_path / "termination-log"
    monkeypatch.setenv("MODELPLANE_TERMINATION_LOG", str(message))
    code = main(["train", "--config", str(config_path)])
    return code, message.read_text() if message.exists() else ""


def reviews(n: int, labels: tuple[str, ...] = ("pos", "neg")) -> list[dict[str, Any]]:
    return [{"text": f"review number {i}", "label": labels[i % len(labels)]} for i in range(n)]


def test_an_unknown_architecture_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = json.loads(make_config(tmp_path).to_json())
    config["architecture"] = "lstm"
    code, message = run(tmp_path, json.dumps(config), monkeypatch)
    assert code == ExitCode.CONFIG_ERROR
    assert "architecture" in message


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda tmp: DataConfig(train_uri=f"file://{tmp}/missing.jsonl"), "not found"),
        (lambda tmp: DataConfig(train_uri="gs://bucket/data.csv"), "not a supported URI"),
        (lambda tmp: DataConfig(train_uri="builtin://imagenet"), "unknown built-in"),
        (lambda tmp: DataConfig(train_uri="builtin://digits"), "needs text data"),
        (
            lambda tmp: DataConfig(
                train_uri=write_jsonl(tmp / "t.jsonl", reviews(40)), label_column="sentiment"
            ),
            "no label column 'sentiment'",
        ),
        (
            lambda tmp: DataConfig(
                train_uri=write_jsonl(tmp / "t.jsonl", reviews(40)), text_column="body"
            ),
            "no text column 'body'",
        ),
        (
            lambda tmp: DataConfig(
                train_uri=write_jsonl(tmp / "t.jsonl", reviews(40)),
                validation_uri=write_jsonl(tmp / "v.jsonl", reviews(10, ("pos", "meh"))),
            ),
            "labels ['meh'] do not occur in the training data",
        ),
        (
            lambda tmp: DataConfig(train_uri=write_jsonl(tmp / "t.jsonl", reviews(40, ("x",)))),
            "at least 2 labels",
        ),
    ],
    ids=[
        "a missing file",
        "an unknown URI scheme",
        "an unknown built-in data set",
        "image data for a text task",
        "a missing label column",
        "a missing text column",
        "validation labels the training data lacks",
        "a single class",
    ],
)
def test_bad_data_is_a_config_error_that_says_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: Any, expected: str
) -> None:
    config = make_config(
        tmp_path,
        architecture="transformer",
        task="text-classification",
        params={"layers": 1, "hidden": 16, "heads": 2, "max_length": 16, "vocab_size": 100},
        data=setup(tmp_path),
        optim=OptimConfig(epochs=1, batch_size=8),
    )
    code, message = run(tmp_path, config.to_json(), monkeypatch)
    assert code == ExitCode.CONFIG_ERROR, message
    assert expected in message


def test_a_diverging_loss_stops_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(
        tmp_path,
        optim=OptimConfig(
            epochs=5, batch_size=32, learning_rate=1e6, optimizer="sgd", max_grad_norm=1000.0
        ),
    )
    code, message = run(tmp_path, config.to_json(), monkeypatch)
    assert code == ExitCode.CONFIG_ERROR
    assert "the training loss became" in message
    assert "learningRate" in message


def test_a_non_numeric_table_column_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "t.csv"
    table.write_text("a,b,label\n1,2,x\n3,oops,y\n")
    config = make_config(tmp_path, data=DataConfig(train_uri=f"file://{table}"))
    code, message = run(tmp_path, config.to_json(), monkeypatch)
    assert code == ExitCode.CONFIG_ERROR
    assert "must be numeric" in message


def test_fp16_without_a_gpu_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path, optim=OptimConfig(precision="fp16"))
    code, message = run(tmp_path, config.to_json(), monkeypatch)
    assert code == ExitCode.CONFIG_ERROR
    assert "fp16 needs a GPU" in message


def test_npz_tables_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "t.npz", x=x, label=y)
    config = make_config(
        tmp_path,
        data=DataConfig(train_uri=f"file://{tmp_path}/t.npz"),
        optim=OptimConfig(epochs=5, batch_size=16, learning_rate=1e-2),
    )
    code, message = run(tmp_path, config.to_json(), monkeypatch)
    assert code == ExitCode.OK, message
    assert json.loads(message)["metrics"]["accuracy"] > 0.8
