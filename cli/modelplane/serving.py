"""Local mode for a ModelDeployment: resolve the model, judge it as the operator does, run
the runtime's Serve app on this machine, print the endpoint, answer a few inputs if asked.

The verdict before anything starts is the operator's own (`derive_deployment_status` of a
deployment whose model is resolved: the requireMetrics gate for a `fromTraining` model,
InvalidSpec for a spec its builders refuse), and the Serve config is its rendering
(`render_serve_config`), so what runs here is what the Ray pods run. A `model.uri` model
is gated where a cluster gates it: its replica reads the model card and refuses to start
below requireMetrics, which is Rejected here as there. A local training leaves a record
(`<pvc root>/.local/trainings/<name>.json`, its TrainingResult: the artifact and metrics
its status would hold), which is how `fromTraining` finds its artifact without a cluster.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from modelplane.local import (
    StorageCredentialsError,
    check_storage_credentials,
    pvc_root,
    storage_cache,
)
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.constants import (
    COND_READY,
    REASON_INVALID_SPEC,
    REASON_METRICS_BELOW_THRESHOLD,
)
from modelplane_operator.serve_config import ResolvedModel, render_serve_config
from modelplane_operator.status.serving import (
    ObservedDeployment,
    derive_deployment_status,
    replica_refusal,
    summarize_serve_message,
)
from modelplane_operator.validation import Problem
from modelplane_runtime.contract import ENV_PVC_ROOT, ENV_STORAGE_CACHE, TrainingResult

READY_TIMEOUT_S = 300.0
EXIT_REJECTED = 4
EXIT_FAILED = 3


class LocalServeError(Exception):
    """The deployment cannot start locally; the message says why and what to do.
    `serve_message`: Serve's own account when it reported the failure (what a cluster's
    head reports to the operator)."""

    def __init__(self, message: str, *, serve_message: str = "") -> None:
        super().__init__(message)
        self.serve_message = serve_message


class RejectedError(LocalServeError):
    """The deployment is Rejected, with the reason and message a cluster would give."""

    def __init__(self, reason: str, message: str, *, serve_message: str = "") -> None:
        super().__init__(message, serve_message=serve_message)
        self.reason = reason


def _record_path(name: str) -> Path:
    return pvc_root() / ".local" / "trainings" / f"{name}.json"


def record_training(name: str, result: TrainingResult) -> Path:
    """Remember a Succeeded local training (its TrainingResult: the artifact and metrics
    its status would hold on a cluster) for `fromTraining`."""
    path = _record_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.model_dump_json(indent=2))
    return path


def resolve_model(deployment: ModelDeployment) -> ResolvedModel:
    """The model as the operator resolves it: a `fromTraining` model from the training's
    result (here its local record), a `uri` model as it is (only its replica reads it)."""
    source = deployment.spec.model
    if source.from_training is None:
        return ResolvedModel(uri=source.uri or "", digest="", metrics={})
    path = _record_path(source.from_training)
    if not path.is_file():
        raise LocalServeError(
            f"model.fromTraining: no local training named {source.from_training!r} has "
            f"succeeded under {pvc_root()}; run `modelplane run` on its file first"
        )
    try:
        result = TrainingResult.model_validate_json(path.read_text())
    except ValidationError as error:
        raise LocalServeError(
            f"model.fromTraining: the record of {source.from_training!r} ({path}) is not "
            f"a TrainingResult; run `modelplane run` on its file again ({error})"
        ) from error
    return ResolvedModel(uri=result.artifact_uri, digest=result.digest, metrics=result.metrics)


def judge(deployment: ModelDeployment, model: ResolvedModel) -> None:
    """Raise RejectedError when the operator would reject the deployment with this model
    before rolling anything out: its own phase machine decides."""
    # As the API server would store it: the builders name their owner by uid.
    metadata = deployment.metadata.model_copy(
        update={
            "namespace": deployment.metadata.namespace or "default",
            "uid": deployment.metadata.uid or "local",
        }
    )
    stored = deployment.model_copy(update={"metadata": metadata})
    observed = ObservedDeployment(model=model, endpoint="")
    decision = derive_deployment_status(stored, observed, now=datetime.now(tz=UTC))
    if not decision.roll_out:
        ready = next(c for c in decision.status.conditions if c.type == COND_READY)
        raise RejectedError(ready.reason, ready.message)


def spec_problems(deployment: ModelDeployment) -> list[Problem]:
    """What the operator would reject with reason InvalidSpec once the model is resolved,
    judged for a stand-in model that meets requireMetrics exactly (so only the spec is
    judged, not a model that does not exist yet)."""
    stand_in = ResolvedModel(
        uri=deployment.spec.model.uri or "pvc://models/stand-in",
        digest="",
        metrics=dict(deployment.spec.require_metrics),
    )
    try:
        judge(deployment, stand_in)
    except RejectedError as rejected:
        if rejected.reason == REASON_INVALID_SPEC:
            return [Problem("", str(rejected))]
    return []


def _for_this_machine(deployment: ModelDeployment, console: Console) -> ModelDeployment:
    """The deployment as this machine can run it: CPU serving when it has no GPU."""
    spec = deployment.spec
    has_gpu = Path("/dev/nvidia0").exists()
    if spec.resources.gpus_per_replica > 0 and not has_gpu:
        console.print(
            f"[yellow]note:[/yellow] {spec.resources.gpus_per_replica} GPU(s) per replica "
            "asked for, this machine has none: serving on the CPU"
        )
        dtype = "bf16" if spec.optimization.dtype == "fp16" else spec.optimization.dtype
        spec = spec.model_copy(
            update={
                "resources": spec.resources.model_copy(update={"gpus_per_replica": 0}),
                "optimization": spec.optimization.model_copy(update={"dtype": dtype}),
            }
        )
    return deployment.model_copy(update={"spec": spec})


class LocalServer:
    """A running local Serve process and the events it prints."""

    def __init__(self, process: subprocess.Popen[str], config_path: Path, log_path: Path) -> None:
        self.process = process
        self.config_path = config_path
        self.log_path = log_path
        self.endpoint = ""
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stdout
        for line in stream if stream is not None else ():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                self._events.put(event)
        self.process.wait()
        self._events.put({"event": "exited", "code": self.process.returncode})

    def next_event(self, timeout_s: float) -> dict[str, Any]:
        """The runner's next event line (ready, redeploying, failed, exited, ...)."""
        try:
            return self._events.get(timeout=timeout_s)
        except queue.Empty:
            return {"event": "timeout", "message": f"no event within {timeout_s:.0f} s"}

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGINT, not SIGTERM: Ray's fatal-signal handler logs a stack trace for
            # SIGTERM; both reach the runner's handler, which shuts Ray down.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_server(
    config: dict[str, Any],
    *,
    workdir: Path,
    num_cpus: int | None = None,
    metrics_port: int | None = None,
    dashboard_port: int | None = None,
    env: dict[str, str] | None = None,
) -> LocalServer:
    """Start `python -m modelplane_runtime serve` on `config`; return once it serves.

    Raises LocalServeError with Serve's own message when the application fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "serve-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "serve.log"
    command = [sys.executable, "-m", "modelplane_runtime", "serve", "--config", str(config_path)]
    if num_cpus:
        command += ["--num-cpus", str(num_cpus)]
    if metrics_port:
        command += ["--metrics-port", str(metrics_port)]
    if dashboard_port:
        command += ["--dashboard-port", str(dashboard_port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            env={
                **os.environ,
                ENV_PVC_ROOT: str(pvc_root()),
                ENV_STORAGE_CACHE: str(storage_cache()),
                **(env or {}),
            },
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
    server = LocalServer(process, config_path, log_path)
    try:
        event = server.next_event(READY_TIMEOUT_S)
    except BaseException:  # interrupted while starting: do not leave the runner behind
        server.stop()
        raise
    if event["event"] != "ready":
        server.stop()
        message = event.get("message") or f"{event['event']}; see {log_path}"
        refusal = replica_refusal(message)
        if refusal is not None:
            # The replica's gate on its model card, reported as a cluster reports it.
            raise RejectedError(
                REASON_METRICS_BELOW_THRESHOLD,
                f"spec.requireMetrics: the replica refused the model's card: {refusal}",
                serve_message=message,
            )
        raise LocalServeError(summarize_serve_message(message), serve_message=message)
    server.endpoint = str(event["endpoint"])
    return server


def predict(endpoint: str, inputs: list[Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{endpoint}/predict",
        data=json.dumps({"inputs": inputs}).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as error:
        raise LocalServeError(f"/predict answered {error.code}: {error.read().decode()}") from error


def _serves_language(endpoint: str) -> bool:
    """Whether the server answers the OpenAI API (a language model) rather than OIP."""
    try:
        with urllib.request.urlopen(f"{endpoint}/v1/models", timeout=30) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def _writer(console: Console) -> Callable[[str], None]:
    def write(text: str) -> None:
        console.file.write(text)
        console.file.flush()

    return write


def stream_chat(endpoint: str, model: str, message: str, *, write: Callable[[str], None]) -> str:
    """Send `message` to the chat route (greedy, `stream: true`) and write the answer's text
    as its server-sent events arrive; returns the whole answer."""
    # Greedy: the same question gets the same answer, as a demo and a test expect.
    body = {
        "model": model,
        "messages": [{"role": "user", "content": message}],
        "stream": True,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"{endpoint}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    answer = []
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line.removeprefix("data: "))
                if "error" in event:
                    raise LocalServeError(f"generation failed: {event['error']['message']}")
                for choice in event.get("choices", []):
                    text = choice.get("delta", {}).get("content") or ""
                    answer.append(text)
                    write(text)
    except urllib.error.HTTPError as error:
        raise LocalServeError(
            f"/v1/chat/completions answered {error.code}: {error.read().decode()}"
        ) from error
    write("\n")
    return "".join(answer)


def prepare(deployment: ModelDeployment, *, console: Console, port: int) -> dict[str, Any]:
    """The Serve config for `deployment` on this machine; LocalServeError when the model
    cannot be found, RejectedError when it does not meet requireMetrics."""
    model = resolve_model(deployment)
    judge(deployment, model)
    try:
        # The resolved model: a fromTraining artifact may have gone to s3:// too.
        check_storage_credentials(
            {"spec.model.uri": model.uri}, deployment.spec.storage, console=console
        )
    except StorageCredentialsError as error:
        raise LocalServeError(str(error)) from error
    deployment = _for_this_machine(deployment, console)
    cpus = os.cpu_count() or 1
    if deployment.spec.replicas.max > cpus:
        console.print(
            f"[yellow]note:[/yellow] replicas.max is {deployment.spec.replicas.max}; one "
            f"replica per CPU fits here, so at most {cpus}"
        )
    digest = f" ({model.digest[:19]}...)" if model.digest else ""
    console.print(
        f"[bold]{deployment.metadata.name}[/bold]: serving {model.uri}{digest} with Ray Serve"
    )
    return render_serve_config(deployment, model, http_host="127.0.0.1", http_port=port)


def _print_answers(name: str, inputs: list[Any], answer: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{name}: predictions")
    table.add_column("input")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for value, item in zip(inputs, answer["predictions"], strict=True):
        text = value if isinstance(value, str) else json.dumps(value)[:60]
        table.add_row(text, item["label"], f"{item['probabilities'][item['label']]:.3f}")
    console.print(table)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(
    deployment: ModelDeployment,
    *,
    console: Console,
    port: int,
    inputs: list[Any],
    chat: str | None = None,
) -> int:
    """Serve `deployment` locally. With `inputs` (or a `chat` message for a language
    model), answer them and stop; otherwise serve until interrupted (Ctrl-C or `kill`).
    Returns the exit code."""
    # SIGTERM stops the server as Ctrl-C does: the runner has its own session, so dying
    # without stopping it would leave Ray and HAProxy running. (A background job of a
    # script ignores SIGINT, so `kill` is how scripts stop it.)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _serve(deployment, console=console, port=port, inputs=inputs, chat=chat)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start(deployment: ModelDeployment, *, console: Console, port: int) -> LocalServer | int:
    """The running server, or the exit code when it could not start."""
    name = deployment.metadata.name or "deployment"
    try:
        config = prepare(deployment, console=console, port=port)
        return start_server(
            config, workdir=pvc_root() / ".local" / f"serve-{name}", num_cpus=os.cpu_count()
        )
    except RejectedError as rejected:
        console.print(Text.assemble((f"Rejected ({rejected.reason})", "red"), f" {name}: "))
        console.print(f"  {rejected}", markup=False)
        return EXIT_REJECTED
    except LocalServeError as error:
        console.print(f"[red]{name} cannot serve:[/red] {error}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.print(f"{name}: interrupted while starting")
        return 0


def _answer(
    endpoint: str,
    name: str,
    *,
    language: bool,
    inputs: list[Any],
    chat: str | None,
    console: Console,
) -> int:
    """Answer --chat or --predict on the running server; the exit code."""
    if language != (chat is not None):
        wanted = "--chat" if language else "--predict"
        kind = "a language model" if language else "a classifier"
        console.print(f"[red]{name} is {kind}:[/red] use {wanted}")
        return EXIT_FAILED
    if chat is not None:
        stream_chat(endpoint, name, chat, write=_writer(console))
    else:
        _print_answers(name, inputs, predict(endpoint, inputs), console)
    return 0


def _serve(
    deployment: ModelDeployment,
    *,
    console: Console,
    port: int,
    inputs: list[Any],
    chat: str | None,
) -> int:
    name = deployment.metadata.name or "deployment"
    server = _start(deployment, console=console, port=port)
    if isinstance(server, int):
        return server
    try:
        language = _serves_language(server.endpoint)
        if language:
            console.print(f"ready: {server.endpoint}/v1  (the OpenAI API)")
            body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hi"}]})
            console.print(
                f"  curl -s {server.endpoint}/v1/models\n"
                f"  curl -sN {server.endpoint}/v1/chat/completions "
                f"-H 'Content-Type: application/json' -d '{body[:-1]}, \"stream\": true}}'\n"
                f"  logs: {server.log_path}"
            )
        else:
            console.print(f"ready: {server.endpoint}  (Open Inference Protocol v2 and /predict)")
            console.print(
                f"  curl -s {server.endpoint}/v2/models/{name}\n"
                f"  curl -s -X POST {server.endpoint}/predict -d '{{\"inputs\": [...]}}'\n"
                f"  logs: {server.log_path}"
            )
        if chat is not None or inputs:
            return _answer(
                server.endpoint, name, language=language, inputs=inputs, chat=chat, console=console
            )
        console.print("serving until interrupted (Ctrl-C)")
        while server.process.poll() is None:
            time.sleep(0.5)
        console.print(
            f"[red]the server exited ({server.process.returncode}); see {server.log_path}"
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 0
    except LocalServeError as error:
        console.print(f"[red]{error}[/red]")
        return EXIT_FAILED
    finally:
        server.stop()
