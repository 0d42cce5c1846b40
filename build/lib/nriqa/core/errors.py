"""The one exception type that stages, the CLI and the service turn into a clear message, and the
exit codes of the command line and the stages."""

from __future__ import annotations

import functools
import sys
from enum import IntEnum


class NriqaError(Exception):
    """A problem with the user's input or environment, stated so a person can act on it."""


class ExitCode(IntEnum):
    OK = 0
    PARTIAL = 1  # it ran, but some inputs failed; each is named on stderr
    ERROR = 2    # nothing done: a NriqaError (bad input, params, environment) or a usage error


def reporting_errors(command):
    """Wrap a command or stage: it returns its exit code (None for OK); a NriqaError prints
    `error: <message>` on stderr, without a traceback, and gives ExitCode.ERROR."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> int:
        try:
            return int(command(*args, **kwargs) or ExitCode.OK)
        except NriqaError as error:
            print(f"error: {error}", file=sys.stderr)
            return ExitCode.ERROR

    return run
