"""What the API server cannot refuse but a pod would: judged from the spec alone.

The CRD's schema and CEL rules refuse what they can see in one object. Some problems
need knowledge the API server does not have: the data sets the runtime ships and the
kind of examples each holds, the limits of a hyperparameter that a tuning space only
names, the number of training processes a batch is split over. Left alone, each ends in
a pod's config error minutes later, or in every trial of a search failing alike. The
operator (before it creates any child) and local mode (before it starts any process) ask
`judge_training`; each problem it finds names the field and the fix, and the resource
ends Failed with reason InvalidSpec.

Pure: no I/O, no clock; the same spec always gives the same problems.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pydantic import ValidationError

from modelplane_operator.api.common import StorageSpec, is_s3
from modelplane_operator.api.deployment import ModelDeploymentSpec
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.api.training import Hyperparameters, ModelTrainingSpec, ParamSpec
from modelplane_operator.validation import Problem
from modelplane_runtime.contract import BUILTIN_DATA_KINDS, DATA_KIND_BY_TASK

# A PersistentVolumeClaim's name is a DNS-1123 subdomain.
CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CLAIM_NAME_MAX = 253


class SpecError(ValueError):
    """A spec the API accepted that cannot be built or run as written. Builders raise it;
    the reconcile turns it into the terminal InvalidSpec status instead of retrying."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.problem = Problem(field, message)


def judge_training(training: ModelTraining) -> list[Problem]:
    """Every problem of `training`'s spec that only a pod (or a trial) would find."""
    spec = training.spec
    return [
        *_data_problems(spec),
        *_storage_problems(spec),
        *_batch_problems(spec),
        *_space_problems(spec),
    ]


def _data_problems(spec: ModelTrainingSpec) -> Iterator[Problem]:
    """builtin:// data sets the runtime does not ship, or whose kind the task cannot read."""
    needed = DATA_KIND_BY_TASK[spec.model.task]
    sources = [("spec.data.train.uri", spec.data.train.uri)]
    if spec.data.validation is not None:
        sources.append(("spec.data.validation.uri", spec.data.validation.uri))
    for field, uri in sources:
        scheme, _, name = uri.partition("://")
        if scheme != "builtin":
            continue
        kind = BUILTIN_DATA_KINDS.get(name)
        if kind is None:
            known = ", ".join(f"builtin://{n}" for n in sorted(BUILTIN_DATA_KINDS))
            yield Problem(field, f"unknown built-in data set {name!r}; known: {known}")
        elif kind != needed:
            fitting = [f"builtin://{n}" for n, k in BUILTIN_DATA_KINDS.items() if k == needed]
            yield Problem(
                field,
                f"builtin://{name} holds {kind} data, but {spec.model.task} needs {needed} "
                f"data (use {' or '.join(fitting) or 'a file of ' + needed + ' data'})",
            )


def training_uris(spec: ModelTrainingSpec) -> dict[str, str | None]:
    """Every storage location of a training, by field."""
    return {
        "spec.data.train.uri": spec.data.train.uri,
        "spec.data.validation.uri": spec.data.validation.uri if spec.data.validation else None,
        "spec.output.uri": spec.output.uri,
        "spec.model.init.uri": spec.model.init.uri if spec.model.init else None,
    }


def deployment_uris(spec: ModelDeploymentSpec, *, model_uri: str | None) -> dict[str, str | None]:
    """Every storage location a deployment's replicas read, by field: the model (`model_uri`,
    the resolved artifact; None while a fromTraining model's place is not known) and each
    LoRA adapter."""
    uris: dict[str, str | None] = {"spec.model.uri": model_uri}
    for i, adapter in enumerate(spec.generation.adapters if spec.generation else ()):
        uris[f"spec.generation.adapters[{i}].uri"] = adapter.uri
    return uris


def unreachable_without_default(resource: ModelTraining | ModelDeployment) -> Problem | None:
    """The credentials problem of `resource` on a cluster whose operator has no default
    Secret: what `modelplane validate` warns of, since the API server accepts it and the
    operator decides by its own setting. (A fromTraining model's place is not known yet.)"""
    if isinstance(resource, ModelTraining):
        return credentials_problem(
            training_uris(resource.spec), resource.spec.storage, default_secret=""
        )
    uris = deployment_uris(resource.spec, model_uri=resource.spec.model.uri)
    return credentials_problem(uris, resource.spec.storage, default_secret="")


def claim_problem(field: str, uri: str | None) -> Problem | None:
    """A pvc:// URI whose claim no pod can mount (none, or not a claim's name), or None.
    The one rule: the judge asks it before anything exists, the builders before they
    mount (so a deployment's model.uri is held to it too)."""
    scheme, _, rest = (uri or "").partition("://")
    if scheme != "pvc":
        return None
    claim = rest.partition("/")[0]
    if not claim:
        return Problem(field, f"{uri!r} names no claim; use pvc://<claim>/<path>")
    if len(claim) > CLAIM_NAME_MAX or not CLAIM_NAME.match(claim):
        return Problem(
            field,
            f"{claim!r} is not a PersistentVolumeClaim name (lower-case letters, digits, "
            "'-' and '.', starting and ending with a letter or digit)",
        )
    return None


def storage_secret(storage: StorageSpec | None, default: str) -> str:
    """The Secret whose keys the pods get for s3://: the resource's own, else the
    operator's default (empty when there is none)."""
    return storage.secret_ref.name if storage is not None else default


def credentials_problem(
    uris: dict[str, str | None], storage: StorageSpec | None, *, default_secret: str
) -> Problem | None:
    """An s3:// URI with no credentials to reach it, or None. The API server cannot tell
    (it does not know the operator's default Secret), so the builders ask before they
    build, and the resource ends with InvalidSpec instead of pods that fail to start."""
    s3_fields = [field for field, uri in uris.items() if is_s3(uri)]
    if not s3_fields or storage_secret(storage, default_secret):
        return None
    return Problem(
        s3_fields[0],
        f"{uris[s3_fields[0]]!r} is in object storage and nothing says which credentials "
        "reach it: set spec.storage.secretRef.name to a Secret in this namespace with "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or install the operator with a "
        "cluster default (the chart's storage.defaultSecretName)",
    )


def _storage_problems(spec: ModelTrainingSpec) -> Iterator[Problem]:
    """pvc:// URIs no pod can mount. (The API refuses a builtin:// output or init
    location itself.)"""
    for field, uri in training_uris(spec).items():
        if (problem := claim_problem(field, uri)) is not None:
            yield problem


def _batch_problems(spec: ModelTrainingSpec) -> Iterator[Problem]:
    """The global batch is split evenly over every training process (nodes x
    gpusPerNode, one process per CPU-only node): a batch that does not divide fails in
    every rank's sampler."""
    processes = spec.resources.nodes * max(1, spec.resources.gpus_per_node)
    if processes == 1:
        return
    searched = spec.tuning.space.get("batchSize") if spec.tuning else None
    candidates: list[tuple[str, float]] = []
    if searched is None:
        candidates = [("spec.hyperparameters.batchSize", spec.hyperparameters.batch_size)]
    elif searched.type == "choice":
        candidates = [
            (f"spec.tuning.space.batchSize.values[{i}]", value)
            for i, value in enumerate(searched.values or [])
        ]
    else:
        # An int range samples every integer between its bounds, most of which do not
        # divide: trial after trial would fail in its sampler.
        yield Problem(
            "spec.tuning.space.batchSize",
            f"an int range samples batch sizes that do not divide over the {processes} "
            "training processes (resources.nodes x gpusPerNode); search type choice over "
            f"multiples of {processes} instead",
        )
    for field, value in candidates:
        if value % processes:
            yield Problem(
                field,
                f"batch size {value:g} must be divisible by the {processes} training "
                "processes (resources.nodes x gpusPerNode)",
            )


def _space_problems(spec: ModelTrainingSpec) -> Iterator[Problem]:
    """Each bound and candidate of the tuning space, held to the limits the hyperparameter
    itself has (the same field of spec.hyperparameters): a trial sampled outside them
    would fail in its pod, and so would every other trial sampled there."""
    if spec.tuning is None:
        return
    for name, param in spec.tuning.space.items():
        field = f"spec.tuning.space.{name}"
        for where, value in _candidates(param):
            if (message := _refusal(name, value)) is not None:
                yield Problem(f"{field}.{where}", f"{value!r} is not a valid {name}: {message}")


def _candidates(param: ParamSpec) -> Iterator[tuple[str, float | int | str]]:
    if param.type == "choice":
        for i, number in enumerate(param.values or []):
            yield f"values[{i}]", number
        for i, option in enumerate(param.options or []):
            yield f"options[{i}]", option
        return
    for where, bound in (("min", param.min), ("max", param.max)):
        if bound is not None:
            # An int range samples integers between its bounds: they must be integers.
            yield where, (int(bound) if param.type == "int" and bound.is_integer() else bound)


def _refusal(name: str, value: float | int | str) -> str | None:
    """Why spec.hyperparameters would refuse `name: value`, or None."""
    try:
        Hyperparameters.model_validate({name: value})
    except ValidationError as exc:
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return None
