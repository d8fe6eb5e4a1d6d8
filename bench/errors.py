"""User-facing errors.

Anything raised as :class:`BenchError` is a one-line message for the user. Raised before training
(an unknown name, a rate out of range, a missing or corrupt file), it is a problem with the user's
input or environment: the CLI prints it and exits with code 2. Raised by a method while it trains
(a run that diverged, ``bench.train.Diverged``; AUM flagging every sample), it is that run's
outcome: the run is stored as failed with the message, and the grid goes on. Everything else is a
bug and keeps its traceback.
"""

import os
from pathlib import Path


class BenchError(Exception):
    """A one-line, user-facing error (exit code 2 from the CLI)."""


class DataError(BenchError):
    """Missing, corrupt or malformed data, or an invalid bias specification."""


def check_creatable(path, what: str) -> None:
    """BenchError unless a file or folder can be created at ``path`` (the option ``what`` names it
    in the message): the nearest existing folder above it is a folder and writable. Checked before
    any work; nothing is created here."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BenchError(f"{what}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BenchError(f"{what}: {existing} is not writable")
