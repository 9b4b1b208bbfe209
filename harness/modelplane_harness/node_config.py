"""The files and objects a real node runs from, as pure functions of its layout.

Nothing here starts a process or talks to the cluster: `RealNode` (node.py) writes these
files and applies these objects. Settings follow docs/real-node.md's measurements:
cgroup v1 with the cgroupfs driver, a relaxed eviction policy, no image GC, registries
unreachable by configuration, no upstream DNS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelplane_harness.netns import BRIDGE
from modelplane_harness.pki import SERVICE_CIDR

CLUSTER_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "localhost/modelplane/pause:v1.36.3"
STORAGE_CLASS = "standard"
COREDNS_USER = "system:modelplane-coredns"

HOST_PATHS = (
    # (folder under the node's run dir, host path the daemons hard-code)
    ("kubelet", "/var/lib/kubelet"),
    ("cni", "/var/lib/cni"),
    ("log-containers", "/var/log/containers"),
    ("log-pods", "/var/log/pods"),
    ("run-containerd", "/run/containerd"),
)
"""Bind-mounted in the node's private mount namespace, so nothing lands on the host."""


@dataclass(frozen=True)
class NodeLayout:
    """Where one node's files live, and the addresses it uses."""

    name: str
    run: Path
    """Per run: sockets, state, configs, logs (under the cluster's workdir)."""
    containerd_root: Path
    """Shared between runs (images survive), guarded by a lock."""
    node_ip: str
    pod_cidr: str
    pod_gateway: str
    cgroup_root: str
    """The cgroup (in every hierarchy) that holds this node's pods."""

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd" / "containerd.sock"

    @property
    def config(self) -> Path:
        return self.run / "config"

    @property
    def volumes(self) -> Path:
        return self.run / "volumes"


def containerd_config(layout: NodeLayout) -> str:
    state = layout.run / "containerd"
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    return f"""\
version = 2
root = "{layout.containerd_root}"
state = "{state / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{layout.containerd_socket}"
[ttrpc]
  address = "{state / "containerd.sock.ttrpc"}"
[debug]
  address = "{state / "debug.sock"}"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{state / "opt"}"

{cri}
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{layout.config / "cni"}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{layout.config / "certs.d"}"
"""


CLOSED_REGISTRY = "http://127.0.0.1:9"
"""Every registry resolves to the discard port on loopback: a pull fails at once."""


def registry_hosts() -> str:
    """certs.d/_default/hosts.toml: no registry is ever contacted."""
    return (
        f'server = "{CLOSED_REGISTRY}"\n\n'
        f'[host."{CLOSED_REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'
    )


def cni_conflist(layout: NodeLayout) -> str:
    bridge: dict[str, Any] = {
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": True,
        "isDefaultGateway": False,
        "ipMasq": False,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": layout.pod_cidr, "gateway": layout.pod_gateway}]],
            # Pods reach Services and nothing else: no default route.
            "routes": [{"dst": SERVICE_CIDR}],
            "dataDir": str(layout.run / "cni-ipam"),
        },
    }
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
    return json.dumps(
        {"cniVersion": "1.0.0", "name": "modelplane", "plugins": [bridge, portmap]}, indent=2
    )


def kubelet_config(layout: NodeLayout, *, ca: Path) -> dict[str, Any]:
    endpoint = f"unix://{layout.containerd_socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": layout.node_ip,
        "healthzBindAddress": layout.node_ip,
        "healthzPort": 10248,
        "readOnlyPort": 0,
        # Only holders of a certificate from the cluster's CA (the API server) get in.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "podCIDR": layout.pod_cidr,
        "resolvConf": str(layout.config / "resolv.conf"),
        "clusterDNS": [CLUSTER_DNS_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        # Locally imported images cannot be pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "nodeStatusReportFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "maxPods": 110,
    }


def kube_proxy_config(layout: NodeLayout, *, kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": layout.name,
        "bindAddress": layout.node_ip,
        "healthzBindAddress": f"{layout.node_ip}:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clusterCIDR": layout.pod_cidr,
        "nodePortAddresses": [f"{layout.node_ip}/32"],
        # Zeros leave the host-wide conntrack sysctls alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"minSyncPeriod": "0s", "syncPeriod": "30s"},
    }


def corefile(layout: NodeLayout, *, kubeconfig: Path) -> str:
    """Cluster names only; every other name is NXDOMAIN, never forwarded anywhere."""
    return f"""\
{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {layout.node_ip}
    errors
    health {layout.node_ip}:8080
    ready {layout.node_ip}:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} local
        pods insecure
        ttl 5
    }}
    cache 5
}}
.:53 {{
    bind {layout.node_ip}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def holder_script() -> str:
    """Run in the node's network namespace and a fresh mount namespace (propagation
    slave): bind the node's folders over the host paths the daemons hard-code, make the
    kubelet's root shared (volume mounts propagate to containers), then hold both
    namespaces for as long as the node lives. $1 is the node's run dir."""
    binds = "\n".join(
        f'mkdir -p "$1/{src}" {dst} && mount --bind "$1/{src}" {dst}' for src, dst in HOST_PATHS
    )
    return f"""\
#!/bin/sh
set -eu
{binds}
mount --make-rshared /var/lib/kubelet
touch "$1/holder.ready"
exec sleep infinity
"""


def cluster_objects(layout: NodeLayout, *, volumes: int, volume_size: str) -> list[dict[str, Any]]:
    """What the cluster needs for the node: DNS's Service and identity, and storage."""
    dns_ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "modelplane:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "modelplane:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "modelplane:coredns",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}
            ],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns"},
            },
            "spec": {
                "clusterIP": CLUSTER_DNS_IP,
                "ports": [{"name": n, "protocol": p, "port": 53} for n, p in dns_ports],
            },
        },
        {
            # CoreDNS runs as a process of the node, not a pod: a selector-less Service
            # with a hand-made EndpointSlice points at it.
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-node",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "modelplane-harness",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [layout.node_ip], "conditions": {"ready": True}}],
            "ports": [{"name": n, "protocol": p, "port": 53} for n, p in dns_ports],
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain",
        },
    ]
    for index in range(volumes):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{layout.name}-pv-{index}"},
                "spec": {
                    "capacity": {"storage": volume_size},
                    "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                    "storageClassName": STORAGE_CLASS,
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(layout.volumes / f"pv-{index}"), "type": "Directory"},
                },
            }
        )
    return objects
