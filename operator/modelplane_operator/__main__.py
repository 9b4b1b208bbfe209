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

import kopf

from modelplane_operator import handlers  # noqa: F401  (registers the handlers)
from modelplane_operator.observability import configure_logging, serve_metrics

# kopf peering: among instances that share a peering object, the highest priority
# reconciles and the others stand by; equal priorities freeze all of them. Replicas of one
# Deployment share a pod spec, so each draws its own priority at start.
PRIORITY_RANGE = 2**30


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    kopf.configure(verbose=args.verbose)
    configure_logging(args.log_format)
    # Every API call of the client would otherwise be an INFO line.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every handler call on every child event; the reconcile logs what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        serve_metrics(args.metrics_port)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=1 + secrets.randbelow(PRIORITY_RANGE) if args.peering else None,
    )


if __name__ == "__main__":
    main()
