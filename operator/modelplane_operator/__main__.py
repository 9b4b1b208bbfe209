"""`python -m modelplane_operator`: run the operator.

    python -m modelplane_operator                       # every namespace
    python -m modelplane_operator --namespace ml-a --namespace ml-b
    python -m modelplane_operator --liveness http://0.0.0.0:8081/healthz --metrics-port 9090
    python -m modelplane_operator --peering modelplane  # one of several replicas

`kopf run -m modelplane_operator.handlers --all-namespaces` runs the same handlers.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time

import kopf

from modelplane_operator import handlers  # noqa: F401  (registers the handlers)
from modelplane_operator.observability import configure_logging, serve_metrics

# kopf peering: among instances that share a peering object, the highest priority
# reconciles and the others stand by; equal priorities freeze all of them. The priority
# packs a start time (high bits) and a random tie-breaker (low bits) into 53 bits, so
# that every JSON reader of the peering object, doubles included, holds it exactly.
TIE_BITS = 12
TIE_RANGE = 1 << TIE_BITS
TIME_BITS = 53 - TIE_BITS
"""Milliseconds of start time: 2**41 ms is about 69 years after TIME_ORIGIN_MS."""
TIME_ORIGIN_MS = 1_735_689_600_000
"""2025-01-01T00:00:00Z: start times are counted from here."""

# kopf refreshes its peering record every `lifetime - randint(5, 10)` seconds, floored at
# 1 s. From 11 s on the floor never applies: each refresh lands 5-10 s before the record
# would expire. Below, refreshes crowd at 1 s (always, from 6 s down) and, under 6 s, come
# less than 5 s before expiry, where one slow API write lets a live replica's record lapse
# and a standby reconcile alongside it.
MIN_PEERING_LIFETIME = 11
DEFAULT_PEERING_LIFETIME = 15


def peering_priority(started_at: float, tie: int) -> int:
    """The kopf peering priority of an instance started at `started_at` (Unix seconds),
    with `tie` drawn at random from [0, TIE_RANGE).

    Oldest first: an instance that started earlier outranks every later one, whatever the
    tie-breakers. After a SIGKILL the restarted container therefore joins as the standby
    and the replica that was standing by keeps the lead it takes, instead of the two
    drawing lots again. Only replicas started in the same millisecond rank by `tie`, and
    tie only if they also draw the same one (1 in TIE_RANGE; a tie would pause both until
    one restarts). A clock before TIME_ORIGIN_MS, or past its 69 years, ranks by the
    tie-breaker alone; the result is always in [0, 2**53).
    """
    if not 0 <= tie < TIE_RANGE:
        raise ValueError(f"tie must be in [0, {TIE_RANGE}), got {tie}")
    latest = (1 << TIME_BITS) - 1
    elapsed_ms = int(started_at * 1000) - TIME_ORIGIN_MS
    remaining_ms = min(max(latest - elapsed_ms, 0), latest)
    return remaining_ms * TIE_RANGE + tie


def peering_lifetime(text: str) -> int:
    """An argparse type: whole seconds, at least MIN_PEERING_LIFETIME."""
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if seconds < MIN_PEERING_LIFETIME:
        raise argparse.ArgumentTypeError(
            f"{seconds} s is too short: kopf refreshes a record 5-10 s before it expires "
            f"and at most once a second, so the lifetime must be at least {MIN_PEERING_LIFETIME}"
        )
    return seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m modelplane_operator")
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all",
    )
    parser.add_argument("--liveness", default=None, help="liveness endpoint URL for probes")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (0: off)"
    )
    parser.add_argument("--log-format", choices=["json", "text"], default="text")
    parser.add_argument(
        "--peering",
        default=None,
        metavar="NAME",
        help="run as one of several replicas that agree through the kopf peering object NAME",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=peering_lifetime,
        default=DEFAULT_PEERING_LIFETIME,
        metavar="SECONDS",
        help="how long a replica's peering record outlives its last refresh: the longest a "
        "standby waits for a replica that vanished without a word (default: %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def configure_logs(*, verbose: bool, log_format: str) -> None:
    kopf.configure(verbose=verbose)
    configure_logging(log_format)
    # Every API call of the client would otherwise be an INFO line.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not verbose:
        # kopf logs every handler call on every child event; the reconcile logs what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logs(verbose=args.verbose, log_format=args.log_format)
    if args.metrics_port:
        serve_metrics(args.metrics_port)
    # kopf.run has no argument for the lifetime; it takes a settings object instead, and
    # hands that same object to the startup handler (handlers.py), which sets the rest.
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = args.peering_lifetime
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        settings=settings,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=peering_priority(time.time(), secrets.randbelow(TIE_RANGE))
        if args.peering
        else None,
    )


if __name__ == "__main__":
    main()
