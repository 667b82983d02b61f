"""Old module names (saved configs name e.g. ``findlit.slurm_requeue.DeferredRequeue``) still import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from findlit.moved_modules import MOVED


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_name_gives_the_moved_module_with_a_warning_naming_the_new_one(old: str, new: str) -> None:
    code = (
        "import importlib, warnings\n"
        "warnings.simplefilter('error')\n"
        f"try:\n    importlib.import_module({old!r})\n"
        "except FutureWarning as w:\n    print(w)\n"
    )
    # a fresh interpreter: this one may have imported the old name already
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"{old} moved to {new}" in out
    with pytest.warns(FutureWarning):
        sys.modules.pop(old, None)
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_a_saved_callback_class_path_resolves_to_the_same_class() -> None:
    from jsonargparse import ArgumentParser
    from lightning.pytorch.callbacks import Callback

    from findlit.training.slurm_requeue import DeferredRequeue

    sys.modules.pop("findlit.slurm_requeue", None)
    parser = ArgumentParser()
    parser.add_argument("--callback", type=Callback)
    with pytest.warns(FutureWarning):
        config = parser.parse_args(["--callback", '{"class_path": "findlit.slurm_requeue.DeferredRequeue"}'])
    assert isinstance(parser.instantiate(config).callback, DeferredRequeue)
