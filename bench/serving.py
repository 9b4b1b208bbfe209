"""Serving throughput and latency, side by side on one model and one set of requests.

    .venv/bin/python bench/serving.py                  # all five, ~3 minutes on 2 cores
    .venv/bin/python bench/serving.py --seconds 5 --only raw,app

(a) raw   in-process batched forward (tokenise + forward) at its best batch size: the
          ceiling, with no HTTP at all;
(b) app   this project's Serve app: HAProxy ingress (Ray Serve's high-throughput mode),
          dynamic batching, as `modelplane run` and the operator configure it;
(c) app-default  the same app with Ray Serve's default ingress (Python proxy) and no
          batching (max_batch_size 1);
(d) fastapi  a plain FastAPI/uvicorn server that runs one request at a time;
(e) kserve   KServe's Python model server with a kserve.Model around the same model.

Every server gets the same Open Inference Protocol v2 request (one review per request) on
`/v2/models/<name>/infer`, from one closed-loop load generator in this process: 32
clients for throughput at saturation, then 8 clients for latency at a fixed concurrency.
The load generator shares the 2 cores with the server, as it would any client on the
same machine; that is part of every HTTP figure alike.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from modelplane.serving import LocalServer, start_server
from modelplane_harness.loadgen import LoadResult, json_body, load
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.serve_config import ResolvedModel, render_serve_config
from modelplane_runtime.contract import DataConfig, OptimConfig, RunConfig, ServeArgs
from modelplane_runtime.data.builtin import sentiment
from modelplane_runtime.data.raw import RawData

PARAMS = {"layers": 2, "hidden": 128, "heads": 4, "max_length": 64, "vocab_size": 2000}
SATURATION_CLIENTS = 32
LATENCY_CLIENTS = 8
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train(root: Path) -> tuple[Path, str]:
    from modelplane_runtime.train.distributed import DistEnv  # noqa: PLC0415
    from modelplane_runtime.train.loop import Trainer  # noqa: PLC0415

    config = RunConfig(
        name="bench",
        architecture="transformer",
        task="text-classification",
        params=PARAMS,
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.2),
        optim=OptimConfig(epochs=1, batch_size=64, learning_rate=2e-3),
        output_uri=f"file://{root}",
        progress_port=0,
        checkpoint_every_steps=10**9,
    )
    result = Trainer(config, env=DistEnv()).fit()
    return root / "bench", result.digest


TEXTS = sentiment(count=512, seed=7).texts


def request_body() -> Any:
    return json_body(
        lambda n: {
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXTS[n % len(TEXTS)]]}
            ]
        }
    )


def measure_raw(uri: str, seconds: float, threads: int) -> dict[str, Any]:
    import torch  # noqa: PLC0415

    from modelplane_runtime.serve.predictor import Predictor  # noqa: PLC0415

    torch.set_num_threads(threads)
    predictor = Predictor(ServeArgs(model_name="bench", model_uri=uri, threads=threads))
    rates = {}
    for batch in (1, 8, 16, 32, 64, 128):
        raw = RawData(kind="text", texts=TEXTS[:batch])
        predictor.predict(raw)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 4:
            predictor.predict(raw)
            done += batch
        rates[batch] = done / (time.perf_counter() - started)
    best = max(rates, key=lambda b: rates[b])
    return {"throughput": rates[best], "best_batch": best, "by_batch": rates}


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s")


def measure_http(url: str, seconds: float) -> dict[str, Any]:
    body = request_body()
    load(url, body, clients=LATENCY_CLIENTS, seconds=2)  # warm-up
    saturated: LoadResult = load(url, body, clients=SATURATION_CLIENTS, seconds=seconds)
    fixed: LoadResult = load(url, body, clients=LATENCY_CLIENTS, seconds=seconds)
    return {
        "throughput": saturated.throughput,
        "p50_ms": fixed.percentile(50) * 1000,
        "p99_ms": fixed.percentile(99) * 1000,
        "saturated_p99_ms": saturated.percentile(99) * 1000,
        "errors": saturated.failed + fixed.failed,
    }


def app_config(
    uri: str, digest: str, *, batching: bool, replicas: int, port: int
) -> dict[str, Any]:
    deployment = ModelDeployment.model_validate(
        {
            "apiVersion": "modelplane.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "bench"},
            "spec": {
                "model": {"uri": uri},
                "replicas": {"min": replicas, "max": replicas},
                "batching": {"maxBatchSize": 32 if batching else 1, "batchWaitTimeoutMs": 5},
                "maxOngoingRequests": 64,
                "maxQueuedRequests": 256,
            },
        }
    )
    model = ResolvedModel(uri=uri, digest=digest, metrics={})
    cpus = 2 / replicas
    config = render_serve_config(
        deployment, model, replica_cpus=cpus, http_host="127.0.0.1", http_port=port
    )
    config["applications"][0]["args"]["threads"] = max(1, int(cpus))
    return config


def measure_app(
    uri: str, digest: str, seconds: float, *, default_ingress: bool, replicas: int, workdir: Path
) -> dict[str, Any]:
    port = free_port()
    env = (
        {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
        if default_ingress
        else {}
    )
    config = app_config(uri, digest, batching=not default_ingress, replicas=replicas, port=port)
    server: LocalServer = start_server(config, workdir=workdir, num_cpus=2, env=env)
    try:
        return measure_http(f"{server.endpoint}/v2/models/bench/infer", seconds)
    finally:
        server.stop()


def measure_subprocess(kind: str, uri: str, seconds: float, threads: int) -> dict[str, Any]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "serving_servers.py"),
            kind,
            "--model-uri",
            uri,
            "--port",
            str(port),
            "--threads",
            str(threads),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        return measure_http(f"http://127.0.0.1:{port}/v2/models/bench/infer", seconds)
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_all(args: argparse.Namespace, max_length: int) -> dict[str, dict[str, Any]]:
    only = args.only.split(",")
    PARAMS["max_length"] = max_length
    root = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    artifact, digest = train(root)
    uri = f"file://{artifact}"
    print(f"\nmodel: transformer {PARAMS}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    if "raw" in only:
        results["raw"] = measure_raw(uri, args.seconds, threads=2)
    for name, default_ingress in (("app", False), ("app-default", True)):
        if name in only:
            results[name] = measure_app(
                uri,
                digest,
                args.seconds,
                default_ingress=default_ingress,
                replicas=args.replicas,
                workdir=root / name,
            )
    for kind in ("fastapi", "kserve"):
        if kind in only:
            results[kind] = measure_subprocess(kind, uri, args.seconds, threads=2)
    report(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default="raw,app,app-default,fastapi,kserve")
    parser.add_argument("--replicas", type=int, default=2, help="app replicas (b, c)")
    parser.add_argument(
        "--max-length", default="64,256", help="tokens per input; a comma list runs each"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} CPUs; app: {args.replicas} replica(s) x {2 // args.replicas} CPU, "
        f"batching 32 / 5 ms; others: 2 torch threads",
        flush=True,
    )
    everything = {length: run_all(args, int(length)) for length in args.max_length.split(",")}
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


def report(results: dict[str, dict[str, Any]]) -> None:
    raw = results.get("raw", {}).get("throughput")
    plain = results.get("fastapi", {}).get("throughput")
    kserve = results.get("kserve", {}).get("throughput")
    if "raw" in results:
        by_batch = ", ".join(f"{b}: {r:.0f}" for b, r in results["raw"]["by_batch"].items())
        print(f"raw samples/s by batch size: {by_batch}")
    print(
        f"{'variant':<12} {'req/s @32':>10} {'/ raw':>7} {'/ fastapi':>10} {'/ kserve':>9} "
        f"{'p50 ms @8':>10} {'p99 ms @8':>10} {'errors':>7}"
    )
    for name, result in results.items():
        throughput = result["throughput"]
        print(
            f"{name:<12} {throughput:>10.0f} "
            f"{throughput / raw if raw else float('nan'):>7.2f} "
            f"{throughput / plain if plain else float('nan'):>10.2f} "
            f"{throughput / kserve if kserve else float('nan'):>9.2f} "
            f"{result.get('p50_ms', float('nan')):>10.1f} "
            f"{result.get('p99_ms', float('nan')):>10.1f} "
            f"{result.get('errors', 0):>7}"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
