"""A ModelDeployment's children: a small Ray cluster per deployment.

- `<name>-ray-token` Secret: the Ray cluster's auth token (Ray's token authentication
  stays on); the Ray pods read it from the environment, the operator uses it for the
  head's dashboard API.
- `<name>-serve` ConfigMap: the Serve config (`render_serve_config`), mounted in the head.
- `<name>-ray-head` Deployment (one pod): Ray head with no CPUs for replicas, the Serve
  controller and an HAProxy ingress; it deploys the mounted Serve config on start, so a
  restarted head heals itself.
- `<name>-ray-worker` Deployment: Ray workers that hold the model replicas, one replica
  per worker pod (each pod offers the CPUs and GPUs of one replica); the operator sets
  its `replicas`.
- `<name>-ray-head` Service (GCS, dashboard, metrics) and `<name>` Service (HTTP, port
  8000, every pod whose Serve ingress is ready): the endpoint.
- `<name>-ray-head` and `<name>-ray-worker` NetworkPolicies: the Ray pods admit each
  other on every port, the operator on the dashboard, anyone on HTTP and metrics.
- `<name>-ray-worker` PodDisruptionBudget: a drain takes one worker at a time.

The Secret's token comes in as an argument: builders never draw random numbers. So does
the model's URI: the artifact the reconcile resolved (`model.uri`, or the artifact of the
`fromTraining` ModelTraining), whose claim the Ray pods mount with those of the LoRA
adapters in `spec.generation`. A builtin:// model needs nothing mounted: the runtime
converts it once per pod, into the pod's storage cache (an emptyDir).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from modelplane_operator import constants as c
from modelplane_operator.api.common import CPU_RULES, parse_quantity
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.builders.common import (
    Manifest,
    apply_scheduling,
    child_meta,
    owner_reference,
    pod_image,
    pod_security_context,
    pvc_claims,
    pvc_volumes,
    storage_wiring,
)
from modelplane_operator.constants import AGENT_PORT, DASHBOARD_PORT, GCS_PORT, METRICS_PORT
from modelplane_operator.judge import SpecError, claim_problem, deployment_uris
from modelplane_operator.naming import child_name
from modelplane_operator.settings import Settings
from modelplane_runtime.contract import (
    ENV_PVC_ROOT,
    RAY_SERVE_ENVIRONMENT,
    RAY_WARM_WORKER_ENVIRONMENT,
    SERVE_HTTP_PORT,
)

CONFIG_DIR = "/etc/modelplane"
CONFIG_FILE = "serve-config.json"
TOKEN_KEY = "token"


@dataclass(frozen=True)
class ServingNames:
    """Deterministic names of one deployment's children."""

    head: str
    worker: str
    head_service: str
    http_service: str
    config_map: str
    secret: str


def names_for(name: str) -> ServingNames:
    head = child_name(name, "ray-head")
    return ServingNames(
        head=head,
        worker=child_name(name, "ray-worker"),
        head_service=head,
        http_service=name,
        config_map=child_name(name, "serve"),
        secret=child_name(name, "ray-token"),
    )


def endpoint(deployment: ModelDeployment) -> str:
    names = names_for(deployment.metadata.name or "")
    return f"http://{names.http_service}.{deployment.metadata.namespace}.svc:{SERVE_HTTP_PORT}"


HEAD_CPU_REQUEST = "500m"


def cpu_cores(quantity: int | str | None, *, default: float = 1.0) -> float:
    """A CPU quantity ("4", "500m", "1k", "1e3", 2) in cores: any the API accepts for
    resources.cpu, by the same rules (CPU_RULES)."""
    if quantity is None:
        return default
    broken = next((rule.message for rule in CPU_RULES if not rule.check(quantity)), None)
    if broken is not None:
        raise ValueError(
            f"resources.cpu: {quantity!r} is not a CPU quantity like 4 or 500m ({broken})"
        )
    return float(parse_quantity(quantity))


# Ray sees one CPU per worker pod: one replica slot. Ray also prestarts one worker per
# CPU it sees, so a warm spare holds exactly one process with torch loaded, whatever the
# pod's size; the pod's real CPUs become the replica's torch threads (`replica_threads`).
REPLICA_RAY_CPUS = 1.0


def replica_threads(deployment: ModelDeployment) -> int:
    """Torch threads of one replica: the worker pod's whole CPUs, at least one."""
    try:
        cores = cpu_cores(deployment.spec.resources.cpu)
    except ValueError as exc:
        raise SpecError("spec.resources.cpu", str(exc).removeprefix("resources.cpu: ")) from exc
    return max(1, min(256, int(cores)))


# Ray gives its object store 30% of the memory it sees (the pod's limit) and refuses to
# start below 75 MiB of object store (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES):
# a worker pod with less memory than this crash-loops before it holds a replica.
WORKER_MEMORY_FLOOR = 250 * 1024 * 1024


def memory_bytes(quantity: int | str) -> float:
    """A memory quantity ("16Gi", "512M", "1e9", 2000000000) in bytes."""
    try:
        return float(parse_quantity(quantity))
    except ValueError as exc:
        raise SpecError("spec.resources.memory", str(exc)) from exc


def check_worker_resources(deployment: ModelDeployment) -> None:
    """Raise SpecError when a worker pod could never hold a replica."""
    memory = deployment.spec.resources.memory
    if memory is not None and memory_bytes(memory) < WORKER_MEMORY_FLOOR:
        raise SpecError(
            "spec.resources.memory",
            f"{memory} is below the {WORKER_MEMORY_FLOOR // 2**20}Mi a worker pod needs to "
            "start Ray (its object store takes 30% of the pod's memory and needs at least "
            "75Mi); raise it (a replica with torch needs about 1Gi or more)",
        )


def _labels(deployment: ModelDeployment, role: str) -> dict[str, str]:
    return {
        c.LABEL_NAME: "modelplane",
        c.LABEL_COMPONENT: "serving",
        c.LABEL_DEPLOYMENT: deployment.metadata.name or "",
        c.LABEL_ROLE: role,
    }


def _meta(deployment: ModelDeployment, name: str, role: str) -> Manifest:
    return child_meta(
        name=name,
        namespace=deployment.metadata.namespace,
        labels=_labels(deployment, role),
        owner=owner_reference(c.KIND_DEPLOYMENT, deployment.metadata),
    )


def build_token_secret(deployment: ModelDeployment, token: str) -> Manifest:
    names = names_for(deployment.metadata.name or "")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(deployment, names.secret, "auth"),
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token},
    }


def build_config_map(deployment: ModelDeployment, serve_config: dict[str, Any]) -> Manifest:
    names = names_for(deployment.metadata.name or "")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(deployment, names.config_map, "config"),
        "data": {CONFIG_FILE: json.dumps(serve_config, indent=2, sort_keys=True)},
    }


def _env(deployment: ModelDeployment, settings: Settings) -> list[Manifest]:
    names = names_for(deployment.metadata.name or "")
    env: list[Manifest] = [{"name": k, "value": v} for k, v in RAY_SERVE_ENVIRONMENT.items()]
    env += [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": names.secret, "key": TOKEN_KEY}},
        },
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        {"name": ENV_PVC_ROOT, "value": settings.pvc_root},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # Ray writes its session files and token under $HOME and /tmp: both are
        # emptyDirs, so the root filesystem can stay read-only.
        {"name": "HOME", "value": "/tmp"},
    ]
    return env


def _pod_spec(
    deployment: ModelDeployment,
    settings: Settings,
    *,
    container: Manifest,
    config: bool,
    model_uri: str,
) -> Manifest:
    spec = deployment.spec
    # A pvc:// model (or adapter) at <pvc root>/<claim>/<path>: the runtime resolves the
    # Serve config's URI under $MODELPLANE_PVC_ROOT, the root the training pods wrote it
    # under.
    uris = deployment_uris(spec, model_uri=model_uri)
    for field, uri in uris.items():
        if (problem := claim_problem(field, uri)) is not None:
            raise SpecError(problem.field, problem.message)
    claims = pvc_claims(list(uris.values()))
    volumes, mounts = pvc_volumes(claims, root=settings.pvc_root)
    for mount in mounts:
        mount["readOnly"] = True  # serving never writes the model store
    volumes += [
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # Ray's object store
    ]
    mounts += [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    # An s3:// model or adapter is downloaded once per pod into its cache. The head gets
    # the same credentials and cache as the workers: every Ray pod runs what Serve places
    # on it.
    storage_env, storage_volumes, storage_mounts = storage_wiring(
        uris,
        spec.storage,
        default_secret=settings.storage_secret,
        cache_limit=settings.storage_cache_limit,
    )
    volumes += storage_volumes
    mounts += storage_mounts
    if config:
        names = names_for(deployment.metadata.name or "")
        volumes.append({"name": "serve-config", "configMap": {"name": names.config_map}})
        mounts.append({"name": "serve-config", "mountPath": CONFIG_DIR, "readOnly": True})
    pod: Manifest = {
        "automountServiceAccountToken": False,  # Ray needs no Kubernetes credentials
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings.run_as_user),
        "containers": [
            {
                **container,
                "image": pod_image(spec.resources, settings.runtime_image),
                "env": _env(deployment, settings) + storage_env,
                "volumeMounts": mounts,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": volumes,
    }
    apply_scheduling(pod, spec.resources)
    return pod


def _http_get(path: str, port: int, *, period: int = 5, failures: int = 3) -> Manifest:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _deployment(
    deployment: ModelDeployment, *, name: str, role: str, replicas: int, pod: Manifest
) -> Manifest:
    labels = _labels(deployment, role)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(deployment, name, role),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def build_head(deployment: ModelDeployment, *, settings: Settings, model_uri: str) -> Manifest:
    """The Ray head: GCS, dashboard, Serve controller and an HAProxy ingress; no CPUs for
    replicas. It deploys the mounted Serve config and redeploys it when it changes.
    Like every Ray pod it mounts the claim of `model_uri`, the resolved artifact."""
    names = names_for(deployment.metadata.name or "")
    start = (
        f"ray start --head --port={GCS_PORT} --num-cpus=0 --num-gpus=0 "
        f"--dashboard-host=0.0.0.0 --dashboard-port={DASHBOARD_PORT} "
        f"--metrics-export-port={METRICS_PORT} --disable-usage-stats && "
        f"exec python -m modelplane_runtime serve --config {CONFIG_DIR}/{CONFIG_FILE} "
        "--address auto"
    )
    container: Manifest = {
        "name": "ray-head",
        "command": ["/bin/sh", "-c", start],
        "ports": [
            {"name": "gcs", "containerPort": GCS_PORT},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
            {"name": "http", "containerPort": SERVE_HTTP_PORT},
        ],
        # The head runs no replica (--num-cpus=0): GCS, the dashboard, the Serve controller
        # and the ingress idle at a fraction of a core. Half a core leaves room for a worker
        # and the operator on a 2-CPU node (a laptop's kind cluster, the test node).
        "resources": {
            "requests": {"cpu": HEAD_CPU_REQUEST, "memory": "2Gi"},
            "limits": {"memory": "4Gi"},
        },
        "startupProbe": _http_get("/api/gcs_healthz", DASHBOARD_PORT, period=2, failures=90),
        "livenessProbe": _http_get("/api/gcs_healthz", DASHBOARD_PORT, period=10),
        "readinessProbe": _http_get("/-/healthz", SERVE_HTTP_PORT),
    }
    pod = _pod_spec(deployment, settings, container=container, config=True, model_uri=model_uri)
    return _deployment(deployment, name=names.head, role="head", replicas=1, pod=pod)


def _worker_resources(deployment: ModelDeployment) -> Manifest:
    spec = deployment.spec.resources
    requests: dict[str, str | int] = {"cpu": spec.cpu if spec.cpu is not None else "1"}
    if spec.memory is not None:
        requests["memory"] = spec.memory
    limits: dict[str, str | int] = dict(requests)
    if spec.gpus_per_replica:
        # A fractional GPU per replica still needs a whole device in the pod.
        limits["nvidia.com/gpu"] = math.ceil(spec.gpus_per_replica)
    return {"requests": requests, "limits": limits}


def build_workers(
    deployment: ModelDeployment, *, settings: Settings, model_uri: str, replicas: int
) -> Manifest:
    """Ray workers, one model replica each, with the claim of `model_uri` (the resolved
    artifact) mounted; `replicas` is the operator's decision."""
    check_worker_resources(deployment)
    names = names_for(deployment.metadata.name or "")
    spec = deployment.spec.resources
    start = (
        f"exec ray start --address={names.head_service}:{GCS_PORT} "
        f"--num-cpus={REPLICA_RAY_CPUS:g} --num-gpus={spec.gpus_per_replica:g} "
        f"--metrics-export-port={METRICS_PORT} --disable-usage-stats --block"
    )
    container: Manifest = {
        "name": "ray-worker",
        "command": ["/bin/sh", "-c", start],
        "ports": [
            {"name": "metrics", "containerPort": METRICS_PORT},
            {"name": "http", "containerPort": SERVE_HTTP_PORT},
        ],
        "resources": _worker_resources(deployment),
        # Seen on the real node: the agent answers 20-40 s after the container starts on a
        # busy 2-CPU node, so a liveness probe alone killed every new worker once before
        # it joined. The startup probe gives `ray start` up to 180 s; liveness takes over
        # after.
        "startupProbe": _http_get("/api/local_raylet_healthz", AGENT_PORT, period=2, failures=90),
        "livenessProbe": _http_get("/api/local_raylet_healthz", AGENT_PORT, period=10),
        "readinessProbe": _http_get("/-/healthz", SERVE_HTTP_PORT),
    }
    pod = _pod_spec(deployment, settings, container=container, config=False, model_uri=model_uri)
    # A worker whose head went away cannot rejoin the new head's cluster (a new GCS, no
    # state kept): its raylet exits once the GCS stays unreachable this long, and the
    # kubelet restarts it to join the new head. Ray's default (60 s) made a deleted head
    # cost 89 s to Ready on the real node; a short blip (the head busy on 2 CPUs) still
    # passes.
    (worker,) = pod["containers"]
    worker["env"].append({"name": "RAY_gcs_rpc_server_reconnect_timeout_s", "value": "20"})
    if deployment.spec.autoscaling.spare_workers:
        # Spares are worth keeping only warm; without them a new replica waits for its
        # pod, whose workers start with it, so warming gains nothing and costs memory:
        # the prestarted worker holds torch and the app (0.65 GB peak RSS for the import
        # on the development machine).
        (worker,) = pod["containers"]
        worker["env"] += [{"name": k, "value": v} for k, v in RAY_WARM_WORKER_ENVIRONMENT.items()]
    # Replicas drain before the pod goes: Serve's graceful shutdown is 20 s by default.
    pod["terminationGracePeriodSeconds"] = 30
    return _deployment(deployment, name=names.worker, role="worker", replicas=replicas, pod=pod)


def build_head_service(deployment: ModelDeployment) -> Manifest:
    names = names_for(deployment.metadata.name or "")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(deployment, names.head_service, "head"),
        "spec": {
            "selector": _labels(deployment, "head"),
            "ports": [
                {"name": "gcs", "port": GCS_PORT, "targetPort": GCS_PORT},
                {"name": "dashboard", "port": DASHBOARD_PORT, "targetPort": DASHBOARD_PORT},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT},
            ],
        },
    }


def build_http_service(deployment: ModelDeployment) -> Manifest:
    """The endpoint: every Ray pod runs an HAProxy ingress (proxy_location EveryNode),
    and only pods whose ingress answers /-/healthz are ready, so only they get traffic."""
    names = names_for(deployment.metadata.name or "")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(deployment, names.http_service, "http"),
        "spec": {
            "selector": {
                c.LABEL_COMPONENT: "serving",
                c.LABEL_DEPLOYMENT: deployment.metadata.name or "",
            },
            "ports": [{"name": "http", "port": SERVE_HTTP_PORT, "targetPort": SERVE_HTTP_PORT}],
        },
    }


def _ray_pods(deployment: ModelDeployment) -> Manifest:
    """A peer that is any of this deployment's own Ray pods, head or worker."""
    return {
        "podSelector": {
            "matchLabels": {
                c.LABEL_COMPONENT: "serving",
                c.LABEL_DEPLOYMENT: deployment.metadata.name or "",
            }
        }
    }


# The operator runs in its own namespace, which the builders do not know: any namespace,
# but only pods labelled as the chart labels the operator's. A pod elsewhere that copies
# the label gets through, and still needs the cluster's token to use the dashboard.
_OPERATOR = {
    "namespaceSelector": {},
    "podSelector": {"matchLabels": {c.LABEL_NAME: c.OPERATOR_NAME}},
}


def _tcp(*ports: int) -> list[Manifest]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _network_policy(
    deployment: ModelDeployment, *, name: str, role: str, operator_ports: tuple[int, ...]
) -> Manifest:
    # Ray nodes reach each other on ports Ray picks at start (object manager, node
    # manager, one per worker process), so within the cluster every port is open.
    ingress: list[Manifest] = [{"from": [_ray_pods(deployment)]}]
    if operator_ports:
        ingress.append({"from": [_OPERATOR], "ports": _tcp(*operator_ports)})
    # Anyone: requests through the `<name>` Service, and Prometheus, wherever it runs,
    # scraping Serve's and the app's metrics (the operator reads them too, for status.load).
    ingress.append({"ports": _tcp(SERVE_HTTP_PORT, METRICS_PORT)})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(deployment, name, role),
        "spec": {
            "podSelector": {"matchLabels": _labels(deployment, role)},
            # Ingress only: what the Ray pods reach out to (DNS, each other, a model
            # store) differs by cluster, and an egress policy would have to guess it.
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def build_network_policies(deployment: ModelDeployment) -> list[Manifest]:
    """Who may reach the Ray pods: nothing but the deployment's own Ray pods reaches GCS,
    and nothing else but the operator reaches the dashboard (the Serve API that deploys
    code); requests and metrics are open to all.

    Kubelet probes need no rule: traffic from a pod's own node is always allowed (the
    NetworkPolicy semantics Calico and Cilium implement). Only a CNI that enforces
    NetworkPolicy applies these; elsewhere they change nothing.
    """
    names = names_for(deployment.metadata.name or "")
    return [
        _network_policy(deployment, name=names.head, role="head", operator_ports=(DASHBOARD_PORT,)),
        # The operator reads a worker only on its metrics port (replicas' request counts for
        # status.load), which the policy opens to everyone (Prometheus scrapes it too).
        _network_policy(deployment, name=names.worker, role="worker", operator_ports=()),
    ]


def build_worker_disruption_budget(deployment: ModelDeployment) -> Manifest:
    """A voluntary disruption (a node drain) evicts one worker pod at a time: the next
    waits until the Deployment's replacement is ready, so Serve's replicas move one by one.

    `maxUnavailable` rather than `minAvailable`: the worker count follows Serve's
    autoscaling, and a fixed minimum would block every drain when the deployment has
    scaled down to it. The head is one pod and gets no budget: one would block drains
    for good. Not-ready workers (a crash loop, an image that does not pull) hold no
    replica, so they may always be evicted and never stall a drain.
    """
    names = names_for(deployment.metadata.name or "")
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(deployment, names.worker, "worker"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": _labels(deployment, "worker")},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def children_hash(
    deployment: ModelDeployment, config: dict[str, Any], settings: Settings, *, model_uri: str
) -> str:
    """What the Ray cluster is built from: the spec, the Serve config, the image, and the
    children as this operator's builders render them (the workers at a fixed size), so
    an upgraded operator whose builders render something new (a probe, a policy)
    re-applies running deployments once, with no version number to remember."""
    rendered = [
        build_head(deployment, settings=settings, model_uri=model_uri),
        build_workers(deployment, settings=settings, model_uri=model_uri, replicas=0),
        build_head_service(deployment),
        build_http_service(deployment),
        *build_network_policies(deployment),
        build_worker_disruption_budget(deployment),
    ]
    material = {
        "spec": deployment.spec.model_dump(mode="json"),
        "config": config,
        "image": pod_image(deployment.spec.resources, settings.runtime_image),
        "children": rendered,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
