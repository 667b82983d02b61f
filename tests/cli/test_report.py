"""The one reporter: findlit's errors are one line and their exit code; anything else propagates."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from findlit.cli.report import PROBLEMS_FOUND, SUCCESS, USER_ERROR, error_line, run_reported
from findlit.data.feature_cache.errors import CorruptShardError, StaleCacheError
from findlit.data.synthetic.output_folder import ForeignFolderError
from findlit.encoders.checkpoint import EncoderMismatchError
from findlit.encoders.prompt_cache import PromptCacheError
from findlit.errors import ConfigError, DataError, FindlitError
from findlit.inference.predictor import PredictError
from findlit.outputs.test_results import OutputExistsError
from findlit.training.checkpoint_io import CheckpointNotFoundError, UnsafeCheckpointError

KEY = "data.val[0].paths.panoptic_json"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            ConfigError("data.predict[0].prompts: empty"),
            "findlit: config error: data.predict[0].prompts: empty",
        ),
        (
            DataError("file not found", "a.json", key=KEY),
            f"findlit: data error: file not found [file a.json; set by config key '{KEY}']",
        ),
        (EncoderMismatchError("differ"), "findlit: checkpoint error: differ"),
        (UnsafeCheckpointError("evil.ckpt"), "findlit: checkpoint error: evil.ckpt"),
        (
            CheckpointNotFoundError("--ckpt_path: no such file: x"),
            "findlit: checkpoint error: --ckpt_path: no such file: x",
        ),
        (StaleCacheError("stale"), "findlit: cache error: stale"),
        (
            PromptCacheError("bad", "m.json"),
            "findlit: cache error: bad [file m.json]; delete the folder . to rebuild the cache",
        ),
        (OutputExistsError("earlier"), "findlit: output error: earlier"),
        (ForeignFolderError("not ours"), "findlit: output error: not ours"),
        (PredictError("no prompt"), "findlit: config error: no prompt"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_every_user_error_is_one_labelled_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], error: FindlitError, line: str
) -> None:
    assert error_line(error) == line

    def failing() -> int:
        raise error

    assert run_reported(failing) == USER_ERROR == 2
    assert capsys.readouterr().err == line + "\n"


def test_the_builtin_bases_are_kept_for_callers_that_catch_them() -> None:
    assert isinstance(OutputExistsError("x"), FileExistsError)
    assert isinstance(ForeignFolderError("x"), FileExistsError)
    assert isinstance(UnsafeCheckpointError("x"), pickle.UnpicklingError)
    assert isinstance(CheckpointNotFoundError("x"), FileNotFoundError)
    assert isinstance(ConfigError("x"), ValueError) and isinstance(PredictError("x"), ValueError)
    assert isinstance(EncoderMismatchError("x"), RuntimeError)


@pytest.mark.parametrize("bug", [ValueError("x"), FileExistsError("x"), RuntimeError("x"), KeyError("x")])
def test_other_exceptions_propagate(bug: Exception) -> None:
    """The built-in types ours derive from say nothing about who is at fault: a traceback is due."""

    def failing() -> int:
        raise bug

    with pytest.raises(type(bug)):
        run_reported(failing)


def test_exit_codes() -> None:
    assert (SUCCESS, PROBLEMS_FOUND, USER_ERROR) == (0, 1, 2)
    assert run_reported(lambda: PROBLEMS_FOUND) == 1


def test_corrupt_shard_error_pickles_with_its_path(tmp_path: Path) -> None:
    error = CorruptShardError(tmp_path / "shard-00001.bin", "truncated")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.path == error.path and copy.problem == "truncated" and str(copy) == str(error)
