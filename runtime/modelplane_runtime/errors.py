"""The ways a run can fail, and the exit code each one gets."""

from __future__ import annotations

from modelplane_runtime.contract import ExitCode


class ConfigError(Exception):
    """The configuration or the data is wrong; retrying cannot help.

    The message names what is wrong and how to fix it; the process exits with
    ExitCode.CONFIG_ERROR so the Job's pod failure policy fails the job at once.
    """

    exit_code = ExitCode.CONFIG_ERROR


class StorageError(Exception):
    """Object storage failed after its retries (unreachable, timing out, answering 5xx).

    Not the configuration's fault: the process exits with ExitCode.INFRASTRUCTURE, so the
    operator replaces the job, which resumes from its newest checkpoint. The message names
    the object, the endpoint and the cause.
    """

    exit_code = ExitCode.INFRASTRUCTURE


def exit_code_for(error: BaseException) -> ExitCode:
    """Config errors are permanent; anything else is assumed to be the infrastructure."""
    return ExitCode.CONFIG_ERROR if isinstance(error, ConfigError) else ExitCode.INFRASTRUCTURE
