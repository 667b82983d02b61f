"""The hostile-input survey (tests/cli/hostile_cases.py, docs/hostile_inputs.md): every case gets a
non-zero exit and one line naming its file / record / key, no traceback, and leaves every file that
was there before byte-identical (nothing the user wrote is lost)."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import pytest

from findlit.cli import main
from tests.cli.hostile_cases import CASES, Case, Workspace, markdown_table
from tests.fixtures import REPO

DOC = REPO / "docs" / "hostile_inputs.md"


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _log_to_current_stderr() -> None:
    """Point every logging handler bound to an earlier test's captured stderr at the current one.

    Lightning's loggers keep the stream they were created with; pytest closes each test's capture,
    so a later test's log record would print a logging error (with a traceback) instead.
    """
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the closed one


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    _log_to_current_stderr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input_gets_one_line_and_loses_nothing(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["findlit"])  # LightningCLI warns when given args and argv
    space = Workspace(root=tmp_path)
    argv = case.build(space)
    capsys.readouterr()
    before = _snapshot(tmp_path)

    code, out, err = _run(argv, capsys)

    assert code != 0, f"accepted: {out[-500:]}{err[-500:]}"
    assert "Traceback" not in out + err
    fragments = [
        fragment.format(root=tmp_path, sample=space.sample or tmp_path / "no-sample")
        for fragment in case.expect
    ]
    if argv[:2] == ["data", "check"]:
        # the report: one line per problem, each naming the dataset's key, the file and the record
        lines = [line for line in out.splitlines() if all(fragment in line for fragment in fragments)]
        assert lines, f"no problem line holds {fragments}:\n{out}"
    else:
        # the error is the one line findlit prints (or argparse's "error:" line after its usage);
        # Lightning's own INFO log lines may precede it
        lines = [line for line in err.splitlines() if line.startswith(("findlit:", "error:"))]
        assert len(lines) == 1, f"not one findlit line:\n{err}"
        for fragment in fragments:
            assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"
    after = _snapshot(tmp_path)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert not changed, f"changed or deleted: {changed}"


def test_docs_table_lists_every_case() -> None:
    text = DOC.read_text()
    start = text.index("| # | area |")
    assert text[start:].startswith(markdown_table()), (
        "docs/hostile_inputs.md is out of date: python -m tests.cli.hostile_cases prints its table"
    )
    assert len(CASES) >= 60
