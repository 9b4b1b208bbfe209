"""s3:// in the API: which URIs are accepted, and spec.storage where it means something."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from modelplane_operator.api import common
from modelplane_operator.validation import check_file, check_object
from tests.factories import EXAMPLES, make_deployment, make_training

OWN_SECRET = {"spec.storage": {"secretRef": {"name": "s3-credentials"}}}

URIS = [
    ("s3://my-bucket/data/train.csv", True),
    ("s3://abc/x", True),
    ("s3://logs.example.com/2024/", True),
    ("s3://" + "b" * 63 + "/k", True),
    ("s3://my-bucket", True),
    ("s3://ab/x", False),
    ("s3://My-Bucket/x", False),
    ("s3://my_bucket/x", False),
    ("s3://-bucket/x", False),
    ("s3://bucket-/x", False),
    ("s3://" + "b" * 64 + "/k", False),
    ("s3://my-bucket/a key", False),
    ("s3:///key", False),
    ("gs://my-bucket/x", False),
]


@pytest.mark.parametrize(
    ("uri", "accepted"), URIS, ids=[f"{u[:24]} {'ok' if a else 'refused'}" for u, a in URIS]
)
def test_the_api_server_and_python_judge_a_uri_alike(uri: str, accepted: bool) -> None:
    # The CRD's CEL pattern (RE2) and the Python one are two spellings of one grammar.
    cel_pattern = re.fullmatch(r"self\.matches\('(.*)'\)", common._URI_CEL)
    assert cel_pattern is not None
    assert bool(re.match(cel_pattern.group(1), uri)) is accepted
    assert bool(common._URI_RE.match(uri)) is accepted


def problems(obj: dict[str, Any]) -> list[str]:
    return [str(p) for p in check_object(obj, "test").problems]


@pytest.mark.parametrize(
    "obj",
    [
        make_training({"spec.data.train.uri": "s3://data/train.csv", **OWN_SECRET}),
        make_training({"spec.output.uri": "s3://models/runs", **OWN_SECRET}),
        make_training({"spec.model.init": {"uri": "s3://models/pre/run-1"}, **OWN_SECRET}),
        make_training({"spec.data.validation": {"uri": "s3://data/v.csv"}, **OWN_SECRET}),
        make_training({"spec.output.uri": "s3://models/runs"}),
        make_deployment({"spec.model": {"uri": "s3://models/run-1"}, **OWN_SECRET}),
        make_deployment(OWN_SECRET),
        make_deployment({"spec.model": {"uri": "s3://models/run-1"}}),
    ],
    ids=[
        "a training reading its data from s3 with its own secret",
        "a training writing to s3 with its own secret",
        "a training starting from weights in s3 with its own secret",
        "a training validating on s3 data with its own secret",
        "a training writing to s3 with the cluster's default secret",
        "a deployment of an s3 model with its own secret",
        "a deployment from a training, whose artifact may be in s3, with a secret",
        "a deployment of an s3 model with the cluster's default secret",
    ],
)
def test_s3_uris_are_accepted_with_or_without_a_secret_of_their_own(obj: dict[str, Any]) -> None:
    assert problems(obj) == []


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            make_training(OWN_SECRET),
            "spec.storage: storage holds credentials for s3:// URIs, and no URI of this "
            "training is s3://",
        ),
        (
            make_deployment({"spec.model": {"uri": "pvc://models/run-1"}, **OWN_SECRET}),
            "spec.storage: storage holds credentials for an s3:// model",
        ),
        (
            make_training({"spec.output.uri": "s3://models/"}),
            "spec.output.uri: output.uri must name a key prefix after the bucket",
        ),
        (
            make_training({"spec.model.init": {"uri": "s3://models"}}),
            "spec.model.init.uri: model.init.uri must name a key prefix after the bucket",
        ),
        (
            make_deployment({"spec.model": {"uri": "s3://models"}}),
            "spec.model.uri: model.uri must name a key prefix after the bucket",
        ),
        (
            make_training({"spec.output.uri": "s3://m/r"}),
            "a bucket name is 3 to 63 lowercase letters",
        ),
        (
            make_training({"spec.output.uri": "s3://models/r", "spec.storage": {}}),
            "spec.storage.secretRef: Field required",
        ),
        (
            make_training(
                {"spec.output.uri": "s3://models/r", "spec.storage": {"secretRef": {"name": "A"}}}
            ),
            "spec.storage.secretRef.name: String should match pattern",
        ),
    ],
    ids=[
        "a secret on a training with no s3 uri would be ignored",
        "a secret on a deployment of a claim's model would be ignored",
        "an output at a bucket's root",
        "initial weights at a bucket's root",
        "a served model at a bucket's root",
        "a bucket name too short",
        "storage without a secret",
        "a secret name that is no object name",
    ],
)
def test_storage_that_cannot_mean_anything_is_refused_naming_the_field(
    obj: dict[str, Any], expected: str
) -> None:
    found = problems(obj)
    assert any(expected in p for p in found), found


S3_EXAMPLES = sorted((EXAMPLES / "s3").glob("*.yaml"))


@pytest.mark.parametrize("path", S3_EXAMPLES, ids=[p.name for p in S3_EXAMPLES])
def test_the_s3_examples_are_valid_and_name_their_secret(path: Path) -> None:
    (checked,) = check_file(path)
    assert checked.ok, [str(p) for p in checked.problems]
    assert checked.resource is not None
    storage = checked.resource.spec.storage
    assert storage is not None
    assert storage.secret_ref.name == "s3-credentials"


def test_there_are_s3_examples_of_both_kinds() -> None:
    assert {p.stem for p in S3_EXAMPLES} >= {"training", "deployment"}
