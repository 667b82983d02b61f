"""Files replaced whole or not at all: the one writer behind checkpoints, outputs and both caches.

Every file findlit writes for later use goes through :class:`AtomicFile`, with one set of rules:

- **Where and under which name.** The bytes go to a temporary file in the target's own folder (so
  the final move is a rename within one file system, never a copy), named
  ``<name>.tmp.<host>.<pid>-<token>``: ``<name>`` is the target's file name unless the caller gives
  a neutral one (checkpoints do: Lightning reads version numbers out of any name holding
  ``hpc_ckpt_``), ``<host>.<pid>`` says which process wrote it, so that leftovers of killed writers
  can be told from live writers' files (:func:`remove_dead_leftovers`), and ``<token>`` is random,
  so two writes of one target never share a file, even in one process. The name is visible (no
  leading dot): a leftover is something a person should see and may delete.
- **Durability.** The file is flushed and ``fsync``'ed, renamed over the target with
  ``os.replace`` (atomic on POSIX), and the folder is ``fsync``'ed where the system allows it, so
  that the rename itself survives a power cut.
- **Failure.** A write that raises removes its temporary file and leaves the target as it was, byte
  for byte. A writer killed outright leaves the target as it was and its temporary file behind.
- **Permissions.** See :data:`NEW_FILE_MODE`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

TEMPORARY_MARK = ".tmp."
"""What separates the name of a temporary file from its writer (host, pid and token)."""

NEW_FILE_MODE = 0o666
"""Mode asked for at creation; the kernel then clears the bits of the process's umask.

That is exactly what a plain ``open(path, "w")`` gives a new file, and it is the one permission rule
for everything written here. Not ``mkstemp``'s owner-only 0o600: checkpoints, caches and results
are shared with a group on clusters and read by other users' scoring tools, and the umask (or a
folder's default ACL, which applies the same way) is where users say who may read their files.
Letting the kernel apply the umask at creation also avoids reading it with ``os.umask``, which
changes it for every thread for a moment. A replaced target's old mode is not carried over: the
rename puts a new file in its place, and what is written should not depend on what was there.
"""


def temporary_path(target: str | os.PathLike[str], name: str | None = None) -> Path:
    """``<folder>/<name>.tmp.<host>.<pid>-<token>``: a new name for one write of ``target``.

    Args:
        target: the file to be written.
        name: the leading part of the name (default: ``target``'s file name).

    """
    path = Path(target)
    label = path.name if name is None else name
    return path.with_name(
        f"{label}{TEMPORARY_MARK}{socket.gethostname()}.{os.getpid()}-{secrets.token_hex(4)}"
    )


def writer_of(temporary: str | os.PathLike[str]) -> tuple[str, int] | None:
    """(host, pid) of the process that made a temporary file, or None for any other name.

    Also reads names without the ``-<token>`` tail (``<name>.tmp.<host>.<pid>``), as the feature
    cache named its temporary files before this module existed.
    """
    rest, _, process = Path(temporary).name.rpartition(".")
    _, mark, host = rest.rpartition(TEMPORARY_MARK)
    pid = process.partition("-")[0]
    if not mark or not host or not pid.isdigit():
        return None
    return host, int(pid)


def remove_dead_leftovers(folder: str | os.PathLike[str], name: str) -> list[Path]:
    """Delete ``<name>.tmp.*`` files in ``folder`` left by writers that died on this host.

    A file of another host (its pid means nothing here), of this process or of a live process is
    left alone. Returns the files deleted.
    """
    host, removed = socket.gethostname(), []
    for found in Path(folder).glob(f"{glob.escape(name)}{TEMPORARY_MARK}*"):
        writer = writer_of(found)
        if writer is None or writer[0] != host or writer[1] == os.getpid() or _alive(writer[1]):
            continue
        found.unlink(missing_ok=True)
        removed.append(found)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # no way to tell (e.g. Windows): keep the file
    return True


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make renames in ``folder`` durable, where folders can be opened and synced."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a folder; its renames are journalled anyway
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some network file systems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(descriptor)


class AtomicFile:
    """One write of ``target``: a binary file under a temporary name, moved into place whole.

    Write to :attr:`file`, then :meth:`commit` (or :meth:`commit_if_absent`); on any error call
    :meth:`abort`. Used as a context manager it gives :attr:`file`, commits when the block ends
    normally and aborts when it raises. Missing folders of ``target`` are created.

    Args:
        target: the file to write.
        name: the leading part of the temporary file's name (default: ``target``'s name); give a
            neutral one when tools scan the folder for names like ``target``'s.

    """

    def __init__(self, target: str | os.PathLike[str], *, name: str | None = None):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = temporary_path(self.target, name)
        # O_EXCL: never write into another writer's file, whatever happens to the name
        descriptor = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
        self.file: BinaryIO = os.fdopen(descriptor, "wb")
        self.finished = False

    def _sync_and_close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def commit(self) -> None:
        """Sync the file, rename it over ``target`` (replacing any file there) and sync the folder."""
        self._finish(replace=True)

    def commit_if_absent(self) -> bool:
        """Like :meth:`commit`, but only if ``target`` does not exist; False (and nothing written) if it does.

        Exactly one of several processes racing to create ``target`` wins (a hard link fails when the
        name exists). On file systems without hard links the rename is used: still atomic, but then
        the last of racing writers wins.
        """
        return self._finish(replace=False)

    def _finish(self, *, replace: bool) -> bool:
        if self.finished:
            raise RuntimeError(f"the write of {self.target} is already finished")
        try:
            self._sync_and_close()
            created = True
            if replace:
                os.replace(self.temporary, self.target)
            else:
                created = _link_new(self.temporary, self.target)
                self.temporary.unlink(missing_ok=True)
        except BaseException:
            self.abort()  # also on KeyboardInterrupt: the target stays, the temporary file goes
            raise
        self.finished = True
        fsync_folder(self.target.parent)
        return created

    def abort(self) -> None:
        """Close and delete the temporary file; ``target`` is left as it was."""
        self.finished = True
        self.file.close()
        self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.finished:
            return
        if kind is None:
            self.commit()
        else:
            self.abort()


_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}
"""What ``os.link`` fails with where a file system has no hard links."""


def _link_new(temporary: Path, target: Path) -> bool:
    """Give ``temporary``'s file the name ``target`` unless that exists; whether it was given."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        os.replace(temporary, target)  # no hard links here (FAT, some FUSE mounts)
    return True


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], *, name: str | None = None) -> Iterator[BinaryIO]:
    """A binary file to write ``target``'s new content to; put in place only if the block succeeds."""
    with AtomicFile(target, name=name) as file:
        yield file


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``target`` by ``data`` atomically (see the module doc)."""
    with atomic_write(target) as file:
        file.write(data)


def write_json_atomic(target: str | os.PathLike[str], document: Any, **dump_options: Any) -> None:
    """Replace ``target`` by ``document`` as UTF-8 JSON atomically; ``dump_options`` go to ``json.dump``."""
    with atomic_write(target) as file:
        text = io.TextIOWrapper(file, encoding="utf-8", newline="\n")
        json.dump(document, text, **dump_options)
        text.flush()
        text.detach()  # the binary file stays open for the commit
