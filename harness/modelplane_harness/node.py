"""A real node for the local cluster: containerd, runc, the kubelet, kube-proxy and CoreDNS.

The node lives in its own network namespace (netns.py) and a private mount namespace held
by one small "holder" process; every daemon enters both with nsenter, so each recorded
pid is the daemon's own. Per-node folders are bind-mounted over the host paths the
daemons hard-code. containerd's root (images and snapshots) is shared between runs under
the cache, so a multi-GB image is imported once; a lock lets one node use it at a time.

Teardown (`stop`) leaves nothing: no process, mount, network namespace, veth, cgroup, or
changed sysctl.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import yaml

from modelplane_harness import node_config, oci
from modelplane_harness.netns import NodeNetwork
from modelplane_harness.node_cleanup import (
    NodeState,
    cgroup_hierarchies,
    teardown,
    teardown_network,
)
from modelplane_harness.pki import cert_kubeconfig, issue_client_cert

if TYPE_CHECKING:
    from modelplane_harness.cluster import Binaries

HOST_COMMANDS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "nsenter")
KERNEL_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
"""Host-wide settings the kubelet changes; restored on stop."""
READY_TIMEOUT_S = 60.0


class NodeError(RuntimeError):
    """The real node could not start, or its shared containerd root is in use."""


@dataclass
class _Daemon:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class RealNode:
    """One real node. Call `create_network` before the API server starts (it binds the
    host side of the node's veth), `start` once it serves, and `stop` at the end."""

    run_dir: Path
    binaries: Binaries
    name: str = "real-node"
    volumes: int = 8
    volume_size: str = "20Gi"
    containerd_root: Path = field(default_factory=lambda: _cache() / "node" / "containerd")
    network: NodeNetwork | None = None
    _daemons: list[_Daemon] = field(default_factory=list)
    on_launch: Callable[[], None] | None = None
    """Called after each daemon starts (the cluster re-registers its state for sweep)."""
    _lock: IO[bytes] | None = None
    _state: NodeState | None = None
    log: Callable[[str], None] = lambda _: None
    """Progress of start and stop (LocalCluster passes its own log to `start`)."""

    # -- what tests use --------------------------------------------------------------

    @property
    def netns(self) -> str:
        """The network namespace's name (`ip netns exec` works, but see exec_in_netns)."""
        return self._network().netns

    @property
    def containerd_address(self) -> Path:
        """containerd's socket, for `ctr --address` or a CRI client."""
        return self.layout.containerd_socket

    def ctr(
        self, *args: str, stdin: IO[bytes] | None = None, timeout: float = 1800
    ) -> subprocess.CompletedProcess[bytes]:
        """`ctr -n k8s.io ARGS` against this node's containerd, e.g. `ctr("images",
        "import", "-", stdin=archive)`; raise with its stderr if it fails."""
        result = subprocess.run(
            ["ctr", f"--address={self.containerd_address}", "-n", "k8s.io", *args],
            stdin=stdin,
            capture_output=True,
            check=False,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {result.stderr.decode().strip()}")
        return result

    def exec_in_netns(
        self, argv: Sequence[str], *, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the node's network namespace (ClusterIPs route there)."""
        return self._network().exec(argv, timeout=timeout)

    @property
    def layout(self) -> node_config.NodeLayout:
        network = self._network()
        return node_config.NodeLayout(
            name=self.name,
            run=self.run_dir,
            containerd_root=self.containerd_root,
            node_ip=network.node_ip,
            pod_cidr=network.pod_cidr,
            pod_gateway=network.pod_gateway,
            cgroup_root=f"/{network.netns}",
        )

    # -- lifecycle -------------------------------------------------------------------

    def create_network(self, *, api_port: int) -> NodeNetwork:
        """The namespace and veth; the API server then listens on `network.host_ip`."""
        if os.geteuid() != 0:
            raise NodeError(
                "a real node needs root (network namespaces, mounts, cgroups); "
                "run as root or use the kwok cluster (real_node=False)"
            )
        missing = [c for c in HOST_COMMANDS if shutil.which(c) is None]
        if missing:
            raise NodeError(
                f"a real node needs {', '.join(missing)} on this machine; "
                "run scripts/host-packages.sh"
            )
        self._take_lock()
        self.network = NodeNetwork.create(api_port=api_port)
        # From here on there is something to tear down: the state says what.
        self._state = self._initial_state()
        return self.network

    def start(
        self,
        *,
        server: str,
        pki: Path,
        admin_kubeconfig: Path,
        log: Callable[[str], None] = lambda _: None,
    ) -> float:
        """Start the node's daemons against the API server at `server`; wait until the
        node is Ready and DNS answers. Returns seconds from the first daemon to Ready."""
        began = time.monotonic()
        self.log = log
        _raise_open_files()
        layout = self.layout
        network = self._network()
        if self._state is None:
            self._state = self._initial_state()
        try:
            self._write_files(layout, server=server, pki=pki)
            _make_cgroup_root(layout.cgroup_root)
            self._start_holder()
            log("starting containerd")
            self._launch(
                "containerd", ["containerd", f"--config={layout.config / 'containerd.toml'}"]
            )
            _wait(self._ctr_ok, "containerd's socket", self._log_tail("containerd"))
            self._clear_old_containers()
            self._import_pause()
            log("starting kubelet")
            began = time.monotonic()
            self._launch("kubelet", self._kubelet_argv(layout))
            self._launch(
                "kube-proxy",
                [str(self.binaries.kube_proxy), f"--config={layout.config / 'kube-proxy.yaml'}"],
            )
            self._apply(admin_kubeconfig, layout)
            self._launch(
                "coredns",
                [str(self.binaries.coredns), "-conf", str(layout.config / "Corefile")],
            )
            _wait(
                lambda: self._node_ready(admin_kubeconfig),
                f"node {self.name} Ready",
                self._log_tail("kubelet"),
            )
            _wait(
                lambda: _http_ok(f"http://{network.node_ip}:8181/ready"),
                "CoreDNS ready",
                self._log_tail("coredns"),
            )
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - began

    def stop(self, *, keep_network: bool = False) -> None:
        """Tear the node down completely; safe to call twice or after a failed start.

        `keep_network` leaves the namespace and veth for `remove_network` (LocalCluster
        stops its API server, which listens on the veth, in between).
        """
        if self._state is None and self.network is not None:
            self._state = self._initial_state()
        if self._state is not None:
            self._state.pids = {d.name: d.process.pid for d in self._daemons}
            teardown(self._state, network=not keep_network, log=self.log)
        for daemon in self._daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.process.wait(timeout=5)
        self._daemons.clear()
        self._state = None
        if not keep_network:
            self.remove_network()

    def _initial_state(self) -> NodeState:
        """The state before any daemon runs, with the host's sysctls as they are now."""
        layout = self.layout
        network = self._network()
        return NodeState(
            run=str(self.run_dir),
            netns=network.netns,
            host_veth=network.host_veth,
            cgroup_root=layout.cgroup_root,
            containerd_socket=str(layout.containerd_socket),
            sysctls=_read_sysctls(),
            containerd_root=str(self.containerd_root),
        )

    def remove_network(self) -> None:
        """Remove the namespace and veth (after `stop(keep_network=True)`)."""
        if self.network is not None:
            self.network.delete()
            self.network = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def state(self) -> NodeState | None:
        """What `teardown` needs to stop this node from another process."""
        if self._state is not None:
            self._state.pids = {d.name: d.process.pid for d in self._daemons}
        return self._state

    def pids(self) -> dict[str, int]:
        """Each daemon's own pid (the holder keeps the node's namespaces)."""
        return {d.name: d.process.pid for d in self._daemons}

    # -- steps -----------------------------------------------------------------------

    def _network(self) -> NodeNetwork:
        if self.network is None:
            raise NodeError("the node has no network yet: call create_network first")
        return self.network

    def _take_lock(self) -> None:
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        lock_path = self.containerd_root.parent / "containerd.lock"
        handle = lock_path.open("a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().decode(errors="replace").strip()
            handle.close()
            raise NodeError(
                f"another real node uses {self.containerd_root} ({holder}); stop it first "
                "(`modelplane dev cluster down`), only one real node runs at a time"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}, run dir {self.run_dir}\n".encode())
        handle.flush()
        self._lock = handle

    def _write_files(self, layout: node_config.NodeLayout, *, server: str, pki: Path) -> None:
        config = layout.config
        (config / "cni").mkdir(parents=True, exist_ok=True)
        (config / "certs.d" / "_default").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (config / "containerd.toml").write_text(node_config.containerd_config(layout))
        (config / "certs.d" / "_default" / "hosts.toml").write_text(node_config.registry_hosts())
        (config / "cni" / "10-modelplane.conflist").write_text(node_config.cni_conflist(layout))
        (config / "resolv.conf").write_text(f"nameserver {node_config.CLUSTER_DNS_IP}\n")
        (config / "holder.sh").write_text(node_config.holder_script())
        ca = pki / "ca.crt"
        kubeconfigs = {}
        for who, user, groups in (
            ("kubelet", f"system:node:{self.name}", ["system:nodes"]),
            ("kube-proxy", "system:kube-proxy", []),
            ("coredns", node_config.COREDNS_USER, []),
        ):
            cert, key = issue_client_cert(pki, f"node-{who}", user=user, groups=groups)
            kubeconfigs[who] = cert_kubeconfig(
                config / f"{who}.kubeconfig", server=server, ca=ca, cert=cert, key=key
            )
        (config / "kubelet.yaml").write_text(
            yaml.safe_dump(node_config.kubelet_config(layout, ca=ca))
        )
        (config / "kube-proxy.yaml").write_text(
            yaml.safe_dump(
                node_config.kube_proxy_config(layout, kubeconfig=kubeconfigs["kube-proxy"])
            )
        )
        (config / "Corefile").write_text(
            node_config.corefile(layout, kubeconfig=kubeconfigs["coredns"])
        )
        for index in range(self.volumes):
            volume = layout.volumes / f"pv-{index}"
            volume.mkdir(parents=True, exist_ok=True)
            volume.chmod(0o777)  # pods run as uid 1000

    def _start_holder(self) -> None:
        network = self._network()
        ready = self.run_dir / "holder.ready"
        ready.unlink(missing_ok=True)
        if self._lock is None:
            raise NodeError("create_network takes the containerd root's lock first")
        argv = [
            "nsenter", f"--net={network.netns_path}", "--",
            "unshare", "--mount", "--propagation", "slave", "--",
            "sh", str(self.layout.config / "holder.sh"), str(self.run_dir),
        ]  # fmt: skip
        # The holder inherits the lock, so the shared containerd root stays locked for
        # exactly as long as the node's namespaces exist, whoever started it.
        process = self._popen("holder", argv, pass_fds=(self._lock.fileno(),))
        _wait(
            lambda: ready.exists() or process.poll() is not None,
            "the node's mount namespace",
            self._log_tail("holder"),
        )
        if process.poll() is not None:
            raise NodeError(f"the node's holder exited:\n{self._log_tail('holder')()}")
        if self._state is not None:
            self._state.mount_ns = os.readlink(f"/proc/{process.pid}/ns/mnt")

    def _launch(self, name: str, argv: list[str]) -> None:
        holder = self._daemons[0].process.pid
        self._popen(name, ["nsenter", f"--target={holder}", "--mount", "--net", "--", *argv])

    def _popen(
        self, name: str, argv: list[str], pass_fds: Sequence[int] = ()
    ) -> subprocess.Popen[bytes]:
        with (self.run_dir / "logs" / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        self._daemons.append(_Daemon(name, process))
        if self.on_launch is not None:
            self.on_launch()
        return process

    def _kubelet_argv(self, layout: node_config.NodeLayout) -> list[str]:
        return [
            str(self.binaries.kubelet),
            f"--config={layout.config / 'kubelet.yaml'}",
            f"--kubeconfig={layout.config / 'kubelet.kubeconfig'}",
            "--root-dir=/var/lib/kubelet",
            "--cert-dir=/var/lib/kubelet/pki",
            f"--hostname-override={self.name}",
            f"--node-ip={layout.node_ip}",
            "--node-labels=modelplane.io/real-node=true",
            "--v=1",
        ]

    def _ctr_ok(self) -> bool:
        try:
            self.ctr("version", timeout=5)
        except (NodeError, subprocess.TimeoutExpired):
            return False
        return True

    def _clear_old_containers(self) -> None:
        """Containers a crashed run left in the shared metadata would confuse the CRI."""
        ids = self.ctr("containers", "list", "--quiet").stdout.decode().split()
        for container in ids:
            with contextlib.suppress(NodeError):
                self.ctr("containers", "delete", container)

    def _import_pause(self) -> None:
        image_dir = self.run_dir / "pause-image"
        (image_dir / "root").mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.binaries.pause, image_dir / "root" / "pause")
        layer = oci.layer_from_dir(image_dir / "root", image_dir / "layer.tar")
        archive = image_dir / "image.tar"
        with archive.open("wb") as out:
            oci.write_archive(
                [layer],
                oci.ImageConfig(entrypoint=["/pause"]),
                name=node_config.PAUSE_IMAGE,
                out=out,
            )
        with archive.open("rb") as stream:
            self.ctr("images", "import", "-", stdin=stream)

    def _apply(self, admin_kubeconfig: Path, layout: node_config.NodeLayout) -> None:
        objects = node_config.cluster_objects(
            layout, volumes=self.volumes, volume_size=self.volume_size
        )
        _kubectl(
            self.binaries.kubectl,
            admin_kubeconfig,
            "apply",
            "-f",
            "-",
            input_text="---\n".join(yaml.safe_dump(o) for o in objects),
        )

    def _node_ready(self, admin_kubeconfig: Path) -> bool:
        self._check_alive()
        result = _kubectl(
            self.binaries.kubectl,
            admin_kubeconfig,
            "get",
            "node",
            self.name,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return result.stdout.strip() == "True"

    def _check_alive(self) -> None:
        for daemon in self._daemons:
            if daemon.process.poll() is not None:
                raise NodeError(
                    f"{daemon.name} exited with {daemon.process.returncode}; last log lines:\n"
                    f"{self._log_tail(daemon.name)()}"
                )

    def _log_tail(self, name: str) -> Callable[[], str]:
        def tail() -> str:
            path = self.run_dir / "logs" / f"{name}.log"
            if not path.exists():
                return ""
            return "\n".join(path.read_text(errors="replace").splitlines()[-20:])

        return tail


def _raise_open_files() -> None:
    """Containers inherit containerd's open-file limit (the CRI sets none of its own), and
    Ray Serve's HAProxy ingress will not start below about 10,000 ("Cannot raise FD
    limit"). The daemons inherit this process's limit: raise the soft limit to the hard
    one, which needs no capability."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _cache() -> Path:
    from modelplane_harness.cluster import cache_dir  # noqa: PLC0415 - cluster imports us

    return cache_dir()


def _kubectl(
    kubectl: Path, kubeconfig: Path, *args: str, input_text: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise NodeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _wait(
    probe: Callable[[], bool], what: str, tail: Callable[[], str], timeout: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.1)
    raise NodeError(
        f"timed out after {timeout:.0f} s waiting for {what}; last log lines:\n{tail()}"
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _read_sysctls() -> dict[str, str]:
    return {key: Path("/proc/sys", key).read_text().strip() for key in KERNEL_SYSCTLS}


def _make_cgroup_root(root: str) -> None:
    """The kubelet wants its cgroupRoot to exist in every hierarchy; cpuset's needs CPUs."""
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / root.lstrip("/")
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((hierarchy / knob).read_text())


def stop_from_state(path: Path, *, network: bool = True) -> None:
    """Tear down a node another process started, from the state file it saved; with
    `network=False`, only its namespace and veth are left (see remove_network_from_state)."""
    teardown(NodeState(**json.loads(path.read_text())), network=network)


def remove_network_from_state(path: Path) -> None:
    teardown_network(NodeState(**json.loads(path.read_text())))


def save_state(node: RealNode, path: Path) -> None:
    state = node.state()
    if state is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(path)
