"""`python -m modelplane_runtime train --config run.json` — what training pods run;
`python -m modelplane_runtime serve --config serve-config.json` — serve a Serve config
(see modelplane_runtime.serve.runner).

Exit codes (contract.ExitCode): 0 done; 42 bad configuration or data (never retried);
1 anything else (the operator replaces the job and it resumes from its checkpoint), object
storage failing after its retries included. Either failure writes one line to the
termination log (`configuration error: ...`, `storage failure: ...` or `failure: ...`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from modelplane_runtime.contract import (
    ENV_PROGRESS_HOST,
    ENV_TERMINATION_LOG,
    ExitCode,
    RunConfig,
    TrainingResult,
)
from modelplane_runtime.errors import ConfigError, StorageError, exit_code_for

TERMINATION_LOG = "/dev/termination-log"

log = logging.getLogger("modelplane.runtime")


def _termination_log() -> Path | None:
    path = os.environ.get(ENV_TERMINATION_LOG) or TERMINATION_LOG
    return (
        Path(path)
        if Path(path).parent.is_dir() and (Path(path).exists() or ENV_TERMINATION_LOG in os.environ)
        else None
    )


def _report(text: str) -> None:
    """Write the pod's termination message (the operator reads it)."""
    path = _termination_log()
    if path is not None:
        path.write_text(text)


def train(config_path: Path) -> TrainingResult:
    # transformers' progress bars (loading and writing weights) are noise in a pod's log;
    # huggingface_hub reads this when it is first imported, so set it before that.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from modelplane_runtime.train.distributed import DistEnv  # noqa: PLC0415
    from modelplane_runtime.train.loop import Trainer, finished_result  # noqa: PLC0415
    from modelplane_runtime.train.progress import ProgressReporter  # noqa: PLC0415

    try:
        config = RunConfig.from_json(config_path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the run config {config_path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"invalid run config {config_path}: {exc}") from exc
    env = DistEnv.from_environ()
    done = finished_result(config)
    if done is not None:
        log.info("%s already finished; reporting its result", config.name)
        return done
    env.init()
    reporter = ProgressReporter(
        port=config.progress_port if env.is_main else 0,
        host=os.environ.get(ENV_PROGRESS_HOST, "0.0.0.0"),
    )
    try:
        return Trainer(config, env=env, reporter=reporter).fit()
    finally:
        reporter.close()
        env.close()


def _failure_kind(error: BaseException) -> str:
    if isinstance(error, ConfigError):
        return "configuration error"
    if isinstance(error, StorageError):
        return "storage failure"
    return "failure"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from modelplane_runtime.serve.runner import main as serve_main  # noqa: PLC0415

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        try:
            return serve_main(argv[1:])
        except Exception as exc:
            code = exit_code_for(exc)
            log.error("serve: %s", exc, exc_info=code != ExitCode.CONFIG_ERROR)
            return int(code)
    parser = argparse.ArgumentParser(prog="python -m modelplane_runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    train_cmd = commands.add_parser("train", help="train one run config")
    train_cmd.add_argument("--config", type=Path, required=True, help="RunConfig JSON file")
    commands.add_parser("serve", help="serve a Serve config (serve --help)")
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        result = train(args.config)
    except Exception as exc:
        code = exit_code_for(exc)
        kind = _failure_kind(exc)
        # A traceback helps with an unexpected failure, not with one whose message says it all.
        log.error("%s: %s", kind, exc, exc_info=kind == "failure")
        _report(f"{kind}: {exc}"[:4000])
        return int(code)
    _report(result.to_termination_message())
    print(result.model_dump_json(), flush=True)
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
