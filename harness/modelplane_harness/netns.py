"""A real node's network: its own network namespace, joined to the host by one veth pair.

Pod traffic must never leave the machine. The namespace has no default route; pods get
routes only for their own subnet and the Service range; a guard in the namespace's
mangle FORWARD chain (which kube-proxy never writes) drops anything that comes in on the
pods' bridge except to other pods, Services and the API server's one address and port on
the host; one in its mangle OUTPUT chain lets the node's own processes (and host-network
pods) out of the veth only to that address and port, or in answer to the host.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from modelplane_harness.pki import SERVICE_CIDR

BRIDGE = "mpbr0"
"""The pods' bridge in the namespace (the bridge CNI plugin adopts the one made here)."""
GUARD_CHAIN = "MODELPLANE-GUARD"
MASQ_CHAIN = "MODELPLANE-MASQ"
OUT_CHAIN = "MODELPLANE-OUT"
SLOTS = range(1, 255)


class NetworkError(RuntimeError):
    """The node's network namespace could not be set up."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class NodeNetwork:
    """Slot X owns 10.254.X.0/30 (host .1, node .2) and the pod subnet 10.244.X.0/24."""

    slot: int
    netns: str

    @property
    def host_veth(self) -> str:
        return f"mpv{self.slot}"

    @property
    def node_veth(self) -> str:
        return f"mpn{self.slot}"

    @property
    def host_ip(self) -> str:
        return f"10.254.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        return f"10.254.{self.slot}.2"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.slot}.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"10.244.{self.slot}.1"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    def create(cls, *, api_port: int) -> NodeNetwork:
        """Claim a free slot, make the namespace and veth, and install the guard.

        Creating the host veth `mpv<X>` is the claim: it fails if another cluster holds X.
        """
        used = _used_slots()
        for slot in SLOTS:
            if slot in used:
                continue
            network = cls(slot=slot, netns=f"mp-{slot}-{secrets.token_hex(3)}")
            _ip("netns", "add", network.netns)
            claimed = _ip(
                "link", "add", network.host_veth, "type", "veth",
                "peer", "name", network.node_veth, "netns", network.netns,
                check=False,
            )  # fmt: skip
            if claimed.returncode != 0:
                _ip("netns", "del", network.netns, check=False)
                continue
            try:
                network._configure(api_port)
            except BaseException:
                network.delete()
                raise
            return network
        raise NetworkError("no free 10.254.X.0/30 slot for a node network (all 254 in use?)")

    def _configure(self, api_port: int) -> None:
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_veth)
        _ip("link", "set", self.host_veth, "up")
        ns = ("-n", self.netns)
        _ip(*ns, "link", "set", "lo", "up")
        _ip(*ns, "addr", "add", f"{self.node_ip}/30", "dev", self.node_veth)
        _ip(*ns, "link", "set", self.node_veth, "up")
        # The bridge exists before the first pod so that the node itself has a route to
        # Services (kube-proxy rewrites the destination after the route is chosen).
        # Undone by kube-proxy, a Service address leads nowhere: nothing on the bridge
        # answers ARP for it.
        _ip(*ns, "link", "add", BRIDGE, "type", "bridge")
        _ip(*ns, "addr", "add", f"{self.pod_gateway}/24", "dev", BRIDGE)
        _ip(*ns, "link", "set", BRIDGE, "up")
        _ip(*ns, "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", self.pod_gateway)
        for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            self.run(["sh", "-c", f"echo 1 > /proc/sys/{key}"])
        rules = [
            f"*mangle\n:{GUARD_CHAIN} - [0:0]",
            f"-A FORWARD -j {GUARD_CHAIN}",
            # Nothing from the host side starts a forwarded connection into the node.
            f"-A {GUARD_CHAIN} -i {self.node_veth} -m conntrack --ctstate NEW -j DROP",
            # Pods: to pods, Services and the API server, nothing else. Matched by the
            # bridge they come in on, not by source address, which a pod can forge.
            f"-A {GUARD_CHAIN} -i {BRIDGE} -s {self.pod_cidr} -d {self.pod_cidr} -j RETURN",
            f"-A {GUARD_CHAIN} -i {BRIDGE} -s {self.pod_cidr} -d {SERVICE_CIDR} -j RETURN",
            f"-A {GUARD_CHAIN} -i {BRIDGE} -s {self.pod_cidr} -d {self.host_ip}/32 -p tcp "
            f"--dport {api_port} -j RETURN",
            f"-A {GUARD_CHAIN} -i {BRIDGE} -j DROP",
            # The node's own processes (and host-network pods): out of the veth only to
            # the API server and in answer to the host (the API server calling the kubelet).
            f":{OUT_CHAIN} - [0:0]",
            f"-A OUTPUT -o {self.node_veth} -j {OUT_CHAIN}",
            f"-A {OUT_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
            f"-A {OUT_CHAIN} -d {self.host_ip}/32 -p tcp --dport {api_port} -j RETURN",
            f"-A {OUT_CHAIN} -j DROP",
            "COMMIT",
            f"*nat\n:{MASQ_CHAIN} - [0:0]",
            f"-A POSTROUTING -j {MASQ_CHAIN}",
            # The host has no route to pods: their traffic to the API server leaves as the
            # node's address.
            f"-A {MASQ_CHAIN} -s {self.pod_cidr} -o {self.node_veth} -j MASQUERADE",
            "COMMIT",
            "",
        ]
        self.run(["iptables-restore", "--noflush"], input_text="\n".join(rules))

    def delete(self) -> None:
        """Remove the veth pair and the namespace; what still runs inside is the caller's."""
        _ip("link", "del", self.host_veth, check=False)
        _ip("netns", "del", self.netns, check=False)

    # -- use -------------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the namespace; raise with its stderr if it fails."""
        result = self.exec(argv, input_text=input_text, timeout=timeout)
        if result.returncode != 0:
            raise NetworkError(f"{' '.join(argv)} in {self.netns} failed: {result.stderr.strip()}")
        return result

    def exec(
        self, argv: Sequence[str], *, input_text: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the namespace (network only: the host's files and mounts)."""
        return subprocess.run(
            ["nsenter", f"--net={self.netns_path}", "--", *argv],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def pids(self) -> list[int]:
        """Processes whose network namespace is this one."""
        result = _ip("netns", "pids", self.netns, check=False)
        return [int(p) for p in result.stdout.split()]


def _used_slots() -> set[int]:
    """Slots whose ranges some host interface already has an address in."""
    result = _ip("-j", "addr", "show")
    used = set()
    for link in json.loads(result.stdout or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("family") != "inet":
                continue
            local = str(addr["local"])
            if local.startswith(("10.254.", "10.244.")):
                used.add(int(local.split(".")[2]))
    return used


def host_links(prefix: str = "mpv") -> list[str]:
    """Names of host interfaces starting with `prefix` (node veths, for leak checks)."""
    result = _ip("-j", "link", "show")
    return [
        link["ifname"]
        for link in json.loads(result.stdout or "[]")
        if link["ifname"].startswith(prefix)
    ]
