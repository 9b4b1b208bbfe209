"""Fixtures every suite may use: a real S3-compatible server (SeaweedFS) for the tests of
s3:// storage, started once per session on loopback and stopped at its end."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from modelplane_harness.s3 import S3Server, S3ServerError, build_weed
from tests.factories import ROOT


def _log(message: str) -> None:
    print(f"[s3] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """`weed server -s3` on 127.0.0.1 with the fixed test keys (`s3_server.env()`); built
    by e2e/cluster/build.sh when not cached. Each test makes its own bucket
    (`s3_server.fresh_bucket(prefix)`); the server and its data go at the session's end."""
    server = S3Server(build_weed(ROOT))
    try:
        server.start(log=_log)
    except S3ServerError as exc:
        server.cleanup()
        pytest.fail(f"the S3 server did not start: {exc}")
    try:
        yield server
    finally:
        server.cleanup()
