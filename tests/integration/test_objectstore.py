"""s3:// storage against a real S3-compatible server (SeaweedFS): transfers, the artifact
a reader trusts, checkpoints and resume from the bucket, failures and the serving cache."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from modelplane_harness.s3 import S3Server
from modelplane_runtime import objectstore
from modelplane_runtime.__main__ import main
from modelplane_runtime.contract import ExitCode, OptimConfig, RunConfig, ServeArgs
from modelplane_runtime.data.readers import read_source
from modelplane_runtime.errors import ConfigError, StorageError, exit_code_for
from modelplane_runtime.objectstore import S3Uri
from modelplane_runtime.serve import model_cache
from modelplane_runtime.serve.predictor import Predictor
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.runtime.conftest import make_config


@pytest.fixture
def s3(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server's credentials and a cache of this test's own in the environment."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MODELPLANE_STORAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELPLANE_S3_MAX_ATTEMPTS", "2")
    return s3_server


def s3_config(bucket: str, prefix: str, tmp_path: Path, **overrides: Any) -> RunConfig:
    return make_config(tmp_path, output_uri=f"s3://{bucket}/{prefix}", **overrides)


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    """One bucket for the module, each test under a prefix of its own: SeaweedFS takes
    seconds to grow the volumes of a new bucket on its first write."""
    return s3_server.fresh_bucket("runtime")


def keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture(scope="module")
def published(s3_server: S3Server, bucket: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A trained artifact published to s3://<bucket>/published/run; returns its URI."""
    tmp_path = tmp_path_factory.mktemp("published")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env().items():
            patch.setenv(key, value)
        patch.setenv("MODELPLANE_STORAGE_CACHE", str(tmp_path / "cache"))
        config = s3_config(
            bucket, "published", tmp_path, optim=OptimConfig(epochs=1, batch_size=32)
        )
        result = Trainer(config, env=DistEnv()).fit()
    assert result.artifact_uri == f"s3://{bucket}/published/run"
    return result.artifact_uri


def copy_prefix(server: S3Server, source: str, target: str, *, skip: str = "") -> None:
    client = server.client()
    src, dst = objectstore.parse(source, field="f"), objectstore.parse(target, field="f")
    for key in keys(server, src.bucket, src.folder):
        name = key[len(src.folder) :]
        if name != skip and not name.startswith("checkpoints/"):
            client.copy_object(
                Bucket=dst.bucket, Key=dst.folder + name, CopySource=f"{src.bucket}/{key}"
            )


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://Models/x", "'Models' in 's3://Models/x' is not a valid bucket name"),
        ("s3://ab/x", "'ab' in 's3://ab/x' is not a valid bucket name"),
        ("s3://10.0.0.1/x", "not an IP address"),
        ("s3://a..b/x", "is not a valid bucket name"),
        ("gs://bucket/x", "is not an s3://<bucket>/<key> URI"),
    ],
    ids=["upper case", "too short", "an IP address", "two dots", "another scheme"],
)
def test_a_bad_uri_is_refused_naming_the_field(uri: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"^output\.uri: ") as error:
        objectstore.parse(uri, field="output.uri")
    assert expected in str(error.value)


def test_a_tree_round_trips_with_the_named_files_last_in_order(
    s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    files = {
        "model_card.json": b"{}",
        "result.json": b"[]",
        "model.safetensors": bytes(range(256)) * 4096,
        "sub/tokenizer.json": b"tok",
    }
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    (source / ".model.safetensors.tmp").write_bytes(b"half")
    order: list[str] = []
    real_upload = objectstore.upload_file

    def recording(path: Path, uri: S3Uri, *, field: str) -> None:
        real_upload(path, uri, field=field)
        order.append(uri.key)

    monkeypatch.setattr(objectstore, "upload_file", recording)
    prefix = S3Uri(bucket, "a/run")
    objectstore.upload_tree(
        source, prefix, field="output.uri", last=("model_card.json", "result.json")
    )
    assert order[-2:] == ["a/run/model_card.json", "a/run/result.json"]
    assert sorted(order) == sorted(f"a/run/{name}" for name in files)  # no hidden temp file

    target = tmp_path / "target"
    objectstore.download_prefix(S3Uri(bucket, "a/run/"), target, field="model.uri")
    assert {
        p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()
    } == files


def test_a_missing_object_or_bucket_is_a_config_error_naming_it(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"data.train.uri: cannot download s3://{bucket}/nope.csv")
    ):
        objectstore.download_file(S3Uri(bucket, "nope.csv"), tmp_path / "x", field="data.train.uri")
    absent = S3Uri(f"{bucket}-absent", "missing/")
    with pytest.raises(ConfigError, match=re.escape(f"model.uri: cannot list {absent}")) as error:
        objectstore.list_objects(absent, field="model.uri")
    assert "the bucket does not exist" in str(error.value)


def test_a_reader_refuses_a_prefix_without_a_card(s3: S3Server, published: str) -> None:
    uri = published.replace("/published/", "/no-card/")
    copy_prefix(s3, published, uri, skip="model_card.json")
    with pytest.raises(
        ConfigError, match=re.escape(f"{uri} is not a modelplane artifact (no model_card.json)")
    ):
        model_cache.model_dir(uri, expected_digest=None)


def test_a_reader_refuses_corrupted_weights_naming_the_object_and_keeps_no_copy(
    s3: S3Server, published: str, tmp_path: Path
) -> None:
    uri = published.replace("/published/", "/corrupt/")
    copy_prefix(s3, published, uri)
    weights = objectstore.parse(f"{uri}/model.safetensors", field="f")
    body = s3.client().get_object(Bucket=weights.bucket, Key=weights.key)["Body"].read()
    s3.client().put_object(Bucket=weights.bucket, Key=weights.key, Body=body[:-1] + b"\0")
    with pytest.raises(ConfigError) as error:
        model_cache.model_dir(uri, expected_digest=None)
    message = str(error.value)
    assert message.startswith(f"{uri}/model.safetensors: weights digest sha256:")
    assert "differs from the model card's" in message
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir() if p.is_dir()] == []


def test_serving_downloads_a_model_once_per_pod_and_a_new_uri_to_its_own_folder(
    s3: S3Server, published: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads: list[str] = []
    real_download = objectstore.download_prefix

    def counting(prefix: S3Uri, directory: Path, *, field: str) -> list[Path]:
        downloads.append(str(prefix))
        return real_download(prefix, directory, field=field)

    monkeypatch.setattr(objectstore, "download_prefix", counting)
    card = objectstore.parse(f"{published}/model_card.json", field="f")
    body = s3.client().get_object(Bucket=card.bucket, Key=card.key)["Body"].read()
    digest = json.loads(body)["digest"]
    args = ServeArgs(model_name="m", model_uri=published, expected_digest=digest)
    first = Predictor(args)
    second = model_cache.model_dir(published, expected_digest=digest)
    assert downloads == [published]
    assert first.digest == digest
    key = hashlib.sha256(published.encode()).hexdigest()
    assert second == tmp_path / "cache" / "models" / key

    with pytest.raises(
        ConfigError,
        match=re.escape(f"{published}/model.safetensors: weights digest ")
        + ".* differs from the expected digest",
    ):
        model_cache.model_dir(published, expected_digest="sha256:" + "0" * 64)
    assert downloads == [published, published]  # a different digest is checked afresh

    rolled = published.replace("/published/", "/rolled/")
    copy_prefix(s3, published, rolled)
    assert (
        model_cache.model_dir(rolled, expected_digest=digest).name
        == hashlib.sha256(rolled.encode()).hexdigest()
    )
    assert downloads[-1] == rolled


def test_a_data_file_and_init_weights_are_read_from_the_bucket(
    s3: S3Server, bucket: str, published: str, tmp_path: Path
) -> None:
    rows = "a,b,label\n1,2,x\n3,4,y\n"
    s3.client().put_object(Bucket=bucket, Key="data/table.csv", Body=rows.encode())
    raw = read_source(
        f"s3://{bucket}/data/table.csv",
        kind="tabular",
        text_column="text",
        label_column="label",
        field="data.train",
    )
    assert raw.labels == ("x", "y")
    assert raw.array is not None
    assert raw.array.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    missing = f"s3://{bucket}/data/none.csv"
    with pytest.raises(ConfigError, match=re.escape(f"data.train.uri: {missing} not found")):
        read_source(
            missing, kind="tabular", text_column="t", label_column="label", field="data.train"
        )

    config = s3_config(bucket, "init", tmp_path, init_uri=published)
    trainer = Trainer(config, env=DistEnv())
    weights = objectstore.parse(f"{published}/model.safetensors", field="f")
    body = s3.client().get_object(Bucket=weights.bucket, Key=weights.key)["Body"].read()
    saved = safetensors.torch.load(body)
    own = trainer.model.state_dict()
    assert all(torch.equal(own[name], tensor) for name, tensor in saved.items())


def test_checkpoints_go_to_the_bucket_and_a_new_node_resumes_from_there(
    s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = s3_config(
        bucket,
        "resume",
        tmp_path,
        optim=OptimConfig(epochs=2, batch_size=32, learning_rate=1e-3),
        checkpoint_every_steps=5,
        checkpoint_keep=2,
    )

    def crash(step: int) -> None:
        if step == 12:
            raise RuntimeError("the node died")

    with pytest.raises(RuntimeError, match="the node died"):
        Trainer(config, env=DistEnv(), on_step=crash).fit()
    assert keys(s3, bucket, "resume/") == [
        "resume/run/checkpoints/step-000000005.pt",
        "resume/run/checkpoints/step-000000010.pt",
    ]

    monkeypatch.setenv("MODELPLANE_STORAGE_CACHE", str(tmp_path / "another-node"))
    trainer = Trainer(config, env=DistEnv())
    result = trainer.fit()
    assert trainer.resumed_from == 10
    assert result.artifact_uri == f"s3://{bucket}/resume/run"
    assert keys(s3, bucket, "resume/run/") == [
        "resume/run/checkpoints/step-000000020.pt",
        "resume/run/checkpoints/step-000000025.pt",
        "resume/run/curves.png",
        "resume/run/model.safetensors",
        "resume/run/model_card.json",
        "resume/run/result.json",
    ]
    weights = (
        s3.client().get_object(Bucket=bucket, Key="resume/run/model.safetensors")["Body"].read()
    )
    assert result.digest == f"sha256:{hashlib.sha256(weights).hexdigest()}"


def test_an_outage_fails_uploads_and_the_run_for_a_retry_naming_the_object(
    s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One outage (stopping and starting the server costs seconds): the checkpoint upload
    of a running training fails, so do a plain upload and a fresh training process; once
    the server is back the same upload succeeds."""
    config = s3_config(bucket, "outage", tmp_path, checkpoint_every_steps=5)
    config_path = tmp_path / "run.json"
    config_path.write_text(config.to_json())
    message = tmp_path / "termination-log"
    monkeypatch.setenv("MODELPLANE_TERMINATION_LOG", str(message))
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    target = S3Uri(bucket, "outage/model.safetensors")

    def outage(step: int) -> None:
        if step == 4:
            s3.stop()

    try:
        with pytest.raises(StorageError) as in_training:
            Trainer(config, env=DistEnv(), on_step=outage).fit()
        with pytest.raises(StorageError) as plain:
            objectstore.upload_file(path, target, field="output.uri")
        code = main(["train", "--config", str(config_path)])
    finally:
        s3.start()

    checkpoint = f"s3://{bucket}/outage/run/checkpoints/step-000000005.pt"
    assert str(in_training.value).startswith(f"could not upload {checkpoint} to {s3.endpoint}")
    assert str(plain.value) == (
        f"could not upload s3://{bucket}/outage/model.safetensors to {s3.endpoint} after 2 "
        "attempts: connection refused"
    )
    assert exit_code_for(plain.value) == ExitCode.INFRASTRUCTURE
    assert code == ExitCode.INFRASTRUCTURE
    assert message.read_text() == (
        f"storage failure: could not read s3://{bucket}/outage/run/model_card.json at "
        f"{s3.endpoint} after 2 attempts: connection refused"
    )
    objectstore.upload_file(path, target, field="output.uri")
    assert keys(s3, bucket, "outage/") == ["outage/model.safetensors"]
