"""The training and evaluation subcommands of ``findlit``: ``fit``, ``validate``, ``test``, ``predict``.

A :class:`~lightning.pytorch.cli.LightningCLI` over :class:`~findlit.module.FINDModule` (the
``model`` section) and :class:`~findlit.data.datamodule.MultiTaskDataModule` (the ``data``
section). Configs are parsed in OmegaConf mode, so ``${...}`` interpolations resolve, and
``--config`` may be given several times (later files win)::

    findlit fit --config configs/demo.yaml --config configs/debug/fast.yaml
    findlit fit --config configs/demo.yaml --print_config
    findlit test --config configs/demo.yaml --ckpt_path logs/demo/.../checkpoints/last.ckpt

Unknown keys are errors that name the key. The Trainer defaults to ``use_distributed_sampler:
false`` (the DataModule shards by rank itself).

``findlit test`` also writes ``metrics.json`` and its predictions in standard formats (COCO
panoptic, COCO instance results, grounding and retrieval JSON) to the run's log dir: see
:mod:`findlit.outputs.test_results` and the ``test_results`` section.

The resolved config is saved as ``config.yaml`` in the run's log dir. Lightning's default
behaviour is kept: when that file already exists (a re-run into the same log dir) the run stops
with an error instead of overwriting it; pick another ``trainer.default_root_dir`` or logger
version, or pass ``--trainer.logger`` with a fresh ``version``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from findlit.data.datamodule import MultiTaskDataModule
from findlit.module import FINDModule
from findlit.outputs.test_results import TestResultsWriter

SUBCOMMANDS = ("fit", "validate", "test", "predict")
"""The LightningCLI subcommands ``findlit`` dispatches to :func:`run`."""

TRAINER_DEFAULTS: dict[str, Any] = {"use_distributed_sampler": False}
"""Trainer defaults of every subcommand (a config's ``trainer`` section overrides them)."""


class FindLightningCLI(LightningCLI):
    """LightningCLI of FINDModule and MultiTaskDataModule with OmegaConf parsing."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any):
        parser_kwargs = {"parser_mode": "omegaconf", "prog": "findlit"}
        parser_kwargs.update(kwargs.pop("parser_kwargs", {}))
        super().__init__(
            model_class=FINDModule,
            datamodule_class=MultiTaskDataModule,
            trainer_defaults=TRAINER_DEFAULTS | kwargs.pop("trainer_defaults", {}),
            parser_kwargs=parser_kwargs,
            args=None if args is None else list(args),
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``test_results`` section: the :class:`TestResultsWriter` callback.

        It is on by default and acts only in ``test`` (``metrics.json`` and the predictions in the
        run's log dir). Every subcommand accepts the section, so one config serves ``fit`` and
        ``test``; ``test_results: {enabled: false}`` turns it off, ``directory`` moves its output.
        """
        parser.add_lightning_class_args(TestResultsWriter, "test_results")


def run(args: Sequence[str] | None = None) -> int:
    """Run one LightningCLI subcommand (``args``, default ``sys.argv[1:]``) and return its exit code.

    Parse errors, ``--help`` and ``--print_config`` end the parser with ``SystemExit``: its code is
    returned.
    """
    try:
        FindLightningCLI(args=args)
    except SystemExit as exit_:
        code = exit_.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0
