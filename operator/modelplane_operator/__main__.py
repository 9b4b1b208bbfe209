"""`python -m modelplane_operator`: run the operator.

    python -m modelplane_operator                       # every namespace
    python -m modelplane_operator --namespace ml-a --namespace ml-b
    python -m modelplane_operator --liveness http://0.0.0.0:8081/healthz

`kopf run -m modelplane_operator.handlers --all-namespaces` runs the same handlers.
"""

from __future__ import annotations

import argparse
import logging

import kopf

from modelplane_operator import handlers  # noqa: F401  (registers the handlers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelplane_operator")
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all",
    )
    parser.add_argument("--liveness", default=None, help="liveness endpoint URL for probes")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    kopf.configure(verbose=args.verbose)
    # Every API call of the client would otherwise be an INFO line.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every handler call on every child event; the reconcile logs what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=True,
    )


if __name__ == "__main__":
    main()
