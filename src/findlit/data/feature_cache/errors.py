"""What can be wrong with a feature cache: the exceptions, and the message of a stale one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from findlit.errors import CacheError


class FeatureCacheError(CacheError):
    """A feature cache cannot be used as it is; the message names the folder or shard file."""


class StaleCacheError(FeatureCacheError):
    """The cache was written for another configuration (encoder, preprocessing, dataset or storage)."""


class IncompleteCacheError(FeatureCacheError):
    """The cache does not exist yet, or some of its shards are missing."""


class CorruptShardError(FeatureCacheError):
    """A shard file or its sidecar is truncated, unreadable or fails its checksum.

    Args:
        path: the shard file (or sidecar) at fault.
        problem: what is wrong with it. None when the error is rebuilt from its message alone
            (``path`` is then that message), as torch's DataLoader re-raises a worker's error.

    """

    def __init__(self, path: Path | str, problem: str | None = None):
        self.path: Path | None
        if problem is None:
            super().__init__(str(path))
            self.path, self.problem = None, str(self)
            return
        self.path = Path(path)
        self.problem = problem
        super().__init__(
            f"corrupt feature cache shard {self.path}: {problem}. Delete it (and its .json sidecar) "
            "and run `findlit cache` again to recompute it."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # a process pool pickles errors back to its parent: keep the path and the problem apart
        if self.path is None:
            return (type(self), (str(self),))
        return (type(self), (self.path, self.problem))


def stale_message(folder: Path, key: str | None, differences: Sequence[str]) -> str:
    """The message of a :class:`StaleCacheError`: the differing fields and how to start over."""
    named = f" (set by {key})" if key else ""
    lines = "\n".join(f"  {line}" for line in differences)
    pointer = key or "the dataset's features"
    return (
        f"stale feature cache at {folder}{named}: it was computed for another configuration "
        f"(cached != configured):\n{lines}\n"
        f"It is never reused or overwritten. Delete {folder} and run "
        f"`findlit cache --config <experiment.yaml> --split <split>` again, or point {pointer} "
        "at another folder."
    )
