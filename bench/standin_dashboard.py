"""A stand-in for many Ray heads' dashboards and metrics pages, for bench/operator_scale.py.

One aiohttp server on 127.0.0.1 answers for every ModelDeployment's head, reached through
the operator's URL templates (MODELPLANE_DASHBOARD_URL and friends):

    dashboard  http://127.0.0.1:PORT/d/{namespace}/{head}   GET and PUT /api/serve/applications/
    head page  http://127.0.0.1:PORT/m/{namespace}/{head}   GET /metrics
    replicas   http://127.0.0.1:PORT/r/{ip}                 GET /metrics

Each registered application models Serve's autoscaler as the operator sees it: the bench
sets an application's ongoing requests, which the head's gauge
(`ray_serve_autoscaling_total_requests`) shows at once; the replica target moves to
ceil(ongoing / targetOngoingRequests), within replicas.min..max, once the wanted number
has stayed above the target for `upscaleDelaySeconds` (below it for
`downscaleDelaySeconds`), as Serve's decision counter does. Every replica of the target
is listed RUNNING at once on a node IP of its own (a real one starts on a worker first:
this measures the operator's decision, not a replica's start). Each replica's request
counter grows by ten requests per second per ongoing request, split over the replicas.

The bench drives it through /control (register, load, wait for a target, counts); the
time of every target change is taken from time.monotonic(), the clock the bench reads
too (CLOCK_MONOTONIC is shared by every process on the machine).

    .venv/bin/python bench/standin_dashboard.py --port 18265
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SERVE_DEPLOYMENT = "model"  # modelplane_runtime.contract.SERVE_DEPLOYMENT
REQUESTS_PER_ONGOING = 10.0
"""Requests per second each ongoing request stands for, in the replicas' counters."""
WAIT_LIMIT_S = 60.0


@dataclass
class Application:
    """One ModelDeployment's Serve application on its (stand-in) head."""

    namespace: str
    name: str
    head: str
    index: int
    minimum: int
    maximum: int
    target_ongoing: float
    upscale_delay_s: float
    downscale_delay_s: float
    ongoing: float = 0.0
    target: int = 0
    changed_at: float = 0.0
    """time.monotonic() of the last target change (0: none yet)."""
    pending: tuple[int, asyncio.TimerHandle] | None = None
    """(direction, timer) of a decision waiting out its delay."""
    served: dict[int, float] = field(default_factory=dict)
    """Requests answered by replica slot."""
    served_at: float = field(default_factory=time.monotonic)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def wanted(self) -> int:
        want = math.ceil(self.ongoing / self.target_ongoing) if self.ongoing > 0 else 0
        return min(max(want, self.minimum), self.maximum)

    def node_ip(self, slot: int) -> str:
        return f"10.{64 + slot}.{self.index // 256}.{self.index % 256}"

    def advance(self, now: float) -> None:
        """Count the requests answered since the last call, split over the replicas."""
        rate = self.ongoing * REQUESTS_PER_ONGOING / max(self.target, 1)
        for slot in range(self.target):
            self.served[slot] = self.served.get(slot, 0.0) + rate * (now - self.served_at)
        self.served_at = now


class StandIn:
    def __init__(self) -> None:
        self.by_head: dict[tuple[str, str], Application] = {}
        self.by_name: dict[tuple[str, str], Application] = {}
        self.by_ip: dict[str, tuple[Application, int]] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        """(kind, namespace/name) -> requests: kind is serve, deploy, head or replica."""

    def register(self, spec: dict[str, Any]) -> None:
        app = Application(
            namespace=spec["namespace"],
            name=spec["name"],
            head=spec["head"],
            index=len(self.by_name),
            minimum=int(spec["min"]),
            maximum=int(spec["max"]),
            target_ongoing=float(spec["targetOngoingRequests"]),
            upscale_delay_s=float(spec["upscaleDelaySeconds"]),
            downscale_delay_s=float(spec["downscaleDelaySeconds"]),
        )
        app.target = app.minimum
        self.by_head[(app.namespace, app.head)] = app
        self.by_name[(app.namespace, app.name)] = app
        for slot in range(app.maximum):
            self.by_ip[app.node_ip(slot)] = (app, slot)

    def set_load(self, app: Application, ongoing: float) -> None:
        """The gauge moves now; the target after Serve's delay, if the wanted replicas
        still differ from it then (a load change in the same direction keeps the timer,
        as Serve's decision counter keeps counting)."""
        app.advance(time.monotonic())
        app.ongoing = ongoing
        direction = (app.wanted() > app.target) - (app.wanted() < app.target)
        if app.pending is not None and app.pending[0] == direction:
            return
        if app.pending is not None:
            app.pending[1].cancel()
            app.pending = None
        if direction:
            delay = app.upscale_delay_s if direction > 0 else app.downscale_delay_s
            timer = asyncio.get_running_loop().call_later(delay, self._decide, app)
            app.pending = (direction, timer)

    def _decide(self, app: Application) -> None:
        app.pending = None
        wanted = app.wanted()
        if wanted != app.target:
            now = time.monotonic()
            app.advance(now)
            app.target, app.changed_at = wanted, now
            asyncio.get_running_loop().create_task(self._notify(app))

    async def _notify(self, app: Application) -> None:
        async with app.changed:
            app.changed.notify_all()

    def serve_details(self, app: Application) -> dict[str, Any]:
        """What Ray's `GET /api/serve/applications/` answers, trimmed to one application
        and the fields a client reads, with a real answer's bulk per replica."""
        replicas = [
            {
                "replica_id": f"{app.name}#{slot}",
                "state": "RUNNING",
                "pid": 1000 + slot,
                "actor_name": f"SERVE_REPLICA::{app.name}#{SERVE_DEPLOYMENT}#{slot}",
                "actor_id": f"{app.index:08x}{slot:024x}",
                "node_id": f"{app.index:028x}{slot:028x}",
                "node_ip": app.node_ip(slot),
                "start_time_s": 0.0,
                "log_file_path": f"/serve/replica_{app.name}_{slot}.log",
            }
            for slot in range(app.target)
        ]
        return {
            "controller_info": {"node_id": "0" * 56, "node_ip": "10.0.0.1"},
            "proxy_location": "HeadOnly",
            "http_options": {"host": "0.0.0.0", "port": 8000},
            "applications": {
                app.name: {
                    "name": app.name,
                    "route_prefix": "/",
                    "status": "RUNNING",
                    "message": "",
                    "last_deployed_time_s": 0.0,
                    "deployments": {
                        SERVE_DEPLOYMENT: {
                            "name": SERVE_DEPLOYMENT,
                            "status": "HEALTHY",
                            "status_trigger": "AUTOSCALING",
                            "message": "",
                            "target_num_replicas": app.target,
                            "deployment_config": {
                                "autoscaling_config": {
                                    "min_replicas": app.minimum,
                                    "max_replicas": app.maximum,
                                    "target_ongoing_requests": app.target_ongoing,
                                    "upscale_delay_s": app.upscale_delay_s,
                                    "downscale_delay_s": app.downscale_delay_s,
                                }
                            },
                            "replicas": replicas,
                        }
                    },
                }
            },
        }

    def head_page(self, app: Application) -> str:
        labels = f'application="{app.name}",deployment="{SERVE_DEPLOYMENT}"'
        return (
            "# HELP ray_serve_autoscaling_total_requests Ongoing requests.\n"
            "# TYPE ray_serve_autoscaling_total_requests gauge\n"
            f"ray_serve_autoscaling_total_requests{{{labels}}} {app.ongoing}\n"
        )

    def replica_page(self, app: Application, slot: int) -> str:
        if slot >= app.target:
            return ""
        app.advance(time.monotonic())
        labels = (
            f'application="{app.name}",deployment="{SERVE_DEPLOYMENT}",'
            f'replica="{app.name}#{slot}",route="/"'
        )
        per_replica = app.ongoing / max(app.target, 1)
        return (
            "# TYPE ray_serve_deployment_request_counter_total counter\n"
            f"ray_serve_deployment_request_counter_total{{{labels}}} "
            f"{math.floor(app.served.get(slot, 0.0))}\n"
            "# TYPE ray_serve_replica_processing_queries gauge\n"
            f"ray_serve_replica_processing_queries{{{labels}}} {per_replica}\n"
        )

    # -- routes ----------------------------------------------------------------------

    def _app(self, request: web.Request) -> Application:
        key = (request.match_info["namespace"], request.match_info["head"])
        app = self.by_head.get(key)
        if app is None:
            raise web.HTTPNotFound(text=f"no head {key[0]}/{key[1]}")
        return app

    @staticmethod
    def _authorized(request: web.Request) -> None:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            raise web.HTTPUnauthorized(text="token authentication is on")

    async def get_serve(self, request: web.Request) -> web.Response:
        app = self._app(request)
        self.counts["serve", f"{app.namespace}/{app.name}"] += 1
        self._authorized(request)
        return web.json_response(self.serve_details(app))

    async def put_serve(self, request: web.Request) -> web.Response:
        app = self._app(request)
        self.counts["deploy", f"{app.namespace}/{app.name}"] += 1
        self._authorized(request)
        await request.read()
        return web.Response(status=200)

    async def get_head_metrics(self, request: web.Request) -> web.Response:
        app = self._app(request)
        self.counts["head", f"{app.namespace}/{app.name}"] += 1
        return web.Response(text=self.head_page(app))

    async def get_replica_metrics(self, request: web.Request) -> web.Response:
        found = self.by_ip.get(request.match_info["ip"])
        if found is None:
            raise web.HTTPNotFound()
        app, slot = found
        self.counts["replica", f"{app.namespace}/{app.name}"] += 1
        return web.Response(text=self.replica_page(app, slot))

    async def control_register(self, request: web.Request) -> web.Response:
        for spec in await request.json():
            self.register(spec)
        return web.json_response({"registered": len(self.by_name)})

    def _named(self, query: Any) -> Application:
        app = self.by_name.get((str(query.get("namespace")), str(query.get("name"))))
        if app is None:
            raise web.HTTPNotFound(text="no such application")
        return app

    async def control_load(self, request: web.Request) -> web.Response:
        body = await request.json()
        app = self._named(body)
        self.set_load(app, float(body["ongoing"]))
        return web.json_response({"target": app.target, "wanted": app.wanted()})

    async def control_wait(self, request: web.Request) -> web.Response:
        """Long poll: until the application's target is `target` by a change after
        `after` (monotonic seconds); its change time and the wait's outcome."""
        app = self._named(request.query)
        target = int(request.query["target"])
        after = float(request.query.get("after", "0"))

        def reached() -> bool:
            return app.target == target and app.changed_at > after

        try:
            async with app.changed:
                await asyncio.wait_for(app.changed.wait_for(reached), WAIT_LIMIT_S)
        except TimeoutError:
            return web.json_response({"reached": False, "target": app.target}, status=504)
        return web.json_response({"reached": True, "changed_at": app.changed_at})

    async def control_counts(self, _: web.Request) -> web.Response:
        totals: dict[str, dict[str, int]] = {}
        for (kind, name), count in self.counts.items():
            totals.setdefault(kind, {})[name] = count
        return web.json_response({"at": time.monotonic(), "counts": totals})

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    def web_app(self) -> web.Application:
        app = web.Application()
        serve = "/d/{namespace}/{head}/api/serve/applications/"
        app.router.add_get(serve, self.get_serve)
        app.router.add_put(serve, self.put_serve)
        app.router.add_get("/m/{namespace}/{head}/metrics", self.get_head_metrics)
        app.router.add_get("/r/{ip}/metrics", self.get_replica_metrics)
        app.router.add_post("/control/register", self.control_register)
        app.router.add_post("/control/load", self.control_load)
        app.router.add_get("/control/wait", self.control_wait)
        app.router.add_get("/control/counts", self.control_counts)
        app.router.add_get("/control/health", self.health)
        return app


def templates(port: int) -> dict[str, str]:
    """The operator's environment that points it at a stand-in on `port`."""
    base = f"http://127.0.0.1:{port}"
    return {
        "MODELPLANE_DASHBOARD_URL": base + "/d/{namespace}/{head}",
        "MODELPLANE_METRICS_URL": base + "/m/{namespace}/{head}",
        "MODELPLANE_REPLICA_METRICS_URL": base + "/r/{ip}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(StandIn().web_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
