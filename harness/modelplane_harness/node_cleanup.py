"""Tear a real node down so that nothing is left, and say what is left if something is.

Order matters (docs/real-node.md): the kubelet first, so it restarts nothing; then the pods
(their processes, then their containers in containerd's metadata, which outlives the
run); then the other daemons, anything still in the node's namespaces, the cgroups, the
network, and the host-wide sysctls the kubelet changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KUBELET_GRACE_S = 10.0
DAEMON_GRACE_S = 10.0


@dataclass
class NodeState:
    """Everything teardown needs, also from another process (`dev cluster up`)."""

    run: str
    netns: str
    host_veth: str
    cgroup_root: str
    containerd_socket: str
    sysctls: dict[str, str]
    """Original values of the host-wide sysctls, /proc/sys-relative keys."""
    containerd_root: str = ""
    """Shared between runs: the CRI's per-pod folders in it are removed on teardown."""
    mount_ns: str = ""
    """The holder's mount namespace, e.g. 'mnt:[4026532611]'."""
    pids: dict[str, int] = field(default_factory=dict)


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers, named, and unified)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            found.append(Path(left.split()[4]))
    return found


def teardown(
    state: NodeState, *, network: bool = True, log: Callable[[str], None] = lambda _: None
) -> None:
    """Stop everything the node started and undo its changes to the host.

    With `network=False` the namespace and veth stay (`teardown_network` removes them):
    an API server listening on the veth's host address stops promptly only while it
    still has that address.
    """
    began = time.monotonic()

    def step(what: str) -> None:
        log(f"node teardown +{time.monotonic() - began:.1f} s: {what}")

    # Only pids that are still this node's daemons (each names the node's folder on its
    # command line): a state file read later may hold numbers reused since.
    pids = {name: pid for name, pid in state.pids.items() if _runs_in(pid, state.run)}
    if "kubelet" in pids:
        _stop(pids.pop("kubelet"), KUBELET_GRACE_S)
    step("kubelet stopped")
    _kill_cgroup_tree(state.cgroup_root)
    _remove_containers(state.containerd_socket)
    step("pods stopped and removed")
    for name in ("coredns", "kube-proxy", "containerd"):
        if name in pids:
            _stop(pids.pop(name), DAEMON_GRACE_S)
    step("daemons stopped")
    for pid in _namespace_pids(state):
        _signal(pid, signal.SIGKILL)
    for pid in pids.values():
        _stop(pid, 2.0)
    _wait_gone(lambda: _namespace_pids(state), 10.0)
    step("namespaces empty")
    for mount in reversed(_mounts_under(state.run)):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    _remove_cgroups(state.cgroup_root)
    if network:
        teardown_network(state)
    for key, value in state.sysctls.items():
        with contextlib.suppress(OSError):
            Path("/proc/sys", key).write_text(value)
    if state.containerd_root:
        cri = Path(state.containerd_root) / "io.containerd.grpc.v1.cri"
        for kind in ("containers", "sandboxes"):
            for folder in (cri / kind).glob("*"):
                shutil.rmtree(folder, ignore_errors=True)
    step("cgroups, network and sysctls restored" if network else "cgroups and sysctls restored")


def teardown_network(state: NodeState) -> None:
    """Remove the node's veth pair and network namespace."""
    subprocess.run(["ip", "link", "del", state.host_veth], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "del", state.netns], check=False, capture_output=True)


def leftovers(state: NodeState) -> list[str]:
    """What of the node still exists; empty after a clean teardown."""
    found = [f"process {pid}" for pid in _namespace_pids(state)]
    found += [f"{name} pid {pid}" for name, pid in state.pids.items() if is_alive(pid)]
    found += [f"mount {m}" for m in _mounts_under(state.run)]
    if Path("/run/netns", state.netns).exists():
        found.append(f"netns {state.netns}")
    if Path("/sys/class/net", state.host_veth).exists():
        found.append(f"veth {state.host_veth}")
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / state.cgroup_root.lstrip("/")
        if path.exists():
            found.append(f"cgroup {path}")
    for key, value in state.sysctls.items():
        now = Path("/proc/sys", key).read_text().strip()
        if now != value:
            found.append(f"sysctl {key}={now} (was {value})")
    return found


def is_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _runs_in(pid: int, run: str) -> bool:
    try:
        return run in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _stop(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if not is_alive(pid):
        return
    _signal(pid, signal.SIGTERM)
    if _wait_gone(lambda: [pid] if is_alive(pid) else [], grace):
        return
    _signal(pid, signal.SIGKILL)
    _wait_gone(lambda: [pid] if is_alive(pid) else [], 5.0)


def _wait_gone(probe: Callable[[], Sequence[int]], timeout: float) -> bool:
    """Poll until `probe` finds nothing; True if that happened within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not probe():
            return True
        time.sleep(0.1)
    return not probe()


def _namespace_pids(state: NodeState) -> list[int]:
    """Live processes in the node's mount or network namespace, or in its cgroups."""
    netns = Path("/run/netns", state.netns)
    net_id = ""
    if netns.exists():
        with contextlib.suppress(OSError):
            net_id = f"net:[{netns.stat().st_ino}]"
    found = set(_cgroup_pids(state.cgroup_root))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            mnt = os.readlink(entry / "ns" / "mnt")
            net = os.readlink(entry / "ns" / "net")
        except OSError:
            continue
        if (state.mount_ns and mnt == state.mount_ns) or (net_id and net == net_id):
            found.add(int(entry.name))
    return sorted(pid for pid in found if is_alive(pid))


def _cgroup_pids(root: str) -> list[int]:
    pids = []
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in procs.read_text().split()]
    return pids


def _kill_cgroup_tree(root: str) -> None:
    """SIGKILL every pod process (the kubelet is gone, so none is restarted)."""
    for pid in _cgroup_pids(root):
        _signal(pid, signal.SIGKILL)
    _wait_gone(lambda: [p for p in _cgroup_pids(root) if is_alive(p)], 10.0)


def _remove_containers(socket: str) -> None:
    """Delete the pods' containers from containerd's metadata (the root is shared)."""
    if not Path(socket).exists():
        return
    ctr = ["ctr", f"--address={socket}", "-n", "k8s.io"]
    listed = subprocess.run(
        [*ctr, "containers", "list", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    for container in listed.stdout.split():
        for args in (
            ["tasks", "delete", "--force", container],
            ["containers", "delete", container],
        ):
            subprocess.run([*ctr, *args], capture_output=True, check=False, timeout=30)


def _mounts_under(run: str) -> list[str]:
    prefix = run.rstrip("/") + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == run or point.startswith(prefix):
            mounts.append(point)
    return mounts


def _remove_cgroups(root: str) -> None:
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        deadline = time.monotonic() + 10
        while top.exists() and time.monotonic() < deadline:
            for pid in _cgroup_pids(root):
                _signal(pid, signal.SIGKILL)
            for directory in sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
            if top.exists():
                time.sleep(0.1)
