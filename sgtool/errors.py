"""One exception type for every error a user can cause.

The CLI turns an SgtoolError into one line on stderr and its exit code: 2 for bad usage
(unknown names, impossible values, malformed YAML), 1 for runtime trouble (missing data,
an unwritable runs dir, a locked run). Backend modules raise it; they never print.
"""


class SgtoolError(Exception):
    exit_code = 1


class UsageError(SgtoolError):
    exit_code = 2


def unknown_name(kind: str, name: str, valid) -> UsageError:
    """The registry error: says what was asked for and lists every valid name."""
    return UsageError(f"unknown {kind} '{name}'; choose from: {', '.join(sorted(valid))}")
