"""findlit's errors: one base that carries how the ``findlit`` command reports it, and its kinds.

Every error a user can cause and fix (a config key, a data file, a checkpoint, a cache, an earlier
output) is a :class:`FindlitError`: the command prints ``findlit: <label>: <message>`` on one line
and exits with ``exit_code``, without a traceback. Anything else is a bug and keeps its traceback.
This module imports nothing of findlit: every layer may raise these.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class FindlitError(Exception):
    """Base of the errors a user can fix; the message says what is wrong and where.

    Class attributes:
        label: how the command names the kind, e.g. ``"config error"``.
        exit_code: the command's exit code (2: the user's input is wrong).

    """

    label: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 2


class DataError(FindlitError):
    """A problem in a data file: names the file, the record and the config key.

    Args:
        message: what is wrong.
        file: the file the problem was found in.
        record: which record, e.g. ``"image_id=142238"`` or ``"ref_id=3"``; None for a whole-file problem.
        key: the config key that pointed to the file, e.g. ``"data.train[0].paths.panoptic_json"``.

    """

    label = "data error"

    def __init__(
        self, message: str, file: str | Path | None, record: str | None = None, key: str | None = None
    ):
        self.message = message
        self.file = str(file) if file is not None else None
        self.record = record
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(f"file {self.file}")
        if self.key is not None:
            where.append(f"set by config key '{self.key}'")
        if self.record is not None:
            where.append(f"record {self.record}")
        return f"{self.message} [{'; '.join(where)}]" if where else self.message

    def with_key(self, key: str | None) -> DataError:
        """Return a copy of this error that also names ``key`` (kept if already set)."""
        return DataError(self.message, self.file, self.record, self.key or key)


class ConfigError(FindlitError, ValueError):
    """A wrong or missing configuration key; the message names the key."""

    label = "config error"


class CheckpointError(FindlitError):
    """A checkpoint file that cannot be used: missing, not a checkpoint, of other encoders, unsafe."""

    label = "checkpoint error"


class CacheError(FindlitError):
    """A feature or prompt cache that cannot be used as it is; names its folder or file."""

    label = "cache error"


class OutputError(FindlitError):
    """A run would overwrite or lose earlier outputs; raised before anything is written."""

    label = "output error"
