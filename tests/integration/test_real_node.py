"""A real node runs our pods: containerd, the kubelet, kube-proxy and CoreDNS in a network
namespace of their own, with nothing reaching beyond this machine.

The session's real-node cluster (`real_cluster`) serves the module; the teardown test
starts a second one of its own and checks that stopping it leaves nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane_harness import oci
from modelplane_harness.cluster import (
    ClusterState,
    LocalCluster,
    build_binaries,
    eprint,
    registry,
    sweep,
)
from modelplane_harness.netns import host_links
from modelplane_harness.node import RealNode
from modelplane_harness.node_cleanup import NodeState, cgroup_hierarchies, is_alive, leftovers
from modelplane_harness.waiting import wait_for
from tests.factories import ROOT

BUSYBOX = "localhost/modelplane/busybox:test"


@pytest.fixture(scope="module")
def real(real_cluster: LocalCluster) -> LocalCluster:
    """The session's real-node cluster, with a busybox image to poke the node with."""
    if shutil.which("busybox") is None:
        pytest.fail("the real node's tests need busybox: run scripts/host-packages.sh")
    assert real_cluster.node is not None
    _import_busybox(real_cluster.node, real_cluster.workdir / "busybox-image")
    return real_cluster


def _node(cluster: LocalCluster) -> RealNode:
    assert cluster.node is not None
    return cluster.node


def _import_busybox(node: RealNode, work: Path) -> None:
    """Debian's static busybox with every applet linked: sh, httpd, wget, nc, ip, ..."""
    root = work / "root"
    shutil.rmtree(work, ignore_errors=True)
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)  # mkdir's mode passes through the umask
    shutil.copy2("/usr/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(
        ["busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    layer = oci.layer_from_dir(root, work / "layer.tar")
    archive = work / "image.tar"
    with archive.open("wb") as out:
        oci.write_archive(
            [layer], oci.ImageConfig(cmd=["sh"], env={"PATH": "/bin"}), name=BUSYBOX, out=out
        )
    with archive.open("rb") as stream:
        node.ctr("images", "import", "-", stdin=stream)


@pytest.fixture
def ns(real: LocalCluster, real_namespace: str) -> str:
    """A fresh namespace on the session's real-node cluster, with busybox imported."""
    return real_namespace


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A busybox pod running `script` as uid 1000, as our product's pods run."""
    container: dict[str, Any] = {
        "name": "main",
        "image": BUSYBOX,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 0, **spec},
    }


def apply(cluster: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text="---\n".join(yaml.safe_dump(o) for o in objects),
    )


def wait_running(cluster: LocalCluster, namespace: str, name: str) -> None:
    wait_for(
        lambda: cluster.get_json("pod", name, "-n", namespace)["status"].get("phase") == "Running",
        timeout=60,
        what=f"pod {name} Running",
    )


def sh(cluster: LocalCluster, namespace: str, name: str, script: str) -> tuple[int, str]:
    result = cluster.kubectl("exec", "-n", namespace, name, "--", "sh", "-c", script, check=False)
    return result.returncode, result.stdout + result.stderr


def http_server(cluster: LocalCluster, namespace: str, name: str) -> None:
    """A busybox httpd pod serving "hello from NAME" on 8080, with a Service on port 80."""
    apply(
        cluster,
        namespace,
        pod(
            name,
            f"mkdir -p /tmp/www && echo hello from {name} > /tmp/www/index.html"
            " && exec httpd -f -p 8080 -h /tmp/www",
            container={"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )


def test_a_pod_runs_and_kubectl_reads_its_logs_and_execs_into_it(
    real: LocalCluster, ns: str
) -> None:
    began = time.monotonic()
    apply(real, ns, pod("hello", "echo hello from a real node; exec sleep 3600"))
    wait_running(real, ns, "hello")
    eprint(f"pod applied -> Running in {time.monotonic() - began:.1f} s")

    assert "hello from a real node" in real.kubectl("logs", "-n", ns, "hello").stdout
    code, out = sh(real, ns, "hello", "id -u; cat /proc/1/cmdline")
    assert code == 0
    assert out.splitlines()[0] == "1000"


def test_port_forward_reaches_a_pod(real: LocalCluster, ns: str) -> None:
    http_server(real, ns, "web")
    wait_running(real, ns, "web")
    forward = subprocess.Popen(
        [str(real.binaries.kubectl), f"--kubeconfig={real.kubeconfig}", "port-forward",
         "-n", ns, "pod/web", ":8080"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, line
        url = f"http://127.0.0.1:{match.group(1)}/"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read().decode().strip() == "hello from web"
    finally:
        forward.terminate()
        forward.wait(timeout=10)
        if forward.stdout is not None:
            forward.stdout.close()


def test_a_pod_finds_a_service_by_name_and_reaches_its_cluster_ip(
    real: LocalCluster, ns: str
) -> None:
    http_server(real, ns, "web")
    apply(real, ns, pod("client", "exec sleep 3600"))
    wait_running(real, ns, "client")
    wait_for(
        lambda: (
            real.get_json("pod", "web", "-n", ns)["status"].get("conditions")
            and all(
                c["status"] == "True"
                for c in real.get_json("pod", "web", "-n", ns)["status"]["conditions"]
            )
        ),
        what="web Ready",
    )

    # Polled: a Service's rules reach kube-proxy a moment after its pod is Ready.
    for url in (f"http://web.{ns}.svc.cluster.local/", "http://web/"):  # FQDN, search path
        command = f"timeout 5 wget -qO- {url}"
        wait_for(
            partial(lambda c: sh(real, ns, "client", c) == (0, "hello from web\n"), command),
            timeout=20,
            what=f"client gets {url}",
        )
    # Names outside the cluster are never forwarded anywhere.
    code, out = sh(real, ns, "client", "nslookup example.com")
    assert code != 0
    assert "NXDOMAIN" in out or "can't find" in out
    # The node's own namespace routes ClusterIPs too (tests can reach Services from there).
    cluster_ip = real.get_json("service", "web", "-n", ns)["spec"]["clusterIP"]
    result = _node(real).exec_in_netns(["curl", "-sS", "-m", "5", f"http://{cluster_ip}/"])
    assert result.stdout.strip() == "hello from web", result.stderr


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(
    real: LocalCluster, ns: str
) -> None:
    apply(real, ns, pod("api", "exec sleep 3600"))
    wait_running(real, ns, "api")
    # Debian's static busybox crashes in wget's TLS; a plain HTTP request to the TLS port
    # gets the answer only Go's HTTPS server gives, which is proof enough of who answered.
    _, out = sh(
        real,
        ns,
        "api",
        r"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 kubernetes.default.svc.cluster.local 443",
    )
    assert "Client sent an HTTP request to an HTTPS server" in out, out


def test_pods_reach_nothing_outside_the_cluster(real: LocalCluster, ns: str) -> None:
    node = _node(real)
    assert node.network is not None
    host_ip = node.network.host_ip
    # A listener on the host's side of the node's veth: the host reaches it, and a
    # Service points at it, so only the guard stands between a pod and it; the node's own
    # namespace (its daemons, host-network pods) is held to the API server too.
    with socket.create_server((host_ip, 0)) as listener:
        port = listener.getsockname()[1]
        apply(
            real,
            ns,
            pod("probe", "exec sleep 3600"),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "host"},
                "spec": {"ports": [{"port": 80, "targetPort": port}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "host", "labels": {"kubernetes.io/service-name": "host"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [host_ip]}],
                "ports": [{"port": port, "protocol": "TCP"}],
            },
        )
        wait_running(real, ns, "probe")
        socket.create_connection((host_ip, port), 2).close()  # it listens
        connect = f"import socket; socket.create_connection(({host_ip!r}, {port}), 2)"
        reached = node.exec_in_netns([sys.executable, "-c", connect])
        assert reached.returncode != 0, "the node's namespace reached a host listener"
        api_host, api_port = real.apiserver_url.removeprefix("https://").split(":")
        to_api = f"import socket; socket.create_connection(({api_host!r}, {api_port}), 2)"
        assert node.exec_in_netns([sys.executable, "-c", to_api]).returncode == 0

        code, out = sh(real, ns, "probe", "ip route get 1.1.1.1")
        assert code != 0
        assert "unreachable" in out.lower()
        code, out = sh(real, ns, "probe", f"timeout 5 nc -w 2 {host_ip} {port} </dev/null")
        assert code != 0, out
        code, out = sh(real, ns, "probe", "timeout 5 nc -w 3 host 80 </dev/null")
        assert code != 0, f"a pod reached the host through a Service: {out}"
        for address in _host_addresses():
            code, out = sh(real, ns, "probe", f"timeout 5 nc -w 2 {address} 22 </dev/null")
            assert code != 0, f"a pod reached {address}: {out}"


def _host_addresses() -> list[str]:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    return [
        line.split()[3].split("/")[0]
        for line in out.splitlines()
        if not line.split()[1].startswith(("lo", "mpv"))
    ]


def test_a_claim_binds_and_a_pod_writes_to_it(real: LocalCluster, ns: str) -> None:
    apply(
        real,
        ns,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        pod(
            "writer",
            "echo written > /data/proof && exec sleep 3600",
            container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        ),
    )
    wait_running(real, ns, "writer")
    claim = real.get_json("pvc", "data", "-n", ns)
    assert claim["status"]["phase"] == "Bound"
    volume = real.get_json("pv", claim["spec"]["volumeName"])
    assert (Path(volume["spec"]["hostPath"]["path"]) / "proof").read_text() == "written\n"


def test_an_image_never_imported_fails_at_once(real: LocalCluster, ns: str) -> None:
    began = time.monotonic()
    missing = pod("missing", "true")
    missing["spec"]["containers"][0].update(
        image="docker.io/library/never-imported:1", imagePullPolicy="IfNotPresent"
    )
    apply(real, ns, missing)

    def reason() -> str | None:
        statuses = real.get_json("pod", "missing", "-n", ns)["status"].get("containerStatuses", [])
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        found = waiting.get("reason")
        return found if found in ("ErrImagePull", "ImagePullBackOff") else None

    wait_for(reason, timeout=20, what="ErrImagePull")
    assert time.monotonic() - began < 20


def test_stop_leaves_nothing_behind() -> None:
    """A second real-node cluster beside the session's (its own containerd root, so the
    shared one's lock does not matter), stopped with a pod still running."""
    # Short: containerd's sockets live under it, and a unix socket path has 108 bytes.
    tmp_path = Path(tempfile.mkdtemp(prefix="mp-stop-"))
    real = LocalCluster(tmp_path / "cluster", build_binaries(ROOT), real_node=True)
    node = _node(real)
    node.containerd_root = tmp_path / "containerd"
    try:
        real.start(log=eprint)
        _import_busybox(node, tmp_path / "busybox-image")
        real.kubectl("create", "namespace", "left")
        wait_for(
            lambda: real.kubectl("get", "sa", "default", "-n", "left", check=False).returncode == 0,
            what="the default service account",
        )
        apply(real, "left", pod("running", "exec sleep 3600"))
        wait_running(real, "left", "running")
    except BaseException:
        real.stop()
        raise
    state = node.state()
    assert state is not None
    pids = dict(state.pids)
    assert {"holder", "containerd", "kubelet", "kube-proxy", "coredns"} <= set(pids)

    real.stop()

    assert leftovers(state) == []
    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True, check=True).stdout
    assert state.netns not in netns
    assert state.host_veth not in host_links()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert state.run not in mounts
    for hierarchy in cgroup_hierarchies():
        assert not (hierarchy / state.cgroup_root.lstrip("/")).exists()
    stray = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if state.run in cmdline:
                stray.append(f"{proc.name}: {cmdline}")
    assert stray == []
    shutil.rmtree(tmp_path)


SURVIVOR = """
import sys, time
from pathlib import Path
from modelplane_harness.cluster import LocalCluster, build_binaries
cluster = LocalCluster(Path(sys.argv[1]) / "cluster", build_binaries(), real_node=True)
assert cluster.node is not None
cluster.node.containerd_root = Path(sys.argv[1]) / "containerd"
cluster.start()
print("up", flush=True)
time.sleep(3600)
"""


def test_a_cluster_whose_owner_was_killed_is_swept() -> None:
    """A test session killed before its teardown (SIGKILL, a CI timeout) leaves a cluster
    running; `sweep` (scripts/test.sh runs it on exit) stops it and leaves nothing."""
    tmp_path = Path(tempfile.mkdtemp(prefix="mp-sweep-"))
    owner = subprocess.Popen(
        [sys.executable, "-c", SURVIVOR, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "up"
    workdir = str(tmp_path / "cluster")
    [entry] = [
        path
        for path in registry().glob("*.json")
        if ClusterState(**json.loads(path.read_text())).workdir == workdir
    ]
    state = ClusterState(**json.loads(entry.read_text()))
    assert state.node_state is not None
    node_state = NodeState(**json.loads(Path(state.node_state).read_text()))
    owner.kill()
    owner.wait()
    owner.stdout.close()
    assert all(is_alive(pid) for pid in state.pids.values())  # orphaned, still running

    assert sweep() >= 1

    assert not entry.exists()
    assert not any(is_alive(pid) for pid in state.pids.values())
    assert leftovers(node_state) == []
    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True, check=True).stdout
    assert node_state.netns not in netns
    shutil.rmtree(tmp_path)
