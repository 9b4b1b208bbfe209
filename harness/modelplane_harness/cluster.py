"""A real Kubernetes control plane as local processes, for tests and development.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run from binaries
that `e2e/cluster/build.sh` builds from Go modules. kwok fakes the nodes (two GPU nodes,
one CPU node) and the pod lifecycle: pods become Running and Ready, Job pods complete.
Everything listens on loopback on free ports, so several clusters can run side by side.

With `real_node=True` the cluster has one real node instead (node.py): containerd, the
kubelet, kube-proxy and CoreDNS in a network namespace of their own; the API server then
listens on the host end of that namespace's veth, which is where pods reach it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from modelplane_harness.node import RealNode, remove_network_from_state
from modelplane_harness.node import save_state as save_node_state
from modelplane_harness.node import stop_from_state as stop_node_from_state
from modelplane_harness.node_cleanup import is_alive
from modelplane_harness.pki import SERVICE_CIDR, issue_client_cert, make_pki

R = TypeVar("R", bound="Registered")

__all__ = ["SERVICE_CIDR", "make_pki"]

KUBERNETES_VERSION = "v1.36.3"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
EXIT_CODE_ANNOTATION = "kwok.modelplane.io/exit-code"
"""Set on a Running pod, it makes the pod end with this exit code (stages/pod-exit.yaml)."""
MESSAGE_ANNOTATION = "kwok.modelplane.io/message"
"""The termination message of a pod ended through EXIT_CODE_ANNOTATION."""
STARTUP_TIMEOUT_S = 90.0


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached."""


def cache_dir() -> Path:
    """Where built binaries, environments and dev clusters live (outside any clone)."""
    env = os.environ.get("MODELPLANE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modelplane"


def repo_root() -> Path:
    """The checkout this package was installed from (editable install) or $MODELPLANE_REPO."""
    env = os.environ.get("MODELPLANE_REPO")
    root = Path(env) if env else Path(__file__).resolve().parents[2]
    if not (root / "e2e" / "cluster" / "build.sh").is_file():
        raise ClusterError(
            f"{root} is not a modelplane checkout (no e2e/cluster/build.sh); "
            "set MODELPLANE_REPO to one"
        )
    return root


@dataclass(frozen=True)
class Binaries:
    """Paths of every binary the cluster runs."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    kwok_stages: Path
    helm: Path
    kubelet: Path
    kube_proxy: Path
    coredns: Path
    pause: Path
    """Kubernetes' pause.c, built static: the real node's pod sandbox image's one file."""


def build_binaries(root: Path | None = None) -> Binaries:
    """Build (or reuse from the cache) every binary; progress goes to stderr."""
    script = (root or repo_root()) / "e2e" / "cluster" / "build.sh"
    result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"{script} failed with exit code {result.returncode}; see above")
    dirs = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
    k8s, etcd, kwok, helm, coredns = (
        Path(dirs[t]) for t in ("kubernetes", "etcd", "kwok", "helm", "coredns")
    )
    return Binaries(
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kubectl=k8s / "kubectl",
        etcd=etcd / "etcd",
        kwok=kwok / "kwok",
        kwok_stages=kwok / "stages.yaml",
        helm=helm / "helm",
        kubelet=k8s / "kubelet",
        kube_proxy=k8s / "kube-proxy",
        coredns=coredns / "coredns",
        pause=k8s / "pause",
    )


@dataclass(frozen=True)
class FakeNode:
    """A node that kwok keeps Ready; its capacity is what the scheduler counts."""

    name: str
    cpu: str
    memory: str
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> dict[str, object]:
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110"}
        if self.gpus:
            capacity["nvidia.com/gpu"] = str(self.gpus)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **self.labels,
                },
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }


DEFAULT_NODES = (
    FakeNode(
        "gpu-node-0", cpu="64", memory="512Gi", gpus=8, labels={"nvidia.com/gpu.present": "true"}
    ),
    FakeNode(
        "gpu-node-1", cpu="64", memory="512Gi", gpus=8, labels={"nvidia.com/gpu.present": "true"}
    ),
    FakeNode("cpu-node-0", cpu="16", memory="64Gi"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Component:
    """One running process and how to tell that it is healthy."""

    name: str
    argv: list[str]
    health_url: str | None
    process: subprocess.Popen[bytes] | None = None


@dataclass
class ClusterState:
    """What `modelplane dev cluster down` needs to stop a cluster started earlier."""

    workdir: str
    kubeconfig: str
    pids: dict[str, int]
    node_state: str | None = None
    """The real node's state file (node.save_state), if the cluster has one."""
    owner: int | None = None
    """The process the cluster lives and dies with (a test session); None for a cluster
    meant to outlive its starter (`dev cluster up`)."""
    boot: str = ""
    """The kernel's boot id when it started: after a reboot its pids mean nothing."""


def registry() -> Path:
    """Every cluster that runs registers its state here until it is stopped, so one whose
    owner was killed before its teardown (SIGKILL, a CI timeout) can still be swept."""
    return cache_dir() / "running"


def _registry_entry(workdir: Path | str) -> Path:
    return registry() / f"{hashlib.sha256(str(workdir).encode()).hexdigest()[:16]}.json"


class LocalCluster:
    """Start, use and stop the local control plane in `workdir`.

    `nodes` are kwok's fake nodes: DEFAULT_NODES unless given, none with a real node.
    `real_node=True` adds one real node (`self.node`, a RealNode) that runs pods.
    """

    def __init__(
        self,
        workdir: Path,
        binaries: Binaries,
        *,
        nodes: Sequence[FakeNode] | None = None,
        real_node: bool = False,
        audit: bool = False,
        controller_qps: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.controller_qps = controller_qps
        """The controller manager's and scheduler's API rate (`--kube-api-qps`, burst
        twice it) and Job syncs in flight; None: Kubernetes' defaults (20 and 50 QPS, 5
        syncs). At the default a
        burst of 1,000 Jobs waits on the Job controller's own client for minutes (1,000
        pod creates and twice as many Job status writes at 20 a second), whatever the
        operator does: the operator benchmark raises it, as production clusters do."""
        self.binaries = binaries
        if nodes is None:
            nodes = () if real_node else DEFAULT_NODES
        self.nodes = tuple(nodes)
        self.node = RealNode(workdir / "node", binaries) if real_node else None
        """The real node, started and stopped with the cluster."""
        self.address = "127.0.0.1"
        """Where the API server listens: loopback, or the host end of the node's veth."""
        self.pki = workdir / "pki"
        self.logs = workdir / "logs"
        self.kubeconfig = workdir / "kubeconfig"
        self.token = secrets.token_hex(16)
        self.components: list[Component] = []
        self.apiserver_url = ""
        self.audit_log = workdir / "logs" / "audit.jsonl" if audit else None
        """With audit on, every request's metadata (who, verb, resource) is logged here."""
        self.owner: int | None = os.getpid()
        """See ClusterState.owner; `dev cluster up` sets None before starting."""
        self._entry = _registry_entry(workdir)

    # -- lifecycle -------------------------------------------------------------------

    def start(self, *, log: Callable[[str], None] = lambda _: None) -> float:
        """Start every component and wait until the cluster is usable; return seconds."""
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        (self.workdir / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        try:
            if self.node is not None:
                log("creating the real node's network namespace")
                self.address = self.node.create_network(api_port=api_port).host_ip
                # Registered from the first thing there is to tear down, and again as each
                # daemon starts, so a killed owner leaves nothing sweep cannot find.
                self.node.on_launch = self._register
                self._register()
            make_pki(self.pki, extra_ips=[self.address] if self.node else [])
            self.apiserver_url = f"https://{self.address}:{api_port}"
            self._write_kubeconfig()
            self._launch(self._etcd(etcd_port, peer_port), log)
            self._launch(self._apiserver(etcd_port, api_port), log)
            self._launch(self._controller_manager(free_port()), log)
            self._launch(self._scheduler(free_port()), log)
            if self.nodes:
                self._launch(self._kwok(free_port()), log)
                log("creating fake nodes")
                self._create_nodes()
                self._wait_nodes_ready()
            if self.node is not None:
                ready = self.node.start(
                    server=self.apiserver_url,
                    pki=self.pki,
                    admin_kubeconfig=self.kubeconfig,
                    log=log,
                )
                log(f"real node {self.node.name} Ready {ready:.1f} s after the kubelet started")
                self._register()
            self._wait_default_service_account("default")
        except BaseException:
            self.stop()
            raise
        elapsed = time.monotonic() - began
        log(f"cluster ready in {elapsed:.1f} s")
        return elapsed

    def stop(self) -> None:
        """Stop every component, newest first; logs stay in workdir/logs.

        The real node's daemons go first and its network last: the API server, which
        listens on the node's veth, stops at once only when no watch of the node's is
        open and its own address still exists.
        """
        try:
            if self.node is not None:
                self.node.stop(keep_network=True)
        finally:
            for component in reversed(self.components):
                if component.process is not None:
                    _terminate(component.process.pid, component.process)
            self.components.clear()
            if self.node is not None:
                self.node.remove_network()
            self._entry.unlink(missing_ok=True)

    def _register(self) -> None:
        self._entry.parent.mkdir(parents=True, exist_ok=True)
        save_state(self.state(), self._entry)

    def state(self) -> ClusterState:
        node_state = None
        if self.node is not None and self.node.state() is not None:
            node_state = str(self.workdir / "node-state.json")
            save_node_state(self.node, Path(node_state))
        return ClusterState(
            workdir=str(self.workdir),
            kubeconfig=str(self.kubeconfig),
            pids={c.name: c.process.pid for c in self.components if c.process},
            node_state=node_state,
            owner=self.owner,
            boot=_boot_id(),
        )

    # -- use -------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input_text: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise with its stderr when `check` fails."""
        return self._run(self.binaries.kubectl, args, input_text=input_text, check=check)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster; raise with its stderr when `check` fails."""
        return self._run(self.binaries.helm, args, check=check, timeout=300, env=self.helm_env())

    def helm_env(self) -> dict[str, str]:
        """The environment for helm: its cache and config inside the cluster's workdir."""
        helm = self.workdir / "helm"
        return {
            **os.environ,
            "HELM_CACHE_HOME": str(helm / "cache"),
            "HELM_CONFIG_HOME": str(helm / "config"),
            "HELM_DATA_HOME": str(helm / "data"),
        }

    def _run(
        self,
        binary: Path,
        args: tuple[str, ...],
        *,
        input_text: str | None = None,
        check: bool,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(binary), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=env,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"{binary.name} {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def get_json(self, *args: str) -> dict[str, Any]:
        """`kubectl get ARGS -o json`, parsed."""
        result: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return result

    # -- components ------------------------------------------------------------------

    def _etcd(self, port: int, peer_port: int) -> Component:
        client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        return Component(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            f"{client}/health",
        )

    def _apiserver(self, etcd_port: int, port: int) -> Component:
        return Component(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={port}",
                f"--tls-cert-file={self.pki / 'apiserver.crt'}",
                f"--tls-private-key-file={self.pki / 'apiserver.key'}",
                f"--client-ca-file={self.pki / 'ca.crt'}",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC" if self.node else "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={self.pki / 'sa.pub'}",
                f"--service-account-signing-key-file={self.pki / 'sa.key'}",
                "--allow-privileged=true",
                *self._node_flags(),
                *self._audit_flags(),
            ],
            f"{self.apiserver_url}/readyz",
        )

    def _node_flags(self) -> list[str]:
        if self.node is None:
            # Nothing runs pods, so the `kubernetes` Service needs no endpoint.
            return ["--endpoint-reconciler-type=none"]
        # The `kubernetes` Service's endpoint is the advertised address (the lease
        # reconciler's default); the API server reaches the kubelet by its InternalIP
        # with a client certificate the kubelet trusts.
        cert, key = issue_client_cert(
            self.pki, "apiserver-kubelet-client", user="kube-apiserver", groups=["system:masters"]
        )
        return [
            f"--kubelet-client-certificate={cert}",
            f"--kubelet-client-key={key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _audit_flags(self) -> list[str]:
        if self.audit_log is None:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [{"level": "Metadata"}],
                }
            )
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=batch",
        ]

    def _controller_manager(self, port: int) -> Component:
        kc = str(self.kubeconfig)
        return Component(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'kcm'}",
                "--leader-elect=false",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--cluster-name=modelplane-test",
                *(
                    [
                        f"--kube-api-qps={self.controller_qps}",
                        f"--kube-api-burst={2 * self.controller_qps}",
                        "--concurrent-job-syncs=50",
                    ]
                    if self.controller_qps
                    else []
                ),
            ],
            f"https://127.0.0.1:{port}/healthz",
        )

    def _scheduler(self, port: int) -> Component:
        kc = str(self.kubeconfig)
        return Component(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'scheduler'}",
                "--leader-elect=false",
                *(
                    [
                        f"--kube-api-qps={self.controller_qps}",
                        f"--kube-api-burst={2 * self.controller_qps}",
                    ]
                    if self.controller_qps
                    else []
                ),
            ],
            f"https://127.0.0.1:{port}/healthz",
        )

    def _kwok(self, port: int) -> Component:
        return Component(
            "kwok",
            [
                str(self.binaries.kwok),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={self.binaries.kwok_stages}",
                f"--config={repo_root() / 'e2e' / 'cluster' / 'stages' / 'pod-exit.yaml'}",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.1/16",
                "--node-ip=10.0.0.1",
                f"--server-address=127.0.0.1:{port}",
            ],
            f"http://127.0.0.1:{port}/healthz",
        )

    # -- helpers ---------------------------------------------------------------------

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "modelplane-test",
                    "cluster": {
                        "server": self.apiserver_url,
                        "certificate-authority": str(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "modelplane-test",
                    "context": {
                        "cluster": "modelplane-test",
                        "user": "admin",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "modelplane-test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _launch(self, component: Component, log: Callable[[str], None]) -> None:
        log(f"starting {component.name}")
        # The child keeps its own copy of the descriptor; the parent's closes here.
        with (self.logs / f"{component.name}.log").open("wb") as out:
            component.process = subprocess.Popen(
                component.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI for `dev cluster up`
            )
        self.components.append(component)
        self._register()
        if component.health_url:
            self._wait_healthy(component)

    def _wait_healthy(self, component: Component) -> None:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # components other than the API server self-sign
        headers = {"Authorization": f"Bearer {self.token}"}
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last = ""
        if component.health_url is None or component.process is None:
            return
        while time.monotonic() < deadline:
            if component.process.poll() is not None:
                raise ClusterError(
                    f"{component.name} exited with {component.process.returncode}; "
                    f"last log lines:\n{self._tail(component.name)}"
                )
            try:
                request = urllib.request.Request(component.health_url, headers=headers)
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ClusterError(
            f"{component.name} not healthy after {STARTUP_TIMEOUT_S:.0f} s ({last}); "
            f"last log lines:\n{self._tail(component.name)}"
        )

    def _tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def _create_nodes(self) -> None:
        documents = [yaml.safe_dump(node.manifest()) for node in self.nodes]
        self.kubectl("create", "-f", "-", input_text="---\n".join(documents))

    def _wait_nodes_ready(self) -> None:
        names = [n.name for n in self.nodes]
        self.kubectl(
            "wait", "--for=condition=Ready", "--timeout=60s", *(f"node/{n}" for n in names)
        )

    def _wait_default_service_account(self, namespace: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (
                self.kubectl(
                    "get", "serviceaccount", "default", "-n", namespace, check=False
                ).returncode
                == 0
            ):
                return
            time.sleep(0.2)
        raise ClusterError(f"no default service account in {namespace} after 60 s")


def _terminate(pid: int, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the process group, then SIGKILL what is left after 10 s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not is_alive(pid):  # a zombie counts as gone: its parent, not us, reaps it
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if process is not None:
        process.wait()


def stop_from_state(state_file: Path) -> None:
    """Stop a cluster that `dev cluster up` left running, from its state file."""
    state = ClusterState(**json.loads(state_file.read_text()))
    node_state = Path(state.node_state) if state.node_state else None
    if node_state is not None and node_state.exists():
        stop_node_from_state(node_state, network=False)
    for _, pid in reversed(list(state.pids.items())):
        if _runs_in(pid, state.workdir):
            _terminate(pid)
    if node_state is not None and node_state.exists():
        remove_network_from_state(node_state)
    state_file.unlink(missing_ok=True)
    _registry_entry(state.workdir).unlink(missing_ok=True)


def _runs_in(pid: int, workdir: str) -> bool:
    """Whether `pid` is still one of this cluster's processes (every component's command
    line names the cluster's folder), not a process that got its number since."""
    try:
        return workdir in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def save_state(state: ClusterState, state_file: Path) -> None:
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(state_file)


class Registered(Protocol):
    """What every registry entry records: the boot it ran in and the pid it dies with."""

    boot: str
    owner: int | None


def orphaned_entries(
    directory: Path,
    parse: Callable[[dict[str, Any]], R],
    *,
    what: str,
    log: Callable[[str], None],
) -> Iterator[tuple[Path, R, bool]]:
    """(entry, state, same_boot) of each entry in the registry `directory` whose owner is
    gone. `same_boot` False: the machine restarted since it registered, so its processes,
    mounts and namespaces are gone and its pids may now be anyone's: only files remain.
    An entry that does not parse as `what`'s state is logged and left alone."""
    for entry in sorted(directory.glob("*.json")) if directory.exists() else ():
        try:
            state = parse(json.loads(entry.read_text()))
        except (ValueError, TypeError) as exc:
            log(f"{entry}: not {what}'s state ({exc}); left for a person to read")
            continue
        if state.boot != _boot_id():
            yield entry, state, False
        elif state.owner is not None and not is_alive(state.owner):
            yield entry, state, True


def sweep(*, log: Callable[[str], None] = lambda _: None) -> int:
    """Stop every registered cluster whose owner process is gone; return how many.

    A test session stops its clusters itself; this is the safety net for one that was
    killed first (scripts/test.sh runs it when it ends, whatever ended it)."""
    swept = 0
    for entry, state, same_boot in orphaned_entries(
        registry(), lambda raw: ClusterState(**raw), what="a cluster", log=log
    ):
        if not same_boot:
            entry.unlink(missing_ok=True)
            continue
        log(f"stopping the cluster in {state.workdir}: its owner {state.owner} is gone")
        try:
            stop_from_state(entry)
        except Exception as exc:  # one cluster's failure must not stop the sweep
            log(f"could not stop the cluster in {state.workdir}: {exc}; {entry} kept")
            continue
        swept += 1
    return swept


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def eprint(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # python -m modelplane_harness.cluster sweep
    if sys.argv[1:] != ["sweep"]:
        sys.exit("usage: python -m modelplane_harness.cluster sweep")
    eprint(f"swept {sweep(log=eprint)} cluster(s) left by killed owners")
    # The tests' S3 servers keep a registry of their own (s3.py, which imports this module).
    from modelplane_harness import s3

    eprint(f"swept {s3.sweep(log=eprint)} S3 server(s) left by killed owners")
