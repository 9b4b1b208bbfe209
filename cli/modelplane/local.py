"""Local mode: run a ModelTraining on this machine through the same runtime pods run.

The resource renders to the same RunConfig the operator would put in the Job's pods;
`nodes x max(1, gpusPerNode)` runtime processes start with torchrun's environment
(Gloo when there is more than one), URIs resolve as the runtime resolves them (with
`pvc://<claim>/...` under a pvc root of local mode's own, and `s3://` through a storage
cache of its own with the caller's AWS_* credentials), and a progress bar follows
rank 0's `/progress`. A search's trials end, and the search is judged, by the operator's
own rules (`conclude_trial`, `derive_tuning_status`): the same runs give the same verdict
here and on a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from modelplane_operator.api.common import StorageSpec, is_s3
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.api.training import ModelTrainingStatus, TrialStatus
from modelplane_operator.constants import COND_READY, REASON_RESULT_MISSING
from modelplane_operator.judge import training_uris
from modelplane_operator.render import render_run_config
from modelplane_runtime.contract import (
    ENV_PVC_ROOT,
    ENV_STORAGE_CACHE,
    RESULT_FILE,
    S3_SECRET_KEYS_REQUIRED,
    ExitCode,
    RunConfig,
    TrainingResult,
)
from modelplane_runtime.errors import ConfigError, StorageError
from modelplane_runtime.storage import local_path

DEFAULT_PVC_ROOT = Path("runs")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRun:
    """What a finished local run left behind."""

    exit_code: int
    config: RunConfig
    artifact: Path
    logs: Path
    result: TrainingResult | None
    """Rank 0's result (the file beside the artifact), when the run succeeded and left a
    valid one."""
    stopped: str | None = None
    """Why the run was stopped early (a tuning trial the median rule stopped)."""
    artifact_uri: str | None = None
    """The artifact's s3:// location when it went to object storage; `artifact` is then
    the local folder its result was downloaded to."""

    @property
    def location(self) -> str:
        """Where the artifact is: its s3:// URI, or its folder on this machine."""
        return self.artifact_uri or str(self.artifact)


def pvc_root() -> Path:
    """Where local mode keeps `pvc://` claims (./runs unless MODELPLANE_PVC_ROOT says)."""
    return Path(os.environ.get(ENV_PVC_ROOT, DEFAULT_PVC_ROOT)).resolve()


def storage_cache() -> Path:
    """Where local mode's runtime processes keep s3:// objects: a folder beside its pvc
    root (./runs/.local/storage-cache unless MODELPLANE_STORAGE_CACHE says)."""
    configured = os.environ.get(ENV_STORAGE_CACHE)
    return Path(configured).resolve() if configured else pvc_root() / ".local" / "storage-cache"


class StorageCredentialsError(RuntimeError):
    """An s3:// URI in local mode, and no credentials in this environment to reach it."""


def resource_uris(resource: ModelTraining | ModelDeployment) -> dict[str, str | None]:
    """The storage locations a resource names, by field (a fromTraining model's place is
    known only once its training ran)."""
    if isinstance(resource, ModelTraining):
        return training_uris(resource.spec)
    return {"spec.model.uri": resource.spec.model.uri}


def credentials_refusal(uris: dict[str, str | None]) -> str | None:
    """Why local mode cannot reach the s3:// URIs among `uris` (no credentials in this
    environment), or None."""
    s3 = [field for field, uri in uris.items() if is_s3(uri)]
    missing = [key for key in S3_SECRET_KEYS_REQUIRED if not os.environ.get(key)]
    if not s3 or not missing:
        return None
    return (
        f"{s3[0]}: {uris[s3[0]]} is in object storage, and local mode reads its "
        f"credentials from this environment: set {' and '.join(missing)} (and "
        "AWS_ENDPOINT_URL for an S3-compatible store, AWS_REGION if it needs one)"
    )


def check_storage_credentials(
    uris: dict[str, str | None], storage: StorageSpec | None, *, console: Console
) -> None:
    """Local mode reads and writes s3:// with the caller's AWS_* environment, the same
    variables a pod gets from its Secret. It cannot read a cluster Secret: a
    spec.storage.secretRef is noted and the environment used instead. Raises
    StorageCredentialsError when an s3:// URI is used without AWS_ACCESS_KEY_ID."""
    if (refusal := credentials_refusal(uris)) is not None:
        raise StorageCredentialsError(refusal)
    if storage is not None and any(is_s3(uri) for uri in uris.values()):
        console.print(
            f"note: spec.storage.secretRef names Secret {storage.secret_ref.name!r}, which "
            "local mode cannot read (there is no cluster): s3:// uses the AWS_* "
            "credentials of this environment instead",
            markup=False,
        )


def process_count(training: ModelTraining) -> int:
    resources = training.spec.resources
    return resources.nodes * max(1, resources.gpus_per_node)


def _poll(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=1) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data
    except (urllib.error.URLError, OSError, ValueError):
        return None


StopCheck = Callable[[dict[str, Any]], str | None]
"""Given rank 0's progress, a reason to stop the run now, or None."""


def run_training(
    training: ModelTraining,
    *,
    console: Console,
    run_name: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    stop_check: StopCheck | None = None,
) -> LocalRun:
    """Train `training` locally (or one tuning trial of it, named `run_name`, with
    `hyperparameters`); returns when every process has ended."""
    root = pvc_root()
    check_storage_credentials(training_uris(training.spec), training.spec.storage, console=console)
    world = process_count(training)
    progress_port = _free_port()
    config = render_run_config(
        training, progress_port=progress_port, run_name=run_name, hyperparameters=hyperparameters
    )
    name = config.name
    workdir = root / ".local" / name
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "run-config.json"
    config_path.write_text(config.to_json())
    env = {
        **os.environ,
        ENV_PVC_ROOT: str(root),
        ENV_STORAGE_CACHE: str(storage_cache()),
        "MODELPLANE_PROGRESS_HOST": "127.0.0.1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // world)),
    }
    per_node = max(1, training.spec.resources.gpus_per_node)
    console.print(
        f"[bold]{name}[/bold]: {training.spec.model.architecture} on "
        f"{training.spec.data.train.uri}, {world} process(es); logs in {workdir}"
    )
    processes = []
    for rank in range(world):
        log_file = (workdir / f"rank-{rank}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "modelplane_runtime", "train", "--config", str(config_path)],
                env={
                    **env,
                    "RANK": str(rank),
                    "LOCAL_RANK": str(rank % per_node),
                    "GROUP_RANK": str(rank // per_node),
                },
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        log_file.close()
    try:
        code, stopped = _follow(processes, progress_port, console, stop_check)
    except BaseException:
        # Ctrl-C, or anything else that ends the wait: the training processes end with it
        # rather than train on unwatched.
        _stop_all(processes)
        raise
    artifact_uri = None
    if is_s3(config.output_uri):
        # In object storage: the result comes down through the runtime's own client.
        artifact_uri = f"{config.output_uri.rstrip('/')}/{name}"
        artifact = workdir / "artifact"
        try:
            result = fetch_result(artifact_uri, artifact) if code == 0 else None
        except (ConfigError, StorageError) as error:
            console.print(f"could not read the result: {error}", markup=False)
            result = None
    else:
        # Where the runtime put it: its own resolution of output.uri, under the root it got.
        artifact = local_path(config.output_uri, field="output.uri", root=root) / name
        result = read_result(artifact) if code == 0 else None
    return LocalRun(
        exit_code=code,
        config=config,
        artifact=artifact,
        logs=workdir,
        result=result,
        stopped=stopped,
        artifact_uri=artifact_uri,
    )


def fetch_result(artifact_uri: str, directory: Path) -> TrainingResult | None:
    """The TrainingResult published beside the s3:// artifact, downloaded into
    `directory`; None when it is not there (the run never published)."""
    from modelplane_runtime import objectstore  # noqa: PLC0415  (boto3: only for s3://)

    location = objectstore.parse(artifact_uri, field="output.uri").child(RESULT_FILE)
    if not objectstore.exists(location, field="output.uri"):
        return None
    objectstore.download_file(location, directory / RESULT_FILE, field="output.uri")
    return read_result(directory)


def read_result(artifact: Path) -> TrainingResult | None:
    """The TrainingResult a run wrote beside its artifact; None when it is missing or not
    a valid result (the operator's rank0_result reads the termination message the same
    way: no result is no result, whatever the exit code)."""
    try:
        return TrainingResult.model_validate_json((artifact / RESULT_FILE).read_text())
    except (OSError, ValidationError):
        return None


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait()


def _follow(
    processes: list[subprocess.Popen[bytes]],
    port: int,
    console: Console,
    stop_check: StopCheck | None = None,
) -> tuple[int, str | None]:
    """Draw progress until every process ends; the first failure stops the rest, and so
    does `stop_check` when it gives a reason. Returns (exit code, stop reason)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting", total=None, info="")
        while True:
            codes = [p.poll() for p in processes]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                _stop_all(processes)
                return _worst(failed), None
            if all(c == 0 for c in codes):
                bar.update(task, completed=bar.tasks[0].total or 1, description="done")
                return 0, None
            snap = _poll(port)
            reason = stop_check(snap) if snap and stop_check else None
            if reason:
                _stop_all(processes)
                bar.update(task, description="stopped")
                return 0, reason
            if snap and snap.get("total_steps"):
                bar.update(
                    task,
                    total=snap["total_steps"],
                    completed=snap["step"],
                    description=snap["phase"],
                    info=progress_info(snap),
                )
            time.sleep(0.3)


def progress_info(snap: dict[str, Any]) -> str:
    """The text beside the bar: epoch, loss, and throughput (tokens/s for a language
    model, whose samples differ in length; samples/s otherwise)."""
    info = f"epoch {snap['epoch']}"
    loss = snap.get("loss")
    if loss:
        info += f"  loss {loss:.4f}"
    tokens, samples = snap.get("tokens_per_second"), snap.get("samples_per_second")
    if tokens:
        info += f"  {tokens:,.0f} tokens/s"
    elif samples:
        info += f"  {samples:,.0f} samples/s"
    return info


def _worst(codes: list[int]) -> int:
    """A config error anywhere is the answer; otherwise the first failure."""
    return int(ExitCode.CONFIG_ERROR) if ExitCode.CONFIG_ERROR in codes else codes[0]


def failure(run: LocalRun) -> str | None:
    """Why the run failed, in a sentence (its first error line), or None when it exited 0."""
    if run.exit_code == 0:
        return None
    lines = _error_lines(run.logs)
    return f"{_kind(run)} (exit {run.exit_code})" + (f": {lines[0][1]}" if lines else "")


def _kind(run: LocalRun) -> str:
    return "configuration error" if run.exit_code == ExitCode.CONFIG_ERROR else "failure"


def _error_lines(logs: Path) -> list[tuple[str, str]]:
    """(log name, line) of each rank's errors, or its last lines when it logged none."""
    found = []
    for log in sorted(logs.glob("rank-*.log")):
        lines = log.read_text(errors="replace").splitlines()
        errors = [ln for ln in lines if " ERROR " in ln] or lines[-5:]
        found += [(log.name, line) for line in errors[:5]]
    return found


def print_summary(run: LocalRun, console: Console) -> None:
    if run.exit_code != 0:
        console.print(f"[red]training ended with a {_kind(run)}[/red] (exit {run.exit_code}):")
        for name, line in _error_lines(run.logs):
            console.print(f"  {name}: {line}", markup=False)
        return
    if run.result is None:
        console.print(
            f"[red]training ended without a result[/red] (Failed, {REASON_RESULT_MISSING} on "
            f"a cluster): {run.location.rstrip('/')}/{RESULT_FILE} is missing or not a "
            "TrainingResult"
        )
        return
    table = Table(title=f"{run.config.name}: validation metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in run.result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"artifact: {run.location}")
    console.print(f"digest:   {run.result.digest}")
    console.print(f"curves:   {run.location.rstrip('/')}/curves.png")


def exit_code(run: LocalRun) -> int:
    """The exit code of `modelplane run` for one training: the runtime's, or 1 when it
    exited 0 without a result (Failed on a cluster too)."""
    return run.exit_code or (0 if run.result is not None else 1)


@dataclass
class LocalTrial:
    run: LocalRun
    status: TrialStatus
    """The trial as the operator would record it (`conclude_trial` of the run)."""


@dataclass
class LocalSearch:
    """A search run here: its trials and the status the operator would derive from them."""

    trials: list[LocalTrial]
    status: ModelTrainingStatus

    @property
    def best(self) -> LocalTrial | None:
        return next((t for t in self.trials if t.status.name == self.status.best_trial), None)


def run_tuning(training: ModelTraining, *, console: Console) -> LocalSearch:
    """Run the search of spec.tuning locally, one trial after another, with the same
    suggestions the operator would make for the same history. Like the operator, no new
    trial starts once more than maxFailedTrials have failed."""
    from modelplane_operator.status.tuning import (  # noqa: PLC0415
        apply_early_stopping,
        conclude_trial,
        derive_tuning_status,
        history,
        record_progress,
        trial_name,
    )
    from modelplane_operator.tuning import suggest  # noqa: PLC0415

    tuning = training.spec.tuning
    if tuning is None:
        raise ValueError("run_tuning needs spec.tuning")
    name = training.metadata.name or "training"
    trials: list[LocalTrial] = []
    exhausted = False
    while (
        len(trials) < tuning.max_trials
        and sum(t.status.phase == "Failed" for t in trials) <= tuning.max_failed_trials
    ):
        statuses = [t.status for t in trials]
        suggestion = suggest(
            tuning,
            seed=training.spec.hyperparameters.seed,
            history=history(tuning, statuses),
            count=1,
        )
        if not suggestion:
            exhausted = True  # a grid has no point left
            break
        params = suggestion[0]
        trial = trial_name(name, len(trials))
        console.print(f"[bold]trial {len(trials) + 1}/{tuning.max_trials}[/bold] {params}")
        current = TrialStatus(name=trial, params=params, phase="Running")

        def stop_check(
            snapshot: dict[str, Any], earlier: list[TrialStatus] = statuses
        ) -> str | None:
            nonlocal current
            current = record_progress(tuning, current, snapshot)
            (*_, decided) = apply_early_stopping(tuning, [*earlier, current])
            return decided.reason if decided.phase == "Stopped" else None

        run = run_training(
            training, console=console, run_name=trial, hyperparameters=params, stop_check=stop_check
        )
        ended = conclude_trial(
            current, result=run.result, failure=failure(run), stopped=run.stopped
        )
        trials.append(LocalTrial(run=run, status=ended))
    status = derive_tuning_status(
        training, [t.status for t in trials], exhausted=exhausted, now=datetime.now(tz=UTC)
    ).status
    return LocalSearch(trials=trials, status=status)


def _outcome(trial: LocalTrial) -> str:
    if trial.status.phase == "Stopped":
        return "stopped early"
    if trial.status.phase == "Succeeded":
        return "ok"
    return f"exit {trial.run.exit_code}" if trial.run.exit_code else "no result"


def print_tuning_summary(training: ModelTraining, search: LocalSearch, console: Console) -> int:
    """The table of every trial, the best one, and the search's verdict (the phase and
    reason a cluster would show); returns the exit code of the search."""
    tuning = training.spec.tuning
    if tuning is None:
        raise ValueError("print_tuning_summary needs spec.tuning")
    metric = tuning.objective.metric
    table = Table(
        title=f"{training.metadata.name}: {len(search.trials)} trials, objective "
        f"{metric} ({tuning.objective.goal})"
    )
    for column in ("trial", "parameters", metric, "result"):
        table.add_column(column)
    best = search.best
    for trial in search.trials:
        value = trial.status.metrics.get(metric)
        table.add_row(
            trial.status.name + (" (best)" if trial is best else ""),
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in trial.status.params.items()
            ),
            f"{value:.4f}" if value is not None else "-",
            _outcome(trial),
        )
    console.print(table)
    if search.status.phase == "Succeeded" and best is not None:
        console.print(f"best: {best.status.name}; artifact: {best.run.location}")
        return 0
    ready = next((c for c in search.status.conditions if c.type == COND_READY), None)
    verdict = f"{search.status.phase} ({ready.reason})" if ready else str(search.status.phase)
    console.print(Text.assemble((verdict, "red"), f": {ready.message if ready else ''}"))
    failed = [t.run for t in search.trials if t.status.phase == "Failed"]
    if failed:
        print_summary(failed[-1], console)
    return exit_code(failed[-1]) if failed else 1
