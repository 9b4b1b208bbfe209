"""`python -m modelplane_runtime serve --config serve-config.json`: run a Serve config.

Starts (or joins) a Ray cluster with the serving environment, starts Serve with the
config's HTTP options, deploys the config's applications, waits until they run, prints
one JSON line `{"event": "ready", "endpoint": ...}` (or `"failed"` with Serve's own
message; a local Ray then stops with exit code 3, a joined cluster keeps running), and
keeps serving until SIGINT/SIGTERM. When the config file changes it is
deployed again, in place: Serve applies new `user_config` (batching) live and rolls
replicas for new `args` (a new model) without dropping requests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from modelplane_runtime.contract import RAY_SERVE_ENVIRONMENT
from modelplane_runtime.errors import ConfigError

log = logging.getLogger("modelplane.serve")
POLL_S = 0.5


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def read_config(path: Path) -> Any:
    from ray.serve.schema import ServeDeploySchema  # noqa: PLC0415

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the Serve config {path}: {exc}") from exc
    try:
        return ServeDeploySchema.model_validate_json(text)
    except ValueError as exc:
        raise ConfigError(f"invalid Serve config {path}: {exc}") from exc


def _statuses(names: set[str]) -> dict[str, tuple[str, str]]:
    """app name -> (status, message); the message joins Serve's application and
    deployment messages, which carry the replica's own error (a traceback's last line)."""
    from ray import serve  # noqa: PLC0415

    result = {}
    for name, app in serve.status().applications.items():
        if name not in names:
            continue
        messages = [app.message] + [
            f"{d}: {info.message}" for d, info in app.deployments.items() if info.message
        ]
        result[name] = (str(app.status.value), "; ".join(m for m in messages if m))
    return result


def wait_until_running(names: set[str], *, timeout_s: float) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        statuses = _statuses(names)
        if any(status == "DEPLOY_FAILED" for status, _ in statuses.values()):
            return False, " | ".join(f"{n}: {m}" for n, (s, m) in statuses.items() if m)
        if len(statuses) == len(names) and all(s == "RUNNING" for s, _ in statuses.values()):
            return True, ""
        last = " | ".join(f"{n}: {s} {m}".strip() for n, (s, m) in statuses.items())
        time.sleep(POLL_S)
    return False, f"not running after {timeout_s:.0f}s ({last or 'no status yet'})"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _private_haproxy(base: Path) -> None:
    """Give this Serve instance's HAProxy its own files and ports.

    Ray's defaults (/tmp/haproxy-serve, ports 9101 and 8404) suit one Serve per machine,
    as in a pod; a second local instance (a test beside a benchmark) would fail to bind.
    """
    defaults = {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _stop_haproxy(base: Path) -> None:
    """HAProxy outlives ray.shutdown(): the proxy actor that started it is killed without
    a chance to stop it, and it is re-parented to init. Stop the ones using `base`."""
    import psutil  # noqa: PLC0415 - a Ray dependency

    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if any(str(base) in part for part in cmdline) and "haproxy" in " ".join(cmdline):
            with contextlib.suppress(psutil.Error):
                process.kill()


class _SignalledError(Exception):
    """SIGINT or SIGTERM arrived: stop serving."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _SignalledError


def _deploy(config: Any, *, ready_timeout_s: float) -> tuple[bool, str]:
    from ray.serve.context import _get_global_client  # noqa: PLC0415

    # Serve's controller deploys a whole config at once, as `serve deploy` does; the
    # client call is internal API (pinned with ray), the public path being the CLI.
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running")
    client.deploy_apps(config)
    return wait_until_running({app.name for app in config.applications}, timeout_s=ready_timeout_s)


def _follow(config_path: Path, *, endpoint: str, ready_timeout_s: float) -> None:
    """Deploy the config again whenever its file changes; return only by a signal."""
    mtime = config_path.stat().st_mtime
    while True:
        time.sleep(POLL_S)
        current = config_path.stat().st_mtime
        if current == mtime:
            continue
        mtime = current
        try:
            config = read_config(config_path)
        except ConfigError as exc:
            _emit("rejected", message=str(exc))
            continue
        _emit("redeploying", applications=sorted(app.name for app in config.applications))
        ok, message = _deploy(config, ready_timeout_s=ready_timeout_s)
        _emit("ready" if ok else "failed", endpoint=endpoint, message=message)


def run(
    config_path: Path,
    *,
    address: str | None,
    num_cpus: int | None,
    metrics_port: int | None,
    dashboard_port: int | None,
    ready_timeout_s: float,
) -> int:
    """Serve until interrupted; the exit code says how it ended."""
    for key, value in RAY_SERVE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    import ray  # noqa: PLC0415
    from ray import serve  # noqa: PLC0415

    config = read_config(config_path)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    init: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    haproxy_base: Path | None = None
    if address is None:
        # Short: HAProxy's admin socket path (this + a 56-character hash) must stay
        # under 97 characters.
        haproxy_base = Path(tempfile.mkdtemp(prefix="mph-", dir="/tmp"))
        _private_haproxy(haproxy_base)
        init.update(num_cpus=num_cpus, include_dashboard=True)
        if metrics_port:
            init["_metrics_export_port"] = metrics_port
        if dashboard_port:
            init["dashboard_port"] = dashboard_port
    try:
        ray.init(**init)
        http = config.http_options
        serve.start(
            proxy_location=config.proxy_location,
            http_options={"host": http.host, "port": http.port},
        )
        host = "127.0.0.1" if http.host in ("0.0.0.0", "") else http.host
        endpoint = f"http://{host}:{http.port}"
        ok, message = _deploy(config, ready_timeout_s=ready_timeout_s)
        if not ok:
            _emit("failed", message=message)
            if address is None:
                return 3
            # Joined to a cluster (the head pod): the cluster outlives a failed deploy.
            # Exiting would restart the head and take every worker's replicas and Serve's
            # own account of the failure (read by the operator through the dashboard)
            # with it; instead keep following the config, whose next version (a fixed
            # spec) is deployed in place.
        else:
            _emit("ready", endpoint=endpoint, applications=[a.name for a in config.applications])
        _follow(config_path, endpoint=endpoint, ready_timeout_s=ready_timeout_s)
        return 0
    except _SignalledError:
        _emit("stopping")
        return 0
    except Exception as exc:
        _emit("failed", message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        # Ray stops what it started (replicas, HAProxy); serve.shutdown() first would
        # wait up to 30 s for the controller, which nothing here needs.
        ray.shutdown()
        if haproxy_base is not None:
            _stop_haproxy(haproxy_base)
            shutil.rmtree(haproxy_base, ignore_errors=True)


def main(argv: list[str]) -> int:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m modelplane_runtime serve")
    parser.add_argument("--config", type=Path, required=True, help="Serve config (JSON)")
    parser.add_argument("--address", default=None, help="join this Ray cluster")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local Ray")
    parser.add_argument("--metrics-port", type=int, default=None, help="Ray metrics port")
    parser.add_argument("--dashboard-port", type=int, default=None, help="Ray dashboard port")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    return run(
        args.config,
        address=args.address,
        num_cpus=args.num_cpus,
        metrics_port=args.metrics_port,
        dashboard_port=args.dashboard_port,
        ready_timeout_s=args.ready_timeout,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
