"""findlit's errors: one base that carries how the ``findlit`` command reports it, and its kinds.

Every error a user can cause and fix (a config key, a data file, a checkpoint, a cache, an earlier
output) is a :class:`FindlitError`: the command prints ``findlit: <label>: <message>`` on one line
and exits with ``exit_code``, without a traceback (:mod:`findlit.cli.report`). Anything else is a
bug and keeps its traceback. This module imports nothing of findlit: every layer may raise these.

Every kind can be rebuilt from its message alone, because that is how torch's DataLoader re-raises
a worker's exception in the main process: ``type(error)(text)``, where the text starts with
``Caught <Name> in DataLoader worker process N.`` and holds the worker's traceback
(``torch._utils.ExceptionWrapper.reraise``). The constructors find
the original message in that text (:func:`original_message`), so a data error raised while a
worker decodes a record reaches the user as that data error, with its own one-line message.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

_TRACEBACK = "Traceback (most recent call last):\n"


def original_message(kind: type[BaseException], text: str) -> str:
    """The message of a ``kind`` error that a DataLoader worker raised, from the text torch re-raises.

    That text is ``Caught <Name> in DataLoader worker process N.``, then ``Original Traceback (most
    recent call last):``, the frames, and the line ``<module>.<Name>: <message>`` (with the lines of
    a message of several). The message is what follows the type's name in the last traceback (the
    error itself, after any it was raised from). Any other text is returned as it is.
    """
    if not text.startswith(f"Caught {kind.__name__} ") or _TRACEBACK not in text:
        return text
    last = text.rsplit(_TRACEBACK, 1)[1]
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    header = f"\n{name}: "
    at = last.find(header)
    return text if at < 0 else last[at + len(header) :].rstrip("\n")


class FindlitError(Exception):
    """Base of the errors a user can fix; the message says what is wrong and where.

    Args:
        message: what is wrong, naming the config key or file (or, rebuilt in the main process,
            the text torch re-raises a worker's error with: see :func:`original_message`).

    Class attributes:
        label: how the command names the kind, e.g. ``"config error"``.
        exit_code: the command's exit code (2: the user's input is wrong).

    """

    label: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 2

    def __init__(self, message: str = "") -> None:
        super().__init__(original_message(type(self), str(message)))


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
        self,
        message: str,
        file: str | Path | None = None,
        record: str | None = None,
        key: str | None = None,
    ):
        # rebuilt from a worker's traceback text, the message is already rendered: file, record
        # and key are in it and stay None here
        self.message = original_message(type(self), message)
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


class OutputExistsError(OutputError, FileExistsError):
    """A run would overwrite the outputs of an earlier one; raised before it starts, naming them.

    An :class:`OutputError` (not any :class:`FileExistsError`) so that the ``findlit`` command
    reports it as the user's to resolve, while a file clash from a bug keeps its traceback.
    """
