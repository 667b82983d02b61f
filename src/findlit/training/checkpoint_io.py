"""Checkpoint files that are never half-written and never run code when loaded.

:class:`SafeCheckpointIO` is findlit's checkpoint writer and reader:

- **Atomic writes.** A checkpoint is written by findlit's one atomic writer
  (:mod:`findlit.atomic_files`): a temporary file in the target's folder, ``fsync``, ``os.replace``
  over the target, ``fsync`` of the folder. A run killed while writing (SIGKILL, a node lost, a full
  disk) leaves the previous ``last.ckpt`` untouched. Lightning's own writer goes through an fsspec
  transaction whose temporary file is in ``/tmp``: when that is another file system, the final move
  is a copy, and a kill during it leaves a truncated checkpoint in place of a good one. The
  temporary name (``findlit-partial-checkpoint.tmp.<host>.<pid>-<token>``) does not end in
  ``.ckpt`` and holds neither the checkpoint's name, ``last`` nor ``hpc_ckpt_``, so
  ``--ckpt_path last`` and SLURM's requeue never mistake a leftover for a checkpoint. A write that
  fails with an exception removes its temporary file; one killed outright leaves it behind, and
  the next checkpoint written to that folder on that host deletes it.
- **Loads are data only.** Checkpoints load through :func:`findlit.torch_files.load_torch_file`
  (``weights_only=True``), so a checkpoint from elsewhere cannot run code: findlit writes only
  tensors and plain data. A file that is missing, not a checkpoint, truncated or holding code is a
  :class:`~findlit.errors.CheckpointError` of one line naming the file. (``--weights_only false``
  still reaches torch's unrestricted loader, for the user who wrote the file; no message suggests it.)
- :func:`read_lightning_checkpoint` reads a ``--ckpt_path`` before anything is built (tensors
  memory-mapped, not read) and refuses a file that loads but is no Lightning checkpoint.

The ``findlit`` commands use it through :class:`UseSafeCheckpointIO`, a default callback that
installs it on the Trainer's strategy unless the config names its own CheckpointIO plugin. A
callback rather than a default ``trainer.plugins`` entry, because a config's ``plugins`` list (e.g.
``configs/trainer/slurm.yaml``'s SLURMEnvironment) replaces the default list instead of adding to it.
Remote paths (``s3://``...) keep Lightning's writer; only local files get the atomic rename.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, cast

import lightning as L  # noqa: N812
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from findlit.atomic_files import TEMPORARY_MARK, atomic_write, remove_dead_leftovers
from findlit.errors import CheckpointError
from findlit.torch_files import UnsafeTorchFileError, load_torch_file

PARTIAL_NAME = "findlit-partial-checkpoint"
"""Leading part of the name of the temporary file a checkpoint is written to before its rename."""

PARTIAL_PREFIX = f"{PARTIAL_NAME}{TEMPORARY_MARK}"
"""How the names of those temporary files (and of killed writers' leftovers) begin."""


UnsafeCheckpointError = UnsafeTorchFileError
"""A checkpoint holds pickled objects that are not plain data, so loading it could run code."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """``--ckpt_path`` (or ``Predictor.from_checkpoint``) names no file."""


CHECKPOINT_NAMES = ("best", "last", "hpc", "registry")
"""``--ckpt_path`` values that Lightning resolves itself (``registry:<name>`` too), not file paths."""


def require_checkpoint_file(path: str | os.PathLike[str] | None, key: str = "--ckpt_path") -> None:
    """Refuse a local ``path`` that is not a file, before anything is built or written.

    None, Lightning's own names (:data:`CHECKPOINT_NAMES`) and remote URLs (``s3://``...) pass:
    Lightning resolves those itself.

    Raises:
        CheckpointNotFoundError: naming ``key`` and the path.

    """
    if path is None:
        return
    text = os.fspath(path)
    if text in CHECKPOINT_NAMES or text.startswith("registry:") or "://" in text:
        return
    if not os.path.isfile(text):
        where = "is a folder, not a checkpoint file" if os.path.isdir(text) else "no such file"
        raise CheckpointNotFoundError(f"{key}: {where}: {text}")


def read_lightning_checkpoint(path: str | os.PathLike[str], key: str = "--ckpt_path") -> dict[str, Any]:
    """The content of a Lightning checkpoint file, its tensors memory-mapped (for its small entries).

    Raises:
        CheckpointError: naming ``key`` and the file: missing, a folder, not a torch.save file,
            truncated, holding code (:func:`~findlit.torch_files.load_torch_file`), or a torch file
            that is no Lightning checkpoint (a plain state dict, another program's weights).

    """
    require_checkpoint_file(path, key)
    content = load_torch_file(path, what=key, mmap=True)
    if not isinstance(content, Mapping) or not isinstance(content.get("state_dict"), Mapping):
        kind = "a plain state dict?" if isinstance(content, Mapping) else f"a {type(content).__name__}"
        raise CheckpointError(
            f"{key} {os.fspath(path)}: not a Lightning checkpoint: no 'state_dict' entry ({kind})"
        )
    return dict(content)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` such that ``path`` holds either its old content or all of ``obj``."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        # a requeued or resumed run writes where the killed one did: its partial file can go
        remove_dead_leftovers(folder, PARTIAL_NAME)
    with atomic_write(path, name=PARTIAL_NAME) as file:
        torch.save(obj, file)


class SafeCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with atomic local writes and ``weights_only=True`` loads (see the module doc)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local files; remote ones as Lightning does)."""
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)  # raises on storage_options
            return
        atomic_torch_save(checkpoint, os.fspath(path))

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable[..., Any] | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load ``path`` with ``weights_only=True`` unless ``weights_only`` is False.

        Raises:
            CheckpointError: the file cannot be used (:func:`~findlit.torch_files.load_torch_file`);
                local files only, remote ones raise as Lightning's loader does.

        """
        # None means "the caller did not choose": Lightning would defer to torch's default, which an
        # environment variable (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) can turn off
        if weights_only is False or not isinstance(get_filesystem(path), LocalFileSystem):
            safe = weights_only is None or weights_only
            return super().load_checkpoint(path, map_location=map_location, weights_only=safe)
        return cast(dict[str, Any], load_torch_file(path, map_location=map_location))


def chose_checkpoint_io(trainer: L.Trainer) -> bool:
    """Whether the Trainer was given a CheckpointIO (in ``plugins`` or on its strategy)."""
    # Lightning keeps the one it was given on its accelerator connector (None when none was); a
    # strategy's own default is made lazily and looks the same as a TorchCheckpointIO given explicitly
    connector = getattr(trainer, "_accelerator_connector", None)
    if connector is not None and hasattr(connector, "checkpoint_io"):
        return connector.checkpoint_io is not None
    return type(trainer.strategy.checkpoint_io) is not TorchCheckpointIO  # a later Lightning: best guess


class UseSafeCheckpointIO(L.Callback):
    """Installs :class:`SafeCheckpointIO` on the Trainer's strategy unless the config named a CheckpointIO.

    Only the plain :class:`TorchCheckpointIO` that Lightning makes when none was given is replaced;
    strategies with their own writer (XLA) keep it. ``setup`` runs before a ``--ckpt_path``
    checkpoint is loaded and before any is saved.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Replace the strategy's default CheckpointIO (every stage: loads go through it too)."""
        if not chose_checkpoint_io(trainer) and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
