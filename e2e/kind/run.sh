#!/usr/bin/env bash
# The quickstart on a real cluster: create a kind cluster, build and load the images,
# install the chart, train the quickstart model on CPU, serve it and query it.
#
# Needs Docker, kind, kubectl and helm on PATH (none exist on the development machines,
# where tests/integration/test_docs.py runs the same steps on the local control plane
# with simulated pods).
#
#   e2e/kind/run.sh            # everything; the cluster is kept for a look around
#   e2e/kind/run.sh --delete   # and delete the cluster at the end
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cluster=modelplane
version="$(sed -n 's/^appVersion: "\(.*\)"/\1/p' helm/modelplane/Chart.yaml)"
operator_image="ghcr.io/modelplane/operator:$version"
runtime_image="ghcr.io/modelplane/runtime:$version-cpu"

step() { echo; echo "==> $*"; }
for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "e2e/kind: $tool is not on PATH" >&2; exit 2; }
done

step "kind cluster $cluster"
kind get clusters | grep -qx "$cluster" || kind create cluster --config e2e/kind/kind-config.yaml --wait 2m
kubectl config use-context "kind-$cluster"

step "images ($operator_image, $runtime_image)"
docker build -f images/operator.Dockerfile -t "$operator_image" .
docker build -f images/runtime.Dockerfile --build-arg FLAVOR=cpu -t "$runtime_image" .
kind load docker-image --name "$cluster" "$operator_image" "$runtime_image"

step "chart"
kubectl apply --server-side -f helm/modelplane/crds/
helm upgrade --install modelplane helm/modelplane --namespace modelplane-system --create-namespace \
  --set runtime.image.flavor=cpu --set image.pullPolicy=Never --wait --timeout 3m

step "train (CPU, about a minute)"
kubectl apply -f examples/cluster/models-pvc.yaml
kubectl apply -f examples/quickstart-training.yaml
kubectl wait --for=condition=Ready modeltraining/quickstart --timeout=15m
kubectl get modeltraining quickstart

step "serve"
kubectl apply -f examples/quickstart-deployment.yaml
kubectl wait --for=condition=Ready modeldeployment/quickstart --timeout=10m
kubectl get modeldeployment quickstart

step "predict"
kubectl port-forward service/quickstart 8000:8000 >/dev/null &
forward=$!
trap 'kill $forward 2>/dev/null || true' EXIT
for _ in $(seq 30); do curl -sf localhost:8000/v2/health/ready >/dev/null && break; sleep 1; done
answer="$(curl -sf -X POST localhost:8000/predict -d '{"inputs": ["what a lovely film", "a dull, boring plot"]}')"
echo "$answer"
grep -q '"label"' <<<"$answer" || { echo "e2e/kind: no labels in the answer" >&2; exit 1; }

if [[ "${1:-}" == "--delete" ]]; then
  step "delete cluster"
  kind delete cluster --name "$cluster"
fi
echo "e2e/kind: the quickstart trained, served and answered on kind"
