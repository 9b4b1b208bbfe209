"""Local mode on s3://: `modelplane run` reads its data from and publishes its artifact to
a real S3 server through the runtime code the pods run, with the caller's credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelplane.cli import app
from modelplane_harness.s3 import S3Server
from modelplane_runtime.contract import ServeArgs
from modelplane_runtime.serve.predictor import Predictor
from tests.factories import make_training

runner = CliRunner()


def test_local_mode_trains_from_and_into_a_bucket_and_the_artifact_serves(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path / "pvc"))
    monkeypatch.setenv("MODELPLANE_STORAGE_CACHE", str(tmp_path / "cache"))
    bucket = s3_server.fresh_bucket("local")
    client = s3_server.client()
    # Two features whose sum's sign is the label: separable, learnt in two epochs.
    points = [((i * 37) % 101 - 50, (i * 61) % 103 - 51) for i in range(400)]
    rows = ["x0,x1,label"] + [f"{a},{b},{'up' if a + b > 0 else 'down'}" for a, b in points]
    client.put_object(Bucket=bucket, Key="data/reviews.csv", Body="\n".join(rows).encode())
    resource = make_training(
        {
            "spec.data.train": {"uri": f"s3://{bucket}/data/reviews.csv"},
            "spec.hyperparameters": {"epochs": 20, "batchSize": 32, "learningRate": 0.01},
            "spec.output.uri": f"s3://{bucket}/models",
            "spec.storage": {"secretRef": {"name": "s3-credentials"}},
        },
        name="local-s3",
    )
    path = tmp_path / "local-s3.yaml"
    path.write_text(yaml.safe_dump(resource))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    uri = f"s3://{bucket}/models/local-s3"
    assert uri in result.output.replace("\n", ""), result.output
    assert "cannot read" in result.output  # the Secret: local mode says it uses the environment
    listed = client.list_objects_v2(Bucket=bucket, Prefix="models/local-s3/")
    keys = {o["Key"].removeprefix("models/local-s3/") for o in listed.get("Contents", [])}
    assert {"model.safetensors", "model_card.json", "result.json"} <= keys, keys
    card = json.loads(
        client.get_object(Bucket=bucket, Key="models/local-s3/model_card.json")["Body"].read()
    )
    assert card["metrics"]["accuracy"] > 0.9, card["metrics"]
    predictor = Predictor(ServeArgs(model_name="local-s3", model_uri=uri))
    assert predictor.loaded.card["digest"] == card["digest"]
