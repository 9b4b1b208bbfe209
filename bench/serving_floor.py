"""Where a request's CPU goes without a model: Ray Serve's own floor, and what the app's
parsing, batching and metrics add to it.

    .venv/bin/python bench/serving_floor.py

`null` only reads the body and answers; each other variant is a 2-replica deployment
behind HAProxy (the app's environment) that parses the OIP request with the app's
protocol module, optionally goes through `@serve.batch` and records the app's metrics,
and answers a fixed response. 32 clients for 6 s; prints requests/s and the replicas'
CPU per request (psutil).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from modelplane_harness.loadgen import json_body, load
from modelplane_runtime.contract import RAY_SERVE_ENVIRONMENT
from modelplane_runtime.serve import runner
from modelplane_runtime.serve.metrics import ServeMetrics
from modelplane_runtime.serve.protocol import (
    ModelSignature,
    infer_response,
    parse_infer,
    parse_json,
)

VARIANTS = ("null", "parse", "parse+metrics", "parse+batch", "parse+batch+metrics")


def main() -> None:
    for key, value in RAY_SERVE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    base = Path(tempfile.mkdtemp(prefix="mph-", dir="/tmp"))
    runner._private_haproxy(base)
    import ray  # noqa: PLC0415
    from ray import serve  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415

    @serve.deployment(num_replicas=2, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
    class Variant:
        def __init__(self, mode: str) -> None:
            self.mode = mode
            self.metrics = ServeMetrics(model="x")
            self.signature = ModelSignature(name="x", version="v", kind="text", labels=["a", "b"])

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def batched(self, items: list[Any]) -> list[Any]:
            return [np.array([[0.5, 0.5]], dtype=np.float32) for _ in items]

        async def __call__(self, request: Request) -> Response:
            started = time.perf_counter()
            if self.mode == "null":  # Ray Serve's own floor: read the body, answer
                await request.body()
                return Response(b'{"ok":true}', media_type="application/json")
            raw, request_id = parse_infer(parse_json(await request.body()), self.signature)
            if "batch" in self.mode:
                probabilities = await self.batched(raw)
            else:
                probabilities = np.array([[0.5, 0.5]], dtype=np.float32)
            body = infer_response(
                signature=self.signature,
                labels=["a"],
                probabilities=probabilities,
                request_id=request_id,
            )
            if "metrics" in self.mode:
                self.metrics.answered(
                    endpoint="infer", code=200, seconds=time.perf_counter() - started
                )
            return Response(json.dumps(body), media_type="application/json")

    ray.init(num_cpus=2, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8321})
        body = json_body(
            lambda n: {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]
            }
        )
        url = "http://127.0.0.1:8321/"
        for mode in sys.argv[1:] or VARIANTS:
            serve.run(
                Variant.bind(mode),  # type: ignore[attr-defined]
                name="v",
                route_prefix="/",
                logging_config={"enable_access_log": False},
            )
            load(url, body, clients=8, seconds=2)
            replicas = [
                p
                for p in psutil.process_iter(["cmdline"])
                if "ServeReplica" in " ".join(p.info["cmdline"] or [])
            ]
            before = sum(sum(p.cpu_times()[:2]) for p in replicas)
            result = load(url, body, clients=32, seconds=6)
            after = sum(sum(p.cpu_times()[:2]) for p in replicas)
            print(
                f"{mode:22s} {result.throughput:6.0f} req/s   replica CPU "
                f"{(after - before) / result.ok * 1000:.3f} ms/request",
                flush=True,
            )
            serve.delete("v")
    finally:
        ray.shutdown()
        runner._stop_haproxy(base)


if __name__ == "__main__":
    main()
