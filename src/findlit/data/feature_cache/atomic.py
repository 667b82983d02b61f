"""Crash-safe files: per-writer temporary names, atomic renames, and cleanup after killed writers.

A file is written under ``<name>.tmp.<host>.<pid>`` (a name no other writer uses and no reader
takes for a cache file), fsync'ed and renamed into place, so a writer killed at any moment leaves
at most a temporary file behind. Such leftovers of dead processes on this host are removed later;
another host's (or a live process's) are left alone.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def temporary_path(path: Path) -> Path:
    """A name no other writer uses: ``<name>.tmp.<host>.<pid>``, never read as a shard."""
    return path.with_name(f"{path.name}.tmp.{socket.gethostname()}.{os.getpid()}")


def write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary file, fsync it and rename it to ``path`` (atomic on POSIX)."""
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_dead_temporaries(folder: Path, prefix: str) -> None:
    """Delete files ``<prefix>.*.tmp.*`` left by killed writers on this host (never a live one's)."""
    host = socket.gethostname()
    for path in folder.glob(f"{prefix}.*.tmp.*"):
        owner = path.name.split(".tmp.", 1)[1]
        writer_host, _, pid = owner.rpartition(".")
        if writer_host != host or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
