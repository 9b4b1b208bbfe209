"""Local mode: run a ModelTraining on this machine through the same runtime pods run.

The resource renders to the same RunConfig the operator would put in a ConfigMap;
`nodes x max(1, gpusPerNode)` runtime processes start with torchrun's environment
(Gloo when there is more than one), `pvc://<claim>/...` maps to `<pvc root>/<claim>/...`,
and a progress bar follows rank 0's `/progress`.
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
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.render import render_run_config
from modelplane_runtime.contract import ExitCode, RunConfig

ENV_PVC_ROOT = "MODELPLANE_PVC_ROOT"
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
    result: dict[str, Any] | None
    stopped: str | None = None
    """Why the run was stopped early (a tuning trial the median rule stopped)."""


def pvc_root() -> Path:
    return Path(os.environ.get(ENV_PVC_ROOT, DEFAULT_PVC_ROOT)).resolve()


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
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        raise
    artifact = root / config.output_uri.removeprefix("pvc://") / name
    if config.output_uri.startswith("file://"):
        artifact = Path("/" + config.output_uri.removeprefix("file://").lstrip("/")) / name
    result_file = artifact / "result.json"
    result = json.loads(result_file.read_text()) if code == 0 and result_file.exists() else None
    return LocalRun(
        exit_code=code,
        config=config,
        artifact=artifact,
        logs=workdir,
        result=result,
        stopped=stopped,
    )


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
                loss = snap.get("loss")
                info = f"epoch {snap['epoch']}" + (f"  loss {loss:.4f}" if loss else "")
                bar.update(
                    task,
                    total=snap["total_steps"],
                    completed=snap["step"],
                    description=snap["phase"],
                    info=info,
                )
            time.sleep(0.3)


def _worst(codes: list[int]) -> int:
    """A config error anywhere is the answer; otherwise the first failure."""
    return int(ExitCode.CONFIG_ERROR) if ExitCode.CONFIG_ERROR in codes else codes[0]


def print_summary(run: LocalRun, console: Console) -> None:
    if run.exit_code != 0:
        kind = "configuration error" if run.exit_code == ExitCode.CONFIG_ERROR else "failure"
        console.print(f"[red]training ended with a {kind}[/red] (exit {run.exit_code}):")
        for log in sorted(run.logs.glob("rank-*.log")):
            lines = log.read_text(errors="replace").splitlines()
            errors = [ln for ln in lines if " ERROR " in ln] or lines[-5:]
            for line in errors[:5]:
                console.print(f"  {log.name}: {line}", markup=False)
        return
    table = Table(title=f"{run.config.name}: validation metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in (run.result or {}).get("metrics", {}).items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"artifact: {run.artifact}")
    console.print(f"digest:   {(run.result or {}).get('digest')}")
    console.print(f"curves:   {run.artifact / 'curves.png'}")


@dataclass
class LocalTrial:
    name: str
    params: dict[str, Any]
    run: LocalRun

    @property
    def metrics(self) -> dict[str, float]:
        return dict((self.run.result or {}).get("metrics", {}))


def run_tuning(training: ModelTraining, *, console: Console) -> list[LocalTrial]:
    """Run the search of spec.tuning locally, one trial after another, with the same
    suggestions the operator would make for the same history."""
    from modelplane_operator.api.training import TrialStatus  # noqa: PLC0415
    from modelplane_operator.status.tuning import (  # noqa: PLC0415
        apply_early_stopping,
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
    statuses: list[TrialStatus] = []
    while len(trials) < tuning.max_trials:
        suggestion = suggest(
            tuning,
            seed=training.spec.hyperparameters.seed,
            history=history(tuning, statuses),
            count=1,
        )
        if not suggestion:
            break  # a grid has no point left
        params = suggestion[0]
        trial = trial_name(name, len(trials))
        console.print(f"[bold]trial {len(trials) + 1}/{tuning.max_trials}[/bold] {params}")
        current = TrialStatus(name=trial, params=params, phase="Running")

        def stop_check(snapshot: dict[str, Any]) -> str | None:
            nonlocal current
            current = record_progress(tuning, current, snapshot)
            (*_, decided) = apply_early_stopping(tuning, [*statuses, current])
            return decided.reason if decided.phase == "Stopped" else None

        run = run_training(
            training, console=console, run_name=trial, hyperparameters=params, stop_check=stop_check
        )
        local = LocalTrial(name=trial, params=params, run=run)
        trials.append(local)
        phase = "Stopped" if run.stopped else "Succeeded" if run.exit_code == 0 else "Failed"
        statuses.append(
            current.model_copy(
                update={
                    "metrics": local.metrics,
                    "phase": phase,
                    "reason": run.stopped or "",
                    # Every epoch's objective (the run reports them all), not only
                    # those a progress poll caught.
                    "intermediate": {
                        **current.intermediate,
                        **(run.result or {}).get("objective_by_step", {}),
                    },
                }
            )
        )
        if run.exit_code == ExitCode.CONFIG_ERROR:
            break  # every other trial would fail the same way
    return trials


def best_trial(training: ModelTraining, trials: list[LocalTrial]) -> LocalTrial | None:
    """The trial with the best objective value, or None when none reported it."""
    tuning = training.spec.tuning
    if tuning is None:
        raise ValueError("best_trial needs spec.tuning")
    metric = tuning.objective.metric
    scored = [t for t in trials if metric in t.metrics]
    sign = 1.0 if tuning.objective.goal == "maximize" else -1.0
    return max(scored, key=lambda t: sign * t.metrics[metric]) if scored else None


def print_tuning_summary(
    training: ModelTraining, trials: list[LocalTrial], console: Console
) -> int:
    """The table of every trial and the best one; the exit code of the search."""
    tuning = training.spec.tuning
    if tuning is None:
        raise ValueError("print_tuning_summary needs spec.tuning")
    metric = tuning.objective.metric
    table = Table(
        title=f"{training.metadata.name}: {len(trials)} trials, objective "
        f"{metric} ({tuning.objective.goal})"
    )
    for column in ("trial", "parameters", metric, "result"):
        table.add_column(column)
    best = best_trial(training, trials)
    for trial in trials:
        value = trial.metrics.get(metric)
        table.add_row(
            trial.name + (" (best)" if trial is best else ""),
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in trial.params.items()
            ),
            f"{value:.4f}" if value is not None else "-",
            "stopped early"
            if trial.run.stopped
            else "ok"
            if trial.run.exit_code == 0
            else f"exit {trial.run.exit_code}",
        )
    console.print(table)
    if best is None:
        console.print("[red]no trial succeeded[/red]")
        failures = [t.run for t in trials if t.run.exit_code != 0]
        if failures:
            print_summary(failures[-1], console)
        return failures[-1].exit_code if failures else 1
    console.print(f"best: {best.name}; artifact: {best.run.artifact}")
    return 0
