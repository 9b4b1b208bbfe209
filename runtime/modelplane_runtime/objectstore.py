"""s3:// objects: parse a URI, move files and folders, and say clearly why a call failed.

The client is configured from the environment the operator gives every pod (the keys of
`spec.storage.secretRef`, see contract.S3_SECRET_KEYS_*): AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, optionally AWS_SESSION_TOKEN, AWS_REGION (default us-east-1) and
AWS_ENDPOINT_URL (an S3-compatible store). Path-style addressing, so a store at an IP
address or without wildcard DNS works. botocore's "standard" retry mode retries throttling,
5xx answers and lost connections with jittered exponential backoff, up to
MODELPLANE_S3_MAX_ATTEMPTS attempts (default 5); request checksums are on, so a corrupted
upload is refused by the store. Files move through boto3's transfer manager (parallel
multipart parts above MULTIPART_BYTES); a download lands under a temporary name and is
renamed into place, so a reader never sees half a file.

Which failures are permanent (ConfigError, exit code 42: retrying the pod cannot help) and
which are worth a retry (StorageError, exit code 1):
- 404 NoSuchBucket: the bucket in the URI does not exist: ConfigError naming the field.
- 404 NoSuchKey on a read: the object the spec names is not there: ConfigError. Callers
  that probe for an object that may not exist yet (a checkpoint, a finished result) ask
  `exists` or `list_objects`, which answer without raising.
- 403 (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch), reads and writes: the
  Secret's credentials are wrong or lack the permission: ConfigError naming the field and
  the Secret keys. A store does not answer 403 for being busy.
- No credentials in the environment: ConfigError naming the Secret keys to set.
- Everything else (connection refused or reset, timeouts, 5xx after the retries, a
  checksum mismatch): StorageError naming the object, the endpoint and the cause
  ("could not upload s3://b/run/model.safetensors to http://10.0.0.5:8333 after 5
  attempts: connection refused"). The training process exits with
  ExitCode.INFRASTRUCTURE and the operator retries from the newest checkpoint.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from modelplane_runtime.contract import S3_SECRET_KEYS_REQUIRED
from modelplane_runtime.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

log = logging.getLogger(__name__)

ENV_MAX_ATTEMPTS = "MODELPLANE_S3_MAX_ATTEMPTS"
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_REGION = "us-east-1"
AWS_ENDPOINT = "https://s3.amazonaws.com"
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
MULTIPART_BYTES = 16 * 1024 * 1024
MAX_CONCURRENCY = 8

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}


@dataclass(frozen=True)
class S3Uri:
    """`s3://<bucket>/<key>`; as a prefix, `key` is a folder ('' is the bucket's root)."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def folder(self) -> str:
        """The key as a prefix that matches only what is inside it: `run/` not `run`."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    def child(self, name: str) -> S3Uri:
        return S3Uri(self.bucket, self.folder + name.lstrip("/"))


def parse(uri: str, *, field: str) -> S3Uri:
    """Split `s3://bucket/key`, refusing a bucket name S3 would refuse. `field` names the
    spec field in errors."""
    scheme, sep, rest = uri.partition("://")
    if scheme != "s3" or not sep:
        raise ConfigError(f"{field}: {uri!r} is not an s3://<bucket>/<key> URI")
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket or _is_ip(bucket):
        raise ConfigError(
            f"{field}: {bucket!r} in {uri!r} is not a valid bucket name: 3-63 characters, "
            "lower-case letters, digits, '.' and '-', starting and ending with a letter or "
            "digit, not an IP address"
        )
    return S3Uri(bucket, key)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def max_attempts() -> int:
    raw = os.environ.get(ENV_MAX_ATTEMPTS, "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_MAX_ATTEMPTS
    except ValueError:
        raise ConfigError(f"{ENV_MAX_ATTEMPTS}={raw!r} is not a whole number") from None


@dataclass(frozen=True)
class _Settings:
    """What a client is made from; read from the environment on every call, so a test (or
    local mode) that points the process at another store gets a client for that store."""

    endpoint: str | None
    region: str
    attempts: int
    access_key: str | None
    secret_key: str | None
    token: str | None


def client() -> S3Client:
    """A client for the environment's store, shared by the threads of this process."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _client(
        _Settings(
            endpoint=os.environ.get("AWS_ENDPOINT_URL") or None,
            region=region or DEFAULT_REGION,
            attempts=max_attempts(),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            token=os.environ.get("AWS_SESSION_TOKEN"),
        )
    )


@functools.lru_cache(maxsize=8)
def _client(settings: _Settings) -> S3Client:
    config = Config(
        region_name=settings.region,
        retries={"mode": "standard", "total_max_attempts": settings.attempts},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_supported",
        response_checksum_validation="when_supported",
        max_pool_connections=MAX_CONCURRENCY * 2,
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        aws_session_token=settings.token,
        region_name=settings.region,
    )
    return session.client("s3", endpoint_url=settings.endpoint, config=config)


def _transfer_config() -> TransferConfig:
    return TransferConfig(
        multipart_threshold=MULTIPART_BYTES,
        multipart_chunksize=MULTIPART_BYTES,
        max_concurrency=MAX_CONCURRENCY,
        use_threads=True,
    )


def endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or AWS_ENDPOINT


# -- failures ---------------------------------------------------------------------------


def _client_error(error: BaseException) -> ClientError | None:
    """The ClientError behind `error`: boto3's transfer layer re-raises it as
    S3UploadFailedError or RetriesExceededError with the original as context."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ClientError):
            return seen
        last = getattr(seen, "last_exception", None)
        seen = last if isinstance(last, BaseException) else (seen.__cause__ or seen.__context__)
    return None


def _cause(error: BaseException) -> str:
    """A short reason: the store's error code and message, or the network's error."""
    found = _client_error(error)
    if found is not None:
        info = found.response.get("Error", {})
        code = info.get("Code", "?")
        message = info.get("Message") or ""
        return f"{code} {message}".strip()
    root: BaseException = error
    while True:
        inner = getattr(root, "last_exception", None) or root.__cause__ or root.__context__
        if not isinstance(inner, BaseException):
            break
        root = inner
    text = str(root) or type(root).__name__
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno_text:
        return errno_text.group(1).strip().lower()
    return text


def fail(action: str, uri: S3Uri | str, error: BaseException, *, field: str) -> NoReturn:
    """Raise the ConfigError or StorageError that `error` (from boto3) means."""
    if isinstance(error, NoCredentialsError):
        keys = " and ".join(S3_SECRET_KEYS_REQUIRED)
        raise ConfigError(
            f"{field}: no credentials to {action} {uri}: set {keys} (the keys of the Secret "
            "spec.storage.secretRef names)"
        ) from error
    found = _client_error(error)
    code = str(found.response.get("Error", {}).get("Code", "")) if found is not None else ""
    if code in _MISSING:
        what = (
            "bucket does not exist"
            if code == "NoSuchBucket"
            else "object does not exist"
            if not str(uri).endswith("/")
            else "prefix does not exist"
        )
        raise ConfigError(f"{field}: cannot {action} {uri}: the {what} at {endpoint()}") from error
    if code in _DENIED:
        raise ConfigError(
            f"{field}: access denied to {action} {uri} at {endpoint()} ({_cause(error)}): "
            f"check the {' and '.join(S3_SECRET_KEYS_REQUIRED)} of spec.storage.secretRef "
            "and the bucket's policy"
        ) from error
    where = {"upload": "to", "download": "from"}.get(action, "at")
    raise StorageError(
        f"could not {action} {uri} {where} {endpoint()} after {max_attempts()} attempts: "
        f"{_cause(error)}"
    ) from error


_FAILURES = (BotoCoreError, ClientError, boto3.exceptions.Boto3Error)


# -- objects ----------------------------------------------------------------------------


def upload_file(path: Path, uri: S3Uri, *, field: str) -> None:
    """Put one file. One PUT, or one multipart upload that becomes visible only when it
    completes: a killed upload never leaves a partial object under `uri`."""
    try:
        client().upload_file(str(path), uri.bucket, uri.key, Config=_transfer_config())
    except _FAILURES as exc:
        fail("upload", uri, exc, field=field)


def download_file(uri: S3Uri, path: Path, *, field: str) -> Path:
    """Get one object to `path` (replaced whole, never seen half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    try:
        client().download_file(uri.bucket, uri.key, temporary, Config=_transfer_config())
        os.replace(temporary, path)
    except _FAILURES as exc:
        fail("download", uri, exc, field=field)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def exists(uri: S3Uri, *, field: str) -> bool:
    """Whether the object is there (a missing bucket is still a ConfigError)."""
    try:
        client().head_object(Bucket=uri.bucket, Key=uri.key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        fail("read", uri, exc, field=field)
    except _FAILURES as exc:
        fail("read", uri, exc, field=field)
    return True


def delete_object(uri: S3Uri, *, field: str) -> None:
    """Delete one object; deleting one that is not there succeeds (S3's own rule)."""
    try:
        client().delete_object(Bucket=uri.bucket, Key=uri.key)
    except _FAILURES as exc:
        fail("delete", uri, exc, field=field)


def _pages(prefix: S3Uri) -> Iterator[tuple[str, int]]:
    paginator = client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.folder):
        for item in page.get("Contents", []):
            yield item["Key"], item.get("Size", 0)


def list_objects(prefix: S3Uri, *, field: str) -> list[S3Uri]:
    """Every object under the folder `prefix`, by key."""
    try:
        found = sorted(key for key, _ in _pages(prefix))
    except _FAILURES as exc:
        fail("list", f"{S3Uri(prefix.bucket, prefix.folder)}", exc, field=field)
    return [S3Uri(prefix.bucket, key) for key in found]


# -- folders ----------------------------------------------------------------------------


def upload_tree(
    directory: Path,
    prefix: S3Uri,
    *,
    field: str,
    last: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[S3Uri]:
    """Upload every file under `directory` to the folder `prefix`; the relative paths in
    `last` go after all others, in that order (a model card written last vouches for
    what came before it). Top-level names in `exclude`, and hidden temporary files, are
    left out. Returns the objects written, in order."""
    files = sorted(
        path
        for path in directory.rglob("*")
        if path.is_file()
        and not path.name.startswith(".")
        and path.relative_to(directory).parts[0] not in exclude
    )
    ordered = [p for p in files if p.relative_to(directory).as_posix() not in last]
    ordered += [directory / name for name in last if (directory / name).is_file()]
    written = []
    for path in ordered:
        target = prefix.child(path.relative_to(directory).as_posix())
        upload_file(path, target, field=field)
        written.append(target)
    return written


def download_prefix(prefix: S3Uri, directory: Path, *, field: str) -> list[Path]:
    """Download every object under the folder `prefix` into `directory`, keeping the
    relative paths. An empty prefix is a ConfigError: there is nothing to read."""
    objects = list_objects(prefix, field=field)
    if not objects:
        raise ConfigError(f"{field}: nothing under {S3Uri(prefix.bucket, prefix.folder)}")
    paths = []
    for uri in objects:
        relative = uri.key[len(prefix.folder) :]
        if not relative or relative.endswith("/"):
            continue  # a "folder" marker some tools create
        paths.append(download_file(uri, directory / relative, field=field))
    return paths
