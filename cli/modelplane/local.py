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


def run_training(training: ModelTraining, *, console: Console) -> LocalRun:
    """Train `training` locally; returns when every process has ended."""
    root = pvc_root()
    world = process_count(training)
    progress_port = _free_port()
    config = render_run_config(training, progress_port=progress_port)
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
        code = _follow(processes, progress_port, console)
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
    return LocalRun(exit_code=code, config=config, artifact=artifact, logs=workdir, result=result)


def _follow(processes: list[subprocess.Popen[bytes]], port: int, console: Console) -> int:
    """Draw progress until every process ends; the first failure stops the rest."""
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
                for process in processes:
                    if process.poll() is None:
                        process.terminate()
                for process in processes:
                    process.wait()
                return _worst(failed)
            if all(c == 0 for c in codes):
                bar.update(task, completed=bar.tasks[0].total or 1, description="done")
                return 0
            snap = _poll(port)
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
