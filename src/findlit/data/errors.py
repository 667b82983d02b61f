"""The bad-record policy of the data layer: raise the first bad record, or skip and count them.

The errors themselves (:class:`~findlit.errors.DataError`, :class:`~findlit.errors.ConfigError`)
are in :mod:`findlit.errors`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from findlit.errors import ConfigError, DataError

BadRecordPolicy = Literal["error", "skip"]


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
