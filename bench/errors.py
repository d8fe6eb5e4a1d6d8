"""User-facing errors.

Anything raised as :class:`BenchError` is a problem with the user's input or environment (an
unknown name, a rate out of range, a missing or corrupt file). The CLI prints its message as one
line and exits with code 2; everything else is a bug and keeps its traceback.
"""


class BenchError(Exception):
    """A one-line, user-facing error (exit code 2 from the CLI)."""


class DataError(BenchError):
    """Missing, corrupt or malformed data, or an invalid bias specification."""
