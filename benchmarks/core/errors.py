"""Errors that end a run with a one-line message and a documented exit code.

Raise :class:`ConfigError` for a bad configuration key or value and :class:`InputError` for
a missing, empty or unreadable input file or folder. Both carry a message that names the key
or the file; ``benchmarks.core.runner`` turns them into exit code 2 before training starts.
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_TARGET_MISSED = 3


class BenchmarkError(Exception):
    """Base class: an expected failure with a one-line, user-facing message."""

    exit_code = EXIT_FAILURE


class ConfigError(BenchmarkError):
    """A configuration key is unknown, missing, of the wrong type or out of range."""

    exit_code = EXIT_BAD_INPUT


class InputError(BenchmarkError):
    """An input file or folder is missing, empty, truncated or in the wrong format."""

    exit_code = EXIT_BAD_INPUT


class NonFiniteLossError(BenchmarkError):
    """The training loss became NaN or infinite."""

    exit_code = EXIT_FAILURE


class PreemptedError(BenchmarkError):
    """SIGTERM or SIGUSR1 stopped the run (after writing a checkpoint when configured)."""

    exit_code = EXIT_FAILURE


def one_line(err: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it.

    A worker's exception reaches the main process with the worker's traceback folded into
    its message; the original message is the last line, after the exception's class name.
    """
    lines = [line for line in str(err).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    last = lines[-1]
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
