"""A real S3-compatible object store for tests: SeaweedFS's `weed server -s3`.

One process runs SeaweedFS's master, volume server, filer and S3 gateway, with its data in
one folder, on free ports of one address (loopback unless told otherwise), optionally in
another network namespace (a real node's, so that pods reach it at the node's address).
Requests must be signed (SigV4) with the fixed test keys; anything else is refused.

Every server that runs registers itself with its owner's pid, like clusters do, so one
whose test session was killed before its teardown is stopped by
`python -m modelplane_harness.cluster sweep`, which calls `sweep` here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# As the cluster's: a pid checked against its command line before it is signalled, and
# the boot id that tells whether recorded pids still mean anything.
from modelplane_harness.cluster import (
    _boot_id,
    _runs_in,
    cache_dir,
    free_port,
    orphaned_entries,
    repo_root,
)
from modelplane_harness.node_cleanup import is_alive

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

ACCESS_KEY = "modelplane-test-key"
SECRET_KEY = "modelplane-test-secret-key-0123456789"
REGION = "us-east-1"
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 1.0
"""How long `stop` waits after SIGTERM before SIGKILL. weed stops its volume server before
its filer, whose last metadata-log flush then waits 15 s for a volume that is gone; what
it would flush is not needed (acknowledged objects are already on disk)."""
VOLUME_SIZE_LIMIT_MB = 256
"""Small volumes, so a large object spans several and disk use grows with the data."""
MAX_VOLUMES = 200
"""Up to 50 GB; every bucket is a collection of its own, with volumes of its own."""


class S3ServerError(RuntimeError):
    """The S3 server could not be built, started or reached."""


def build_weed(root: Path | None = None) -> Path:
    """Build (or reuse from the cache) SeaweedFS's `weed`; return its path."""
    script = (root or repo_root()) / "e2e" / "cluster" / "build.sh"
    result = subprocess.run(
        ["bash", str(script), "seaweedfs"], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise S3ServerError(f"{script} seaweedfs failed with exit code {result.returncode}")
    dirs = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
    if "seaweedfs" not in dirs:
        raise S3ServerError(f"{script} seaweedfs printed no seaweedfs=<dir>: {result.stdout!r}")
    return Path(dirs["seaweedfs"]) / "seaweedfs"


@dataclass(frozen=True)
class Ports:
    master: int
    volume: int
    filer: int
    s3: int
    master_grpc: int
    volume_grpc: int
    filer_grpc: int
    s3_grpc: int

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(8)))

    def sockets(self) -> list[str]:
        """The Unix sockets weed makes beside its gRPC ports, in a folder it hard-codes;
        a killed weed leaves them behind."""
        grpc = {
            "master": self.master_grpc,
            "volume": self.volume_grpc,
            "filer": self.filer_grpc,
            "s3": self.s3_grpc,
        }
        return [f"/tmp/seaweedfs-{name}-grpc-{port}.sock" for name, port in grpc.items()]


@dataclass
class ServerState:
    """What `sweep` needs to stop a server whose owner is gone."""

    data_dir: str
    pid: int
    owner: int | None
    boot: str
    remove_data: bool
    """Whether the folder is the server's own (made by it), to delete with it."""
    sockets: list[str]
    """Ports.sockets, to delete once the server is gone."""


class S3Server:
    """`weed server -s3` on `ip`, data in `data_dir` (a new temp folder if None).

    Ports are chosen on the first `start` and kept, so `stop` then `start` is a restart of
    the same endpoint with the same data. `netns` (a name under /run/netns, or a path)
    runs the server in that network namespace; `ip` must then be one of its addresses.
    """

    def __init__(
        self,
        binary: Path,
        *,
        data_dir: Path | None = None,
        ip: str = "127.0.0.1",
        bind: str | None = None,
        netns: str | None = None,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.binary = binary
        self._remove_data = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="modelplane-s3-"))
        self.ip = ip
        self.bind = bind or ip
        """The address the servers listen on: `ip` unless told otherwise (0.0.0.0 in a
        real node's namespace, where the host reaches `ip`, the node's address, and pods
        reach the pods' gateway: they have no route to the node's address)."""
        self.netns = netns
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout = startup_timeout
        self.log_path = self.data_dir / "weed.log"
        self.owner: int | None = os.getpid()
        """The process the server lives and dies with; see `sweep`."""
        self.ports: Ports | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._shared_client: S3Client | None = None
        self._entry = _registry_entry(self.data_dir)

    # -- what tests use --------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """`http://ip:port` of the S3 API (valid once started, and across restarts)."""
        if self.ports is None:
            raise S3ServerError("the S3 server has no endpoint before its first start()")
        return f"http://{self.ip}:{self.ports.s3}"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def env(self, *, ip: str | None = None) -> dict[str, str]:
        """The AWS_* variables that point boto3 (and the AWS CLI) at this server; at `ip`
        instead of `self.ip` for clients elsewhere (pods: another address it binds)."""
        endpoint = self.endpoint if ip is None else self.endpoint.replace(self.ip, ip, 1)
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint,
        }

    def client(self) -> S3Client:
        """The server's own boto3 client (path-style addressing: no bucket DNS names),
        shared by every caller and closed by `cleanup`."""
        if self._shared_client is None:
            self._shared_client = self.new_client()
        return self._shared_client

    def new_client(self, *, attempts: int = 3, timeout: float = 60.0) -> S3Client:
        """A boto3 client of the caller's own, which the caller closes (`close()`).

        `attempts` counts tries per request (1: no retry); `timeout` is the read timeout."""
        client: S3Client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=min(timeout, 5.0),
                read_timeout=timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
            ),
        )
        return client

    def create_bucket(self, name: str) -> str:
        """Create bucket `name`; return the name."""
        self.client().create_bucket(Bucket=name)
        return name

    def fresh_bucket(self, prefix: str = "test") -> str:
        """Create a bucket no one has used: `prefix` made DNS-safe plus a random suffix."""
        slug = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:50].strip("-") or "b"
        return self.create_bucket(f"{slug}-{secrets.token_hex(4)}")

    # -- lifecycle -------------------------------------------------------------------

    def start(self, *, log: Callable[[str], None] = lambda _: None) -> float:
        """Start the server and wait until it answers a signed ListBuckets; return seconds.

        Raise S3ServerError, with the end of its log, if it exits or does not answer
        within `startup_timeout`."""
        if self.pid is not None:
            raise S3ServerError(f"the S3 server in {self.data_dir} already runs (pid {self.pid})")
        began = time.monotonic()
        if self.ports is None:
            self.ports = Ports.free()
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps(self._identities(), indent=2))
        config.chmod(0o600)
        log(f"starting the S3 server at {self.endpoint} (data in {self.data_dir})")
        with self.log_path.open("ab") as out:
            self._process = subprocess.Popen(
                self._argv(self.ports, config),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,  # no stray filer.toml or master.toml from elsewhere
                env={**os.environ, **_TUNING},
                start_new_session=True,  # its own process group, for stop and sweep
            )
        self._register(self._process.pid)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        elapsed = time.monotonic() - began
        log(f"S3 server ready in {elapsed:.1f} s")
        return elapsed

    def stop(self, *, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the server, SIGKILL it after `grace` s, wait until it is gone; the
        data stays."""
        process, self._process = self._process, None
        if process is not None and self.ports is not None:
            _terminate(process.pid, process, grace=grace)
            _remove(self.ports.sockets())
        self._entry.unlink(missing_ok=True)

    def restart(self, *, log: Callable[[str], None] = lambda _: None) -> float:
        """Stop and start again on the same ports with the same data; return seconds."""
        self.stop()
        return self.start(log=log)

    def cleanup(self) -> None:
        """Stop the server and delete its data folder (when the server made it)."""
        self.stop()
        if self._shared_client is not None:
            self._shared_client.close()
            self._shared_client = None
        if self._remove_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.cleanup()

    # -- helpers ---------------------------------------------------------------------

    def _identities(self) -> dict[str, object]:
        return {
            "identities": [
                {
                    "name": "modelplane-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def _argv(self, p: Ports, config: Path) -> list[str]:
        data = self.data_dir
        weed = [
            str(self.binary),
            "-logtostderr",  # one log, the file start() opens, instead of files in /tmp
            "server",
            f"-ip={self.ip}",
            f"-ip.bind={self.bind}",
            f"-dir={data / 'data'}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            "-master.telemetry=false",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-volume.max={MAX_VOLUMES}",
            "-volume.preStopSeconds=0",  # stop at once: nothing to drain in a test
            "-filer",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            f"-filer.localSocket={data / 'filer.sock'}",
            "-s3",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-s3.config={config}",
            f"-s3.localSocket={data / 's3.sock'}",
            "-s3.port.iceberg=0",  # on by default, on fixed ports two servers would share
            "-s3.port.lance=0",
        ]
        if self.netns is None:
            return weed
        path = self.netns if "/" in self.netns else f"/run/netns/{self.netns}"
        # nsenter execs weed, so the recorded pid is weed's own (as node.py's daemons).
        return ["nsenter", f"--net={path}", "--", *weed]

    def _wait_ready(self) -> None:
        """Wait until a signed write succeeds. The gateway answers ListBuckets seconds
        before it can take a write lock (its filer first waits to hear of peers); until
        then a PutObject blocks."""
        deadline = time.monotonic() + self.startup_timeout
        with contextlib.closing(self.new_client(attempts=1, timeout=2.0)) as probe:
            self._poll(deadline, "answer a signed ListBuckets", probe.list_buckets)
        remaining = max(deadline - time.monotonic(), 1.0)
        with contextlib.closing(self.new_client(attempts=1, timeout=remaining)) as writer:
            self._poll(deadline, "take a signed write", lambda: _probe_write(writer))

    def _poll(self, deadline: float, what: str, probe: Callable[[], object]) -> None:
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise S3ServerError(
                    f"the S3 server exited with {code}; last log lines:\n{self.log_tail()}"
                )
            try:
                probe()
                return
            except (BotoCoreError, ClientError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise S3ServerError(
            f"the S3 server at {self.endpoint} did not {what} within "
            f"{self.startup_timeout:.0f} s ({last}); last log lines:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log (all its starts append to one file)."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _register(self, pid: int) -> None:
        state = ServerState(
            data_dir=str(self.data_dir),
            pid=pid,
            owner=self.owner,
            boot=_boot_id(),
            remove_data=self._remove_data,
            sockets=self.ports.sockets() if self.ports else [],
        )
        self._entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._entry.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self._entry)


_PROBE_BUCKET = "modelplane-ready-probe"


def _probe_write(client: S3Client) -> None:
    """Write and delete an object in a bucket of its own, which goes too."""
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=_PROBE_BUCKET)
    client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"")
    client.delete_object(Bucket=_PROBE_BUCKET, Key="probe")
    client.delete_bucket(Bucket=_PROBE_BUCKET)


_TUNING = {
    # Grow one volume at a time: each bucket is a collection with volumes of its own,
    # and the default (7 per collection) runs out of slots after a few buckets.
    "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
    "WEED_MASTER_VOLUME_GROWTH_COPY_OTHER": "1",
    # A fresh master may hold the first allocations for volume servers to report; there
    # is only ours, in the same process.
    "WEED_MASTER_VOLUME_GROWTH_ALLOCATION_DEFERRAL": "0s",
}


def registry() -> Path:
    """Every running S3 server registers here until it stops (cluster.registry's twin)."""
    return cache_dir() / "running-s3"


def _registry_entry(data_dir: Path) -> Path:
    return registry() / f"{hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]}.json"


def sweep(*, log: Callable[[str], None] = lambda _: None) -> int:
    """Stop every registered S3 server whose owner process is gone; return how many."""
    swept = 0
    for entry, state, same_boot in orphaned_entries(
        registry(), lambda raw: ServerState(**raw), what="an S3 server", log=log
    ):
        if same_boot:
            log(f"stopping the S3 server in {state.data_dir}: its owner {state.owner} is gone")
            if _runs_in(state.pid, state.data_dir):
                _terminate(state.pid)
            _remove(state.sockets)
            swept += 1
        # After a reboot its process is gone and its pid may be anyone's: only files remain.
        if state.remove_data:
            shutil.rmtree(state.data_dir, ignore_errors=True)
        entry.unlink(missing_ok=True)
    return swept


def _terminate(
    pid: int, process: subprocess.Popen[bytes] | None = None, *, grace: float = STOP_GRACE_S
) -> None:
    """SIGTERM the process group, then SIGKILL it after `grace` s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if (process.poll() is not None) if process is not None else not is_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if process is not None:
        process.wait()
    else:
        deadline = time.monotonic() + grace
        while is_alive(pid) and time.monotonic() < deadline:  # a zombie counts as gone
            time.sleep(0.05)


def _remove(paths: list[str]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
