"""The one atomic writer: a failed or killed write leaves the old file byte for byte, the permission
rule is open()'s, and leftovers of dead writers are recognised and removed (only theirs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from findlit.atomic_files import (
    TEMPORARY_MARK,
    AtomicFile,
    atomic_write,
    remove_dead_leftovers,
    temporary_path,
    write_bytes_atomic,
    write_json_atomic,
    writer_of,
)
from tests.fixtures import kill_writer_midway

OLD = bytes(range(256)) * 40


@pytest.fixture
def umask() -> Iterator[int]:
    """A umask other than the usual 0o022, so that the test sees it applied; restored afterwards."""
    previous = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(previous)


def test_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    write_bytes_atomic(target, OLD)
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["file.bin"]


def test_new_files_get_the_mode_open_gives_under_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "file.bin"
    write_bytes_atomic(target, OLD)
    with open(tmp_path / "plain.bin", "wb") as handle:
        handle.write(OLD)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask == 0o640
    assert target.stat().st_mode & 0o777 == (tmp_path / "plain.bin").stat().st_mode & 0o777
    # a replaced file's old mode is not carried over: the new file is made by the same rule
    target.chmod(0o600)
    write_bytes_atomic(target, b"new")
    assert target.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("interrupt", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_byte_for_byte(tmp_path: Path, interrupt: BaseException) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(OLD)
    before = target.stat()
    with pytest.raises(type(interrupt)), atomic_write(target) as file:
        file.write(b"half of the new content")
        file.flush()
        raise interrupt
    assert target.read_bytes() == OLD
    assert target.stat().st_ino == before.st_ino, "the old file itself is still there"
    assert os.listdir(tmp_path) == ["file.bin"], "the temporary file is removed"


def test_a_failed_first_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "file.json"
    with pytest.raises(TypeError):
        write_json_atomic(target, {"not serialisable": object()})
    assert os.listdir(tmp_path) == []


def test_json_round_trip(tmp_path: Path) -> None:
    document = {"name": "café", "values": [1, 2.5, None]}
    write_json_atomic(tmp_path / "d.json", document, indent=1)
    assert json.loads((tmp_path / "d.json").read_text(encoding="utf-8")) == document


def test_temporary_names_say_whose_they_are() -> None:
    target = Path("/data/cache/shard-00002.bin")
    first, second = temporary_path(target), temporary_path(target)
    assert first.parent == target.parent and first != second
    assert first.name.startswith(f"shard-00002.bin{TEMPORARY_MARK}")
    assert writer_of(first) == (socket.gethostname(), os.getpid())
    assert temporary_path(target, "partial").name.startswith(f"partial{TEMPORARY_MARK}")
    # names without the random tail (the feature cache's before), hosts with dots
    assert writer_of("shard-00001.bin.tmp.node-3.example.org.4242") == ("node-3.example.org", 4242)
    for other in ("shard-00001.bin", "shard-00001.json", "a.tmp.host.notapid", "a.tmp.", "x.tmp.h.-1"):
        assert writer_of(other) is None, other


def test_commit_if_absent_lets_the_first_writer_win(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    first, second = AtomicFile(target), AtomicFile(target)
    first.file.write(b"first")
    second.file.write(b"second")
    assert first.commit_if_absent()
    assert not second.commit_if_absent()
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["manifest.json"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_dead_writers_leftovers_on_this_host_are_removed(tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = tmp_path / f"file.bin{TEMPORARY_MARK}{host}.{_dead_pid()}-0a1b2c3d"
    mine = tmp_path / f"file.bin{TEMPORARY_MARK}{host}.{os.getpid()}-0a1b2c3d"
    foreign = tmp_path / f"file.bin{TEMPORARY_MARK}other-host.example.{_dead_pid()}"
    other_file = tmp_path / f"other.bin{TEMPORARY_MARK}{host}.{_dead_pid()}"
    for path in (dead, mine, foreign, other_file):
        path.write_bytes(b"partial")
    assert remove_dead_leftovers(tmp_path, "file.bin") == [dead]
    assert not dead.exists() and mine.exists() and foreign.exists() and other_file.exists()


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from findlit.atomic_files import atomic_write

    with atomic_write(sys.argv[1]) as file:
        file.write(b"the first half of a new file")
        file.flush()
        print("half written", flush=True)
        time.sleep(600)  # killed here
    """
)


@pytest.mark.parametrize("existing", [True, False])
def test_a_killed_writer_leaves_the_old_file_or_none(tmp_path: Path, existing: bool) -> None:
    target = tmp_path / "file.bin"
    if existing:
        target.write_bytes(OLD)
    pid = kill_writer_midway(KILLED_WRITER, target)
    if existing:
        assert target.read_bytes() == OLD
    else:
        assert not target.exists()
    [leftover] = [path for path in tmp_path.iterdir() if path != target]
    assert writer_of(leftover) == (socket.gethostname(), pid)
    assert remove_dead_leftovers(tmp_path, target.name) == [leftover]
    assert sorted(os.listdir(tmp_path)) == (["file.bin"] if existing else [])
