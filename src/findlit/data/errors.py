"""Errors and the bad-record policy of the data layer.

Every problem found in a user's data names the file, the record (image id, ann id, ref id...)
and, where known, the config key that pointed to the file, so that a user can fix it without
reading a traceback.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BadRecordPolicy = Literal["error", "skip"]


class DataError(Exception):
    """A problem in a data file: names the file, the record and the config key.

    Args:
        message: what is wrong.
        file: the file the problem was found in.
        record: which record, e.g. ``"image_id=142238"`` or ``"ref_id=3"``; None for a whole-file problem.
        key: the config key that pointed to the file, e.g. ``"data.train[0].paths.panoptic_json"``.

    """

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


class ConfigError(ValueError):
    """A wrong or missing configuration key; the message names the key."""


@dataclass
class BadRecords:
    """Collects per-record problems under a policy.

    With ``policy="error"`` the first problem is raised; with ``"skip"`` it is stored so the
    caller can drop the record and, at the end, emit one summary warning per dataset.
    ``findlit data check`` reads with ``"skip"`` and prints every stored problem.
    """

    policy: BadRecordPolicy = "error"
    dataset: str = ""
    problems: list[DataError] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in ("error", "skip"):
            raise ConfigError(f"on_bad_record must be 'error' or 'skip', got {self.policy!r}")

    def report(self, error: DataError) -> None:
        """Raise ``error`` (policy error) or remember it (policy skip)."""
        if self.policy == "error":
            raise error
        self.problems.append(error)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Report any :class:`DataError` raised in the block instead of propagating it."""
        try:
            yield
        except DataError as error:
            self.report(error)

    def warn_summary(self) -> None:
        """One warning for all the records skipped so far (nothing if none)."""
        if self.problems:
            first = self.problems[0]
            warnings.warn(
                f"dataset '{self.dataset}': skipped {len(self.problems)} bad record(s); first: {first}",
                stacklevel=2,
            )
