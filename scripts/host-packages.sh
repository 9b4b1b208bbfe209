#!/usr/bin/env bash
# Install the Debian packages a real test node needs (harness node.py), when missing.
#
# The real node runs containerd, runc and the CNI plugins from Debian, iptables for its
# network guard and kube-proxy, busybox for the test images, and debootstrap for the
# base layer of the images built here (harness images.py); the tests reach pods and
# ClusterIPs with curl from the node's network namespace. Idempotent: installs
# nothing when every package is present. Needs root (or sudo) and apt to install.
set -euo pipefail

packages=(runc containerd containernetworking-plugins iptables conntrack busybox-static iproute2 util-linux gcc libc6-dev debootstrap curl)

missing=()
for package in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$package")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "[host-packages] all present: ${packages[*]}" >&2
  exit 0
fi

echo "[host-packages] the real test node needs: ${missing[*]} (installing with apt-get)" >&2
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "[host-packages] not root and no sudo: install ${missing[*]} yourself" >&2
    exit 1
  fi
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "[host-packages] installed ${missing[*]}" >&2
