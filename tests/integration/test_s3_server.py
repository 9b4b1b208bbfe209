"""The tests' S3 server (modelplane_harness.s3) is a real one: signed multipart uploads
round-trip, unsigned or wrongly signed requests are refused, data outlives a restart,
and no server outlives its owner."""

from __future__ import annotations

import contextlib
import io
import random
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from modelplane_harness import s3
from modelplane_harness.node_cleanup import is_alive
from modelplane_harness.s3 import REGION, S3Server, build_weed
from tests.factories import ROOT

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def weed() -> Path:
    return build_weed(ROOT)


@pytest.fixture
def own_server(weed: Path) -> Iterator[S3Server]:
    """A server of the test's own, for tests that stop it or watch it go."""
    server = S3Server(weed)
    try:
        yield server
    finally:
        server.cleanup()


def test_multipart_upload_round_trips_with_signed_requests(s3_server: S3Server) -> None:
    bucket = s3_server.fresh_bucket("multipart")
    data = random.Random(18).randbytes(20 * MiB)
    client = s3_server.client()
    parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)

    client.upload_fileobj(io.BytesIO(data), bucket, "weights.bin", Config=parts)

    head = client.head_object(Bucket=bucket, Key="weights.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-4"), "an S3 multipart ETag names its 4 parts"
    assert client.get_object(Bucket=bucket, Key="weights.bin")["Body"].read() == data


def test_the_env_variables_alone_point_boto3_at_the_server(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.fresh_bucket("env")
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)

    with contextlib.closing(boto3.client("s3")) as client:  # as the runtime: all from AWS_*
        client.put_object(Bucket=bucket, Key="a.txt", Body=b"hello")

        assert client.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"hello"


def test_unsigned_requests_are_refused(s3_server: S3Server) -> None:
    bucket = s3_server.fresh_bucket("unsigned")
    s3_server.client().put_object(Bucket=bucket, Key="secret.txt", Body=b"x")

    for url in (f"{s3_server.endpoint}/", f"{s3_server.endpoint}/{bucket}/secret.txt"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        refused.value.close()
        assert refused.value.code == 403, url


@pytest.mark.parametrize(
    ("access_key", "secret_key", "error"),
    [
        (s3.ACCESS_KEY, "not-the-secret", "SignatureDoesNotMatch"),
        ("no-such-key", s3.SECRET_KEY, "InvalidAccessKeyId"),
    ],
    ids=["a wrong secret key is refused", "an unknown access key is refused"],
)
def test_wrongly_signed_requests_are_refused(
    s3_server: S3Server, access_key: str, secret_key: str, error: str
) -> None:
    bucket = s3_server.fresh_bucket("badkey")
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1}),
    )

    with contextlib.closing(client), pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="a.txt", Body=b"x")

    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refused.value.response["Error"]["Code"] == error


def test_a_restarted_server_keeps_its_endpoint_and_objects(own_server: S3Server) -> None:
    own_server.start()
    endpoint = own_server.endpoint
    bucket = own_server.fresh_bucket("restart")
    own_server.client().put_object(Bucket=bucket, Key="kept.txt", Body=b"still here")

    own_server.stop()
    with (
        contextlib.closing(own_server.new_client(attempts=1, timeout=2)) as client,
        pytest.raises(EndpointConnectionError),
    ):
        client.list_buckets()

    own_server.start()
    assert own_server.endpoint == endpoint
    body = own_server.client().get_object(Bucket=bucket, Key="kept.txt")["Body"].read()
    assert body == b"still here"


def test_a_server_leaves_nothing_behind_after_its_block(weed: Path) -> None:
    with S3Server(weed) as server:
        pid = server.pid
        assert pid is not None
        assert is_alive(pid)
        data_dir = server.data_dir
        assert _registered(data_dir)

    assert not is_alive(pid)
    assert not data_dir.exists()
    assert not _registered(data_dir)
    assert server.ports is not None
    assert not [s for s in server.ports.sockets() if Path(s).exists()]


def test_sweep_stops_a_server_whose_owner_was_killed(own_server: S3Server) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    own_server.owner = gone.pid  # as if its test session had been killed
    own_server.start()
    pid = own_server.pid
    assert pid is not None
    assert _registered(own_server.data_dir)

    assert s3.sweep() >= 1

    assert not is_alive(pid)
    assert not own_server.data_dir.exists()
    assert not _registered(own_server.data_dir)
    assert own_server.ports is not None
    assert not [s for s in own_server.ports.sockets() if Path(s).exists()]


def _registered(data_dir: Path) -> bool:
    return any(str(data_dir) in entry.read_text() for entry in s3.registry().glob("*.json"))
