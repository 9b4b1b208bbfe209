#!/usr/bin/env bash
# Build the local control plane's binaries from Go modules and cache them.
#
# Each tool has its own wrapper module under tools/ so their dependency graphs never
# meet. Binaries land in $MODELPLANE_CACHE/bin/<tool>-<stamp>/, where the stamp hashes
# the wrapper's go.mod, go.sum and build flags: a changed pin rebuilds, an unchanged one
# is skipped. The cache lives outside the clone so a fresh clone (CI) reuses it.
#
# Usage: e2e/cluster/build.sh [tool ...]     tools: kubernetes etcd kwok helm coredns seaweedfs (default: all)
# Prints the bin directory of every tool on stdout, one "tool=dir" per line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}"
mkdir -p "$cache/bin"

k8s_version="v1.36.3"
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=${k8s_version} \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=36 \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=${k8s_version} \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=36"

packages_for() {
  case "$1" in
    # kubelet and kube-proxy run the real node (harness node.py); the rest is the control plane.
    kubernetes) echo "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy" ;;
    etcd) echo "go.etcd.io/etcd/server/v3" ;;
    kwok) echo "sigs.k8s.io/kwok/cmd/kwok" ;;
    helm) echo "helm.sh/helm/v3/cmd/helm" ;;
    # The wrapper's own main.go: CoreDNS with only the plugins the cluster DNS uses.
    coredns) echo "modelplane.io/e2e/cluster/tools/coredns" ;;
    # `weed server -s3`: the S3-compatible object store the storage tests run (harness s3.py).
    seaweedfs) echo "github.com/seaweedfs/seaweedfs/weed" ;;
    *) echo "unknown tool: $1 (known: kubernetes etcd kwok helm coredns seaweedfs)" >&2; return 2 ;;
  esac
}

ldflags_for() {
  case "$1" in
    kubernetes) echo "$k8s_ldflags" ;;
    *) echo "-s -w" ;;
  esac
}

build_tool() {
  local tool="$1" module="$here/tools/$1"
  local pkgs flags stamp out
  pkgs="$(packages_for "$tool")"
  flags="$(ldflags_for "$tool")"
  # The recipe (this script) is part of the stamp: changing how a tool is built rebuilds
  # it, which costs little because Go's own build cache keeps compiled packages.
  stamp="$(cat "$module/go.mod" "$module/go.sum" $(find "$module" -maxdepth 1 -name '*.go' | sort) \
    "${BASH_SOURCE[0]}" <(echo "$flags") <(go env GOVERSION) | sha256sum | cut -c1-12)"
  out="$cache/bin/$tool-$stamp"
  if [[ -f "$out/.complete" ]]; then
    echo "[build] $tool: cached in $out" >&2
  else
    echo "[build] $tool: building $pkgs (cold builds take minutes; progress below)" >&2
    local start=$SECONDS tmp="$out.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    # -v lists each package as it compiles, so a long build visibly moves.
    local log="$cache/bin/$tool.log"
    # One package builds to a file named after the tool; several to a folder.
    local target="$tmp/"
    [[ "$pkgs" == *" "* ]] || target="$tmp/$tool"
    if ! (cd "$module" && go build -v -ldflags "$flags" -o "$target" $pkgs) 2>&1 \
      | tee "$log" \
      | awk -v t="$tool" '{n++} n%50==0 {printf "[build] %s: %d packages compiled\n", t, n; fflush()}' >&2
    then
      tail -n 30 "$log" >&2
      echo "[build] $tool: FAILED (full log: $log)" >&2
      return 1
    fi
    if [[ "$tool" == kwok ]]; then
      # kwok needs Stage objects that say how fake nodes and pods move through their
      # lifecycle; take the ones its release ships: nodes initialise and renew leases,
      # pods become Ready, deleted pods go away. How a pod ends is modelplane's own
      # stage (e2e/cluster/stages/pod-exit.yaml), so tests choose each pod's outcome.
      local src
      src="$(cd "$module" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
      for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
                   pod/fast/pod-ready pod/fast/pod-delete; do
        cat "$src/$stage.yaml"; echo "---"
      done > "$tmp/stages.yaml"
    fi
    if [[ "$tool" == kubernetes ]]; then
      # The real node's pod sandbox ("pause") image: Kubernetes' own pause.c, static, so
      # the image is this one file (harness node.py packages and imports it).
      local pause_c
      pause_c="$(cd "$module" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
      gcc -Os -static -DVERSION="$k8s_version" -o "$tmp/pause" "$pause_c" && strip "$tmp/pause"
    fi
    touch "$tmp/.complete"
    rm -rf "$out" && mv "$tmp" "$out"
    # Older builds of this tool are no longer wanted.
    find "$cache/bin" -mindepth 1 -maxdepth 1 -type d -name "$tool-*" ! -name "$tool-$stamp" \
      -exec rm -rf {} +
    echo "[build] $tool: built in $((SECONDS - start)) s -> $out" >&2
  fi
  echo "$tool=$out"
}

tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(kubernetes etcd kwok helm coredns seaweedfs)
# One build of a tool at a time: scripts/test.sh builds in the background while the
# integration fixtures may ask for the same tools; the second waits, then finds the cache.
for tool in "${tools[@]}"; do
  exec {lock}>"$cache/bin/.$tool.lock"
  flock "$lock"
  build_tool "$tool"
  exec {lock}>&-
done
