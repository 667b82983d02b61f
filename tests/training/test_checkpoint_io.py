"""Checkpoint files: atomic writes, ``weights_only`` loads, and the IO the ``findlit`` Trainer gets."""

from __future__ import annotations

import os
import random
import textwrap
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from findlit.cli.train import TRAINER_DEFAULTS
from findlit.training.checkpoint_io import (
    PARTIAL_PREFIX,
    SafeCheckpointIO,
    UnsafeCheckpointError,
    UseSafeCheckpointIO,
)
from findlit.training.rng_states import RestoreRNGStates, collect_rng_states, set_rng_states
from tests.fixtures import kill_writer_midway

GOOD = {"state_dict": {"weight": torch.arange(4.0)}, "global_step": 7}


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(PARTIAL_PREFIX))


def test_save_then_load_round_trip_with_usual_permissions(tmp_path: Path) -> None:
    io = SafeCheckpointIO()
    path = tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint(GOOD, path)
    loaded = io.load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["weight"], GOOD["state_dict"]["weight"])
    assert loaded["global_step"] == 7
    assert _leftovers(path.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_a_write_that_fails_midway_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(GOOD, path)

    def torn_save(obj: Any, file: Any) -> None:
        file.write(b"PK\x03\x04 half a zip archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"weight": torch.zeros(4)}, "global_step": 8}, path)
    monkeypatch.undo()
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 7 and torch.equal(loaded["state_dict"]["weight"], torch.arange(4.0))
    assert _leftovers(tmp_path) == []  # the partial file is removed on an exception


KILLED_WRITER = textwrap.dedent(
    """
    import io, sys, time, torch
    from findlit.training.checkpoint_io import SafeCheckpointIO

    real_save = torch.save

    def slow_save(obj, file):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        print("half written", flush=True)
        time.sleep(600)  # killed here

    torch.save = slow_save
    SafeCheckpointIO().save_checkpoint({"state_dict": {"weight": torch.zeros(100_000)}}, sys.argv[1])
    """
)


@pytest.mark.slow
def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint(GOOD, path)
    kill_writer_midway(KILLED_WRITER, path)
    assert SafeCheckpointIO().load_checkpoint(path)["global_step"] == 7
    # the killed write's partial file stays behind, named so that no checkpoint search picks it up
    [partial] = _leftovers(tmp_path)
    assert not partial.endswith(".ckpt") and "last" not in partial and "hpc_ckpt_" not in partial


class Payload:
    """Pickled by reference: unpickling it would import and call code of this module."""

    loaded = False

    def __init__(self) -> None:
        self.command = "anything"  # pickle calls __setstate__ only for a non-empty state

    def __setstate__(self, state: dict[str, Any]) -> None:
        Payload.loaded = True


def test_a_checkpoint_with_a_pickled_object_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "from-elsewhere.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"from-elsewhere\.ckpt") as refused:
        SafeCheckpointIO().load_checkpoint(path)
    # one line, and not torch's advice to retry with weights_only=False: for a file from elsewhere,
    # that is the advice to run its code
    assert "\n" not in str(refused.value) and "weights_only=False" not in str(refused.value)
    assert not Payload.loaded
    # an explicit weights_only=False (a trusted file) is the caller's choice
    assert isinstance(SafeCheckpointIO().load_checkpoint(path, weights_only=False)["payload"], Payload)
    assert Payload.loaded
    Payload.loaded = False


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/x", self.layer(batch[0]).sum())

    def val_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 2)), batch_size=2)


def _trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[UseSafeCheckpointIO()],
        **kwargs,
    )


def test_the_trainer_loads_through_the_safe_io(tmp_path: Path) -> None:
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Tiny().state_dict(), "payload": Payload()}, evil)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt"):
        _trainer(tmp_path).validate(_Tiny(), ckpt_path=evil)
    assert not Payload.loaded


@pytest.mark.parametrize(
    ("plugins", "expected"),
    [
        ([], SafeCheckpointIO),
        # a config's plugins list (slurm.yaml's) replaces a default one: the callback still installs it
        ([SLURMEnvironment(auto_requeue=False)], SafeCheckpointIO),
        # a CheckpointIO the user chose is kept, even Lightning's own
        ([TorchCheckpointIO()], TorchCheckpointIO),
    ],
)
def test_the_safe_io_is_installed_unless_the_config_names_one(
    tmp_path: Path, plugins: list[Any], expected: type
) -> None:
    trainer = _trainer(tmp_path, plugins=plugins)
    trainer.validate(_Tiny())
    assert type(trainer.strategy.checkpoint_io) is expected
    if expected is SafeCheckpointIO:
        trainer.save_checkpoint(tmp_path / "saved.ckpt")
        assert torch.load(tmp_path / "saved.ckpt", weights_only=True)["state_dict"]


def test_findlit_trainer_defaults_carry_both_callbacks() -> None:
    kinds = {type(callback) for callback in TRAINER_DEFAULTS["callbacks"]}
    assert {UseSafeCheckpointIO, RestoreRNGStates} <= kinds


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # numpy caches a second gaussian: its state has has_gauss set
    path = tmp_path / "rng.ckpt"
    torch.save({"rng": collect_rng_states()}, path)
    expected = (torch.rand(3), np.random.standard_normal(3), np.random.rand(2), random.random())
    set_rng_states(torch.load(path, weights_only=True)["rng"])
    again = (torch.rand(3), np.random.standard_normal(3), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and np.array_equal(expected[2], again[2])
    assert expected[3] == again[3]
