"""How the operator reaches a deployment's Ray head: Ray's dashboard REST API.

`GET /api/serve/applications/` gives the Serve application's status, message and
replicas; `PUT /api/serve/applications/` deploys a whole Serve config in place (what
`serve deploy` does). Token authentication stays on: every call carries the cluster's
token. The URL comes from `Settings.dashboard_url`, a template over the head Service
and namespace; tests point it at a real local Ray (the pods on the test cluster are
simulated), and that template is the only difference.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from modelplane_operator.status.serving import ServeState
from modelplane_runtime.contract import SERVE_DEPLOYMENT

log = logging.getLogger("modelplane.dashboard")
TIMEOUT_S = 3.0


def serve_state(details: dict[str, Any], application: str) -> ServeState | None:
    """The application's state from `GET /api/serve/applications/`, or None if absent."""
    app = (details.get("applications") or {}).get(application)
    if app is None:
        return None
    deployment = (app.get("deployments") or {}).get(SERVE_DEPLOYMENT) or {}
    replicas = deployment.get("replicas") or []
    messages = [app.get("message") or "", deployment.get("message") or ""]
    return ServeState(
        status=str(app.get("status") or "NOT_STARTED"),
        message="\n".join(m for m in messages if m),
        target_replicas=int(deployment.get("target_num_replicas") or 0),
        running_replicas=sum(1 for r in replicas if r.get("state") == "RUNNING"),
        listed_replicas=len(replicas),
        replica_ips=frozenset(
            str(r["node_ip"]) for r in replicas if r.get("state") == "RUNNING" and r.get("node_ip")
        ),
    )


class Dashboard:
    """One Ray head's dashboard."""

    def __init__(self, base_url: str, token: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.session = session
        self.status: int | None = None
        """The last answer's HTTP status; None when the head did not answer."""

    async def application(self, name: str, *, timeout: float = TIMEOUT_S) -> ServeState | None:
        """The application's state; None when the head does not answer (yet)."""
        self.status = None
        try:
            async with self.session.get(
                f"{self.base_url}/api/serve/applications/",
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                self.status = response.status
                if response.status != 200:
                    log.info("%s: dashboard answered %s", self.base_url, response.status)
                    return None
                return serve_state(await response.json(), name)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None

    async def deploy(self, config: dict[str, Any]) -> bool:
        """Push a Serve config in place; False when the head did not take it."""
        try:
            async with self.session.put(
                f"{self.base_url}/api/serve/applications/",
                json=config,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S * 3),
            ) as response:
                if response.status == 200:
                    return True
                log.warning("%s: deploy answered %s", self.base_url, response.status)
                return False
        except (TimeoutError, aiohttp.ClientError):
            return False
