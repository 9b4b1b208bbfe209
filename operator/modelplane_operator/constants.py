"""Every name the operator shares with the cluster, in one place."""

from __future__ import annotations

from typing import Final

GROUP: Final = "modelplane.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

KIND_TRAINING: Final = "ModelTraining"
PLURAL_TRAINING: Final = "modeltrainings"
SINGULAR_TRAINING: Final = "modeltraining"
SHORT_NAMES_TRAINING: Final = ("mt",)

KIND_DEPLOYMENT: Final = "ModelDeployment"
PLURAL_DEPLOYMENT: Final = "modeldeployments"
SINGULAR_DEPLOYMENT: Final = "modeldeployment"
SHORT_NAMES_DEPLOYMENT: Final = ("md",)

CATEGORIES: Final = ("modelplane",)

# The field manager of every server-side apply the operator makes.
FIELD_MANAGER: Final = "modelplane-operator"

# Labels on every child object.
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
MANAGED_BY: Final = "modelplane"
LABEL_TRAINING: Final = f"{GROUP}/training"
LABEL_DEPLOYMENT: Final = f"{GROUP}/deployment"
LABEL_TRIAL: Final = f"{GROUP}/trial"
LABEL_RUN: Final = f"{GROUP}/run"
"""The run a child belongs to: the training's own name, or one of its trials'."""
LABEL_ATTEMPT: Final = f"{GROUP}/attempt"
LABEL_ROLE: Final = f"{GROUP}/role"
OPERATOR_NAME: Final = "modelplane-operator"
"""The operator pod's `app.kubernetes.io/name`, as the chart's selectorLabels set it: the
Ray pods' NetworkPolicies admit the operator (to their dashboard) by it."""

# Annotations. kopf's own bookkeeping goes under this prefix, never into status.
ANNOTATION_PREFIX: Final = f"kopf.{GROUP}"
ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"
ANNOTATION_RESTARTS: Final = f"{GROUP}/restarts"
"""On a training Job: the failures counted against maxRestarts before this attempt."""
ANNOTATION_RUN_CONFIG: Final = f"{GROUP}/run-config"
"""On a training Job's pod template: the RunConfig JSON, which a downwardAPI volume
hands the runtime as a file (no ConfigMap to write per attempt)."""

# The operator's own settings (the chart sets them). What pods are told through their
# environment is named in modelplane_runtime.contract (ENV_*), which the runtime reads.
ENV_RUNTIME_IMAGE: Final = "MODELPLANE_RUNTIME_IMAGE"
ENV_PROGRESS_PORT: Final = "MODELPLANE_PROGRESS_PORT"
ENV_DASHBOARD_URL: Final = "MODELPLANE_DASHBOARD_URL"
ENV_METRICS_URL: Final = "MODELPLANE_METRICS_URL"
ENV_REPLICA_METRICS_URL: Final = "MODELPLANE_REPLICA_METRICS_URL"
ENV_RESULT_GRACE: Final = "MODELPLANE_RESULT_GRACE_SECONDS"
ENV_STORAGE_SECRET: Final = "MODELPLANE_STORAGE_SECRET"
"""The cluster's default Secret of s3:// credentials, by name, looked up in each
resource's namespace; unset, a resource with an s3:// URI must name its own."""
ENV_STORAGE_CACHE_LIMIT: Final = "MODELPLANE_STORAGE_CACHE_LIMIT"

# Where pods that read or write s3:// keep their objects: an emptyDir, named to the
# runtime by MODELPLANE_STORAGE_CACHE (modelplane_runtime.contract.ENV_STORAGE_CACHE).
STORAGE_CACHE_PATH: Final = "/var/cache/modelplane"
STORAGE_CACHE_VOLUME: Final = "storage-cache"

# Ports of the pods the operator creates (the runtime's own, PROGRESS_PORT and
# SERVE_HTTP_PORT, are in modelplane_runtime.contract).
MASTER_PORT: Final = 29500
"""torchrun's rendezvous on rank 0."""
GCS_PORT: Final = 6379
"""Ray's GCS on the head."""
DASHBOARD_PORT: Final = 8265
"""Ray's dashboard (and its Serve REST API) on the head."""
METRICS_PORT: Final = 8080
"""Ray's Prometheus metrics export on every Ray pod."""
AGENT_PORT: Final = 52365
"""Ray's dashboard agent on every node: `/api/local_raylet_healthz`."""

# Condition types.
COND_READY: Final = "Ready"
COND_PROGRESSING: Final = "Progressing"
COND_FAILED: Final = "Failed"
COND_SUSPENDED: Final = "Suspended"
COND_MODEL_ACCEPTED: Final = "ModelAccepted"
COND_SPEC_CHANGE_IGNORED: Final = "SpecChangeIgnored"
# kstatus (what Flux and kpt read, and Argo CD's health checks can): Reconciling True
# while the operator works toward the spec, Stalled True when it cannot without a change.
COND_RECONCILING: Final = "Reconciling"
COND_STALLED: Final = "Stalled"
# Kubernetes' own pod condition, set before it evicts, preempts or deletes a pod for
# reasons of its own (node drain, taint, preemption, pod GC).
POD_DISRUPTION_TARGET: Final = "DisruptionTarget"

# Condition reasons: one CamelCase word a program can switch on.
REASON_CREATED: Final = "Created"
REASON_WAITING_FOR_PODS: Final = "WaitingForPods"
REASON_UNSCHEDULABLE: Final = "Unschedulable"
REASON_IMAGE_PULL: Final = "ImagePullFailed"
REASON_CRASH_LOOP: Final = "CrashLoopBackOff"
REASON_CONTAINER_CONFIG: Final = "ContainerConfigError"
REASON_OOM_KILLED: Final = "OOMKilled"
REASON_QUOTA_EXCEEDED: Final = "QuotaExceeded"
REASON_TRAINING: Final = "Training"
REASON_SUCCEEDED: Final = "Succeeded"
REASON_CONFIG_ERROR: Final = "ConfigError"
REASON_RESTARTING: Final = "Restarting"
REASON_RESTARTS_EXHAUSTED: Final = "RestartsExhausted"
REASON_SUSPENDED: Final = "Suspended"
REASON_IMMUTABLE_FIELD: Final = "ImmutableFieldChanged"
REASON_WAITING_FOR_TRAINING: Final = "WaitingForTraining"
REASON_METRICS_BELOW_THRESHOLD: Final = "MetricsBelowThreshold"
REASON_MODEL_ACCEPTED: Final = "ModelAccepted"
REASON_ROLLING_OUT: Final = "RollingOut"
REASON_SERVING: Final = "Serving"
REASON_APPLICATION_ERROR: Final = "ApplicationError"
REASON_SCALED: Final = "Scaled"
# A ModelTraining with spec.tuning: the search runs, or ends without a winner.
REASON_SEARCHING: Final = "Searching"
REASON_TOO_MANY_FAILED: Final = "TooManyFailedTrials"
REASON_NO_TRIAL_SUCCEEDED: Final = "NoTrialSucceeded"
# Terminal: the spec cannot run as written; nothing is retried until it changes.
REASON_INVALID_SPEC: Final = "InvalidSpec"
# Terminal: the Job completed but rank 0 left no readable result (after a grace period).
REASON_RESULT_MISSING: Final = "ResultMissing"
# Terminal for a ModelDeployment: its fromTraining names a training that Failed.
REASON_TRAINING_FAILED: Final = "TrainingFailed"
# Terminal for a ModelDeployment: requireMetrics names a metric the model does not report.
REASON_METRIC_MISSING: Final = "MetricMissing"
# Terminal for a ModelDeployment: its model's task is not one serving answers (masked-lm).
REASON_UNSERVABLE_MODEL: Final = "UnservableModel"

# status.engine of a classifier's deployment: one forward pass per batch of requests
# (spec.batching). A language model's is the contract's GENERATION_ENGINE.
ENGINE_DYNAMIC_BATCHING: Final = "torch-dynamic-batching"
