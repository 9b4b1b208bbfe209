"""The two ways a run can fail, and the exit code each one gets."""

from __future__ import annotations

from modelplane_runtime.contract import ExitCode


class ConfigError(Exception):
    """The configuration or the data is wrong; retrying cannot help.

    The message names what is wrong and how to fix it; the process exits with
    ExitCode.CONFIG_ERROR so the Job's pod failure policy fails the job at once.
    """

    exit_code = ExitCode.CONFIG_ERROR


def exit_code_for(error: BaseException) -> ExitCode:
    """Config errors are permanent; anything else is assumed to be the infrastructure."""
    return ExitCode.CONFIG_ERROR if isinstance(error, ConfigError) else ExitCode.INFRASTRUCTURE
