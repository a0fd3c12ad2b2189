"""The exceptions a user can cause, and the one-line messages they carry.

The CLI turns an SgtoolError into one line on stderr and its exit code: 2 for bad usage
(unknown names, impossible values, malformed YAML), 1 for runtime trouble (missing data,
an unwritable runs dir, a locked run). Backend modules raise them; they never print.
"""


class SgtoolError(Exception):
    exit_code = 1


class UsageError(SgtoolError, ValueError):
    """A bad value or name. Also a ValueError, for library callers that catch those."""

    exit_code = 2


class LockHeld(SgtoolError):
    """Another process holds the lock of a run or of a sweep cell right now."""


def unknown_name(kind: str, name: str, valid) -> UsageError:
    """The registry error: says what was asked for and lists every valid name."""
    return UsageError(f"unknown {kind} '{name}'; choose from: {', '.join(sorted(valid))}")
