"""The training and evaluation subcommands of ``findlit``: ``fit``, ``validate``, ``test``, ``predict``.

A :class:`~lightning.pytorch.cli.LightningCLI` over :class:`~findlit.training.module.FINDModule` (the
``model`` section) and :class:`~findlit.data.datamodule.MultiTaskDataModule` (the ``data``
section). Configs are parsed in OmegaConf mode, so ``${...}`` interpolations resolve, and
``--config`` may be given several times (later files win)::

    findlit fit --config configs/demo.yaml --config configs/debug/fast.yaml
    findlit fit --config configs/demo.yaml --print_config
    findlit test --config configs/demo.yaml --ckpt_path logs/demo/.../checkpoints/last.ckpt

An unknown key or a value of the wrong type is a config error naming the key (with its list
index, ``data.train[0].pathz``) and the config file that set it (:mod:`findlit.cli.parse_errors`);
``model.task_options`` are checked against the task classes right after parsing. So are the
problems found after parsing, before anything trains (a missing dataset file or ``--ckpt_path``,
an empty ``data.predict`` request, a checkpoint of other encoders...): the command prints
``findlit: config error: ...`` (or ``data error``...) and exits with code 2, without a traceback
(:mod:`findlit.cli.report`). The Trainer defaults to ``use_distributed_sampler:
false`` (the DataModule shards by rank itself).

``findlit test`` also writes ``metrics.json`` and its predictions in standard formats (COCO
panoptic, COCO instance results, grounding and retrieval JSON) to the run's log dir: see
:mod:`findlit.outputs.test_results` and the ``test_results`` section.

``findlit predict`` runs the model on the images of ``data.predict`` (files and folders, with
free-text prompts and class names; e.g. ``configs/predict/coco_sample.yaml`` merged after an
experiment) and writes ``predictions/<name>/<stem>.png`` (overlay) and ``<stem>.json`` (COCO RLE
masks) per image in the run's log dir, refusing to overwrite earlier outputs: see
:mod:`findlit.outputs.prediction_writer` and the ``prediction_writer`` section::

    findlit predict --config configs/demo.yaml --config configs/predict/coco_sample.yaml \
        --ckpt_path logs/demo/.../checkpoints/last.ckpt

The resolved config is saved as ``config.yaml`` in the run's log dir. When that file already
exists (a re-run into the same log dir) the run stops before it starts, with an output error,
instead of overwriting it (Lightning's rule, without its traceback and before the loggers write
into the folder); pick another ``trainer.default_root_dir`` or logger version. Loggers without
a folder per run (W&B...) get the resolved config through ``log_hyperparams`` and their
``config.yaml`` next to the run's checkpoints (:class:`SaveAndLogConfigCallback`). The progress
bar is Rich's by default.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from findlit.cli.config import config_files, key_source
from findlit.cli.parse_errors import FindArgumentParser
from findlit.data.datamodule import MultiTaskDataModule
from findlit.errors import ConfigError, OutputError
from findlit.option_errors import format_key
from findlit.outputs.prediction_writer import PredictionWriter
from findlit.outputs.test_results import TestResultsWriter
from findlit.training.checkpoint_io import (
    UseSafeCheckpointIO,
    read_lightning_checkpoint,
    require_checkpoint_file,
)
from findlit.training.model_options import task_classes, task_options_problem
from findlit.training.module import FINDModule
from findlit.training.rng_states import RestoreRNGStates

EVALUATING = ("validate", "test", "predict")
"""Subcommands that run a trained interface: without ``--ckpt_path`` they need ``--allow_untrained``."""

TRAINER_DEFAULTS: dict[str, Any] = {
    "use_distributed_sampler": False,
    # added to a config's callbacks, never replaced by them (LightningCLI's rule for callbacks)
    "callbacks": [UseSafeCheckpointIO(), RestoreRNGStates()],
}
"""Trainer defaults of every subcommand (a config's ``trainer`` section overrides them).

Checkpoints are written atomically and load with ``weights_only=True`` (:class:`UseSafeCheckpointIO`
installs :class:`~findlit.training.checkpoint_io.SafeCheckpointIO` unless the config's ``trainer.plugins``
name a CheckpointIO; a callback, because a config's ``plugins`` list would replace a default one),
and they hold the global generator states that a resumed fit restores (:class:`RestoreRNGStates`).
The two callbacks keep no state between runs.

No ``logger`` is given, so Lightning's default applies: a TensorBoardLogger in
``trainer.default_root_dir`` when ``tensorboard`` (or ``tensorboardX``) is installed, else a CSVLogger.
The progress bar is :class:`~lightning.pytorch.callbacks.RichProgressBar` unless the config turns
the bar off or names its own (see :func:`wants_default_progress_bar`).
"""


def _is_progress_bar(callback: Any) -> bool:
    """Whether a ``trainer.callbacks`` entry (an instance or a ``class_path`` config) is a progress bar."""
    if isinstance(callback, ProgressBar):
        return True
    class_path = callback.get("class_path") if hasattr(callback, "get") else None
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False  # the parser reports it; no opinion here
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def wants_default_progress_bar(trainer: Any) -> bool:
    """Whether a parsed ``trainer`` section gets the default RichProgressBar.

    Not when ``enable_progress_bar`` is false (Lightning rejects a bar then), when ``callbacks`` name
    a progress bar already (Lightning rejects two), or when ``rich`` is not installed.
    """
    if trainer is None or trainer.get("enable_progress_bar") is False:
        return False
    callbacks = trainer.get("callbacks") or []
    if not isinstance(callbacks, list):
        callbacks = [callbacks]
    if any(_is_progress_bar(callback) for callback in callbacks):
        return False
    return importlib.util.find_spec("rich") is not None


EARLIER_RUN_FILES = ("metrics.csv", "hparams.yaml", "metrics.json", "predictions", "overlays", "checkpoints")
"""Files and folders of a run folder (besides ``config.yaml``) that show an earlier run used it."""


class SaveAndLogConfigCallback(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run's folder and gives it to the loggers.

    CSV and TensorBoard loggers keep a folder per run, which gets ``config.yaml`` (Lightning's
    behaviour). Other loggers (W&B, MLflow...) get the whole resolved config, as nested sections, through
    ``log_hyperparams``; Lightning would put their ``config.yaml`` in their ``save_dir``, shared by every
    run, so it goes to ``<save_dir>/<name>/<version>/`` instead, next to the run's checkpoints.

    An existing ``config.yaml`` (a re-run into the same run folder) is an
    :class:`~findlit.errors.OutputError`: found before the run starts when the folder is known then
    (:meth:`early_config_path`: CSV and TensorBoard loggers, or none), else when the run sets up.
    """

    def early_config_path(self, trainer: Trainer) -> str | None:
        """Where ``config.yaml`` will go, when known before the run starts; else None.

        Lightning's rule (``trainer.log_dir``): the first logger's ``log_dir`` for CSV and
        TensorBoard (computed from the folders that exist: nothing is created), the trainer's
        ``default_root_dir`` without a logger. Other loggers name their run when it starts.
        """
        if not self.save_to_log_dir:
            return None
        if not trainer.loggers:
            log_dir = trainer.default_root_dir
        elif isinstance(trainer.loggers[0], (CSVLogger, TensorBoardLogger)):
            log_dir = trainer.loggers[0].log_dir
        else:
            return None
        return os.path.join(log_dir, self.config_filename)

    def refuse_earlier_run(self, config_path: str | None) -> None:
        """Raise an OutputError when ``config_path`` (or another run's file beside it) exists.

        Besides ``config.yaml``, the files a run writes in its folder mark an earlier run, also one
        started without the CLI or whose ``config.yaml`` was removed: the CSV logger would replace
        its ``metrics.csv``, the test-results writer refuse its ``metrics.json`` only after that.
        """
        if config_path is None or self.overwrite:
            return
        filesystem = get_filesystem(config_path)
        folder = os.path.dirname(config_path)
        marks = [config_path, *(os.path.join(folder, name) for name in EARLIER_RUN_FILES)]
        found = next((path for path in marks if filesystem.exists(path)), None)
        if found is None:
            return
        raise OutputError(
            f"{found} exists: this run folder holds an earlier run, which is kept. Set another "
            "trainer.default_root_dir, or another logger version (e.g. --trainer.logger.init_args.version)"
        )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Move ``config.yaml`` into the run's own folder when the first logger has none, then save."""
        if not self.already_saved and self.save_to_log_dir and trainer.loggers:
            first = trainer.loggers[0]
            if not isinstance(first, (CSVLogger, TensorBoardLogger)):
                # the same folder as ModelCheckpoint's default dirpath; the logger made its experiment
                # (and so its version) before the callbacks' setup
                version = first.version if isinstance(first.version, str) else f"version_{first.version}"
                run_dir = os.path.join(str(first.name), version)
                self.config_filename = os.path.join(run_dir, os.path.basename(self.config_filename))
                if trainer.is_global_zero:
                    root = first.save_dir if first.save_dir is not None else trainer.default_root_dir
                    os.makedirs(os.path.join(root, run_dir), exist_ok=True)
        if not self.already_saved and self.save_to_log_dir:
            # Lightning's own refusal is a RuntimeError with a traceback; ours is the user's to fix.
            # `trainer.log_dir` broadcasts rank 0's folder: every rank must call it, or rank 0's
            # broadcast pairs with the next one of the other ranks (Lightning's "file exists"
            # broadcast, which then reads rank 0's folder name as True). Rank 0 checks the file and
            # every rank learns the answer, so that all stop together.
            log_dir = trainer.log_dir
            refusal = None
            if trainer.is_global_zero and log_dir is not None:
                try:
                    self.refuse_earlier_run(os.path.join(log_dir, self.config_filename))
                except OutputError as error:
                    refusal = str(error)
            refusal = trainer.strategy.broadcast(refusal)
            if refusal is not None:
                raise OutputError(refusal)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Log the resolved config to every logger but CSV and TensorBoard (rank zero only)."""
        file_loggers = (CSVLogger, TensorBoardLogger)
        loggers = [logger for logger in trainer.loggers if not isinstance(logger, file_loggers)]
        if not loggers:
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in loggers:
            logger.log_hyperparams(config)


def _refuse_file_as_folder(trainer: Trainer) -> None:
    """An OutputError when ``trainer.default_root_dir`` or a logger's ``save_dir`` names a file.

    The loggers would otherwise fail with a traceback when they list or create their run folder.
    """
    folders: list[tuple[str, str | None]] = [("trainer.default_root_dir", trainer.default_root_dir)]
    for index, logger in enumerate(trainer.loggers):
        where = "trainer.logger" if len(trainer.loggers) == 1 else f"trainer.logger[{index}]"
        folders.append((f"{where}.init_args.save_dir", getattr(logger, "save_dir", None)))
    for key, folder in folders:
        if folder is not None and os.path.exists(folder) and not os.path.isdir(folder):
            raise OutputError(f"{key}: {folder} is a file, not a folder")


class FindLightningCLI(LightningCLI):
    """LightningCLI of FINDModule and MultiTaskDataModule with OmegaConf parsing."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any):
        parser_kwargs = {"parser_mode": "omegaconf", "prog": "findlit"}
        parser_kwargs.update(kwargs.pop("parser_kwargs", {}))
        super().__init__(
            model_class=FINDModule,
            parser_class=kwargs.pop("parser_class", FindArgumentParser),
            datamodule_class=MultiTaskDataModule,
            trainer_defaults=TRAINER_DEFAULTS | kwargs.pop("trainer_defaults", {}),
            save_config_callback=kwargs.pop("save_config_callback", SaveAndLogConfigCallback),
            parser_kwargs=parser_kwargs,
            args=None if args is None else list(args),
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``test_results`` and ``prediction_writer`` sections: the writer callbacks.

        :class:`TestResultsWriter` is on by default and acts only in ``test`` (``metrics.json`` and
        the predictions in the run's log dir); :class:`PredictionWriter` likewise acts only in
        ``predict`` (an overlay and a JSON per image of ``data.predict``). Every subcommand accepts
        both sections, so one config serves ``fit``, ``test`` and ``predict``; ``enabled: false``
        turns a writer off, ``directory`` moves its output, ``prediction_writer.overwrite: true``
        replaces earlier predictions.
        """
        parser.add_lightning_class_args(TestResultsWriter, "test_results")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_argument(
            "--allow_untrained",
            type=bool,
            default=False,
            help="validate, test and predict: run without --ckpt_path, on the untrained interface "
            "(refused otherwise, so that a forgotten checkpoint is not an evaluation of random weights)",
        )
        parser.add_argument(
            "--test_after_fit",
            type=str | None,
            default=None,
            help="fit only: then test this checkpoint in the same run ('best', 'last' or a path); "
            "the test datasets are data.test",
        )

    def after_instantiate_classes(self) -> None:
        """Refuse a run folder that holds an earlier run's ``config.yaml`` before the run starts.

        The loggers would otherwise create their files in it (TensorBoard's events, CSV's
        ``metrics.csv``, which a new run replaces) before :class:`SaveAndLogConfigCallback` refuses
        it at setup. Only the process of global rank 0 checks (rank from the launcher's environment,
        as Lightning reads it): it alone writes ``config.yaml``, and the other ranks may start after
        it did (SLURM starts them all at once, but a late node must not refuse rank 0's own run).
        """
        if getattr(rank_zero_only, "rank", 0) != 0:  # set by Lightning at import (typed as a function)
            return
        _refuse_file_as_folder(self.trainer)
        for callback in getattr(self.trainer, "callbacks", []):  # set by the Trainer at runtime
            if isinstance(callback, SaveAndLogConfigCallback):
                callback.refuse_earlier_run(callback.early_config_path(self.trainer))

    def after_fit(self) -> None:
        """Test the checkpoint that ``test_after_fit`` names, when set (``findlit fit`` only)."""
        checkpoint = self._get(self.config, "test_after_fit")
        if checkpoint is None:
            return
        if checkpoint == "best" and not self._best_checkpoint_exists():
            checkpoint = "last"  # no checkpoint was monitored (e.g. no validation): test the weights
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=checkpoint)

    def before_predict(self) -> None:
        """Do not keep every image's masks until the end: the writer saves them batch by batch.

        ``trainer.predict`` returns (and so holds in memory) all predictions unless told not to, and
        the CLI discards them; an explicit ``--return_predictions true`` is kept.
        """
        arguments = self.config_init[str(self.subcommand)]
        if arguments.get("return_predictions") is None:
            arguments["return_predictions"] = False

    def _arguments(self) -> list[str]:
        """The command line that was parsed (the parser keeps it)."""
        arguments = getattr(self.parser, "args", None)
        return list(arguments) if isinstance(arguments, list) else []

    def _check_sections(self, config: Any) -> None:
        """Refuse a top-level key of a config file that is no section (jsonargparse ignores it)."""
        known = {str(key).split(".", 1)[0] for key in config.keys()}  # noqa: SIM118 (dotted keys of a Namespace)
        for path in config_files(self._arguments()):
            try:
                content = yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError):
                continue  # the parser has read it already; nothing to add
            unknown = sorted(set(content) - known) if isinstance(content, dict) else []
            if unknown:
                raise ConfigError(f"{unknown[0]}: no such section (in {path})")

    def _check_task_options(self, model: Any) -> None:
        """Raise a ConfigError naming ``model.task_options.<task>.<option>`` and its config file."""
        if model is None:
            return
        tasks = model.get("tasks")
        tasks = list(task_classes()) if tasks is None else list(tasks)
        problem = task_options_problem(model.get("task_options"), tasks)
        if problem is None:
            return
        key, message = problem
        arguments = self._arguments()
        where = key_source(key, config_files(arguments), arguments)
        raise ConfigError(f"{format_key(key)}: {message}{f' ({where})' if where else ''}")

    def _check_checkpoint(self, subcommand: str | None, config: Any) -> None:
        """Refuse a ``--ckpt_path`` findlit cannot use, and a run that would evaluate random weights.

        The file is read here (tensors memory-mapped), before LightningCLI reads its hyperparameters
        with a bare ``torch.load``, whose failures would be tracebacks.
        """
        path = config.get("ckpt_path")
        if path is None:
            if subcommand in EVALUATING and not config.get("allow_untrained"):
                raise ConfigError(
                    f"--ckpt_path: findlit {subcommand} without a checkpoint would run the untrained "
                    "interface; give --ckpt_path CKPT, or --allow_untrained true to do that on purpose"
                )
            return
        require_checkpoint_file(path)
        if os.path.isfile(str(path)):  # not "last", "hpc" or a remote URL: Lightning resolves those
            read_lightning_checkpoint(path)

    def _best_checkpoint_exists(self) -> bool:
        callback = self.trainer.checkpoint_callback
        return bool(getattr(callback, "best_model_path", ""))

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check what the parser cannot, before anything is loaded, seeded or built.

        Checked: each ``model.task_options.<task>`` against its task class's signature (the tasks
        are an open set, so their options are a plain mapping to the parser), and a ``--ckpt_path``
        that names no file (LightningCLI would read its hyperparameters next, and Lightning find
        it missing only once the run has started).
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand, self.config) if subcommand else self.config
        self._check_sections(config)
        self._check_task_options(config.get("model"))
        self._check_checkpoint(subcommand, config)

    def before_instantiate_classes(self) -> None:
        """Add the default RichProgressBar (a fresh one per run) when the config allows it."""
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        if wants_default_progress_bar(config.get("trainer")):
            callbacks = self.trainer_defaults.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*callbacks, RichProgressBar()]}


def run(args: Sequence[str] | None = None) -> int:
    """Run one LightningCLI subcommand (``args``, default ``sys.argv[1:]``) and return its exit code.

    ``--help`` and ``--print_config`` end the parser with ``SystemExit``: its code is returned. A
    :class:`~findlit.errors.FindlitError` (a config error from the parser, a missing dataset file in
    the DataModule's setup, a checkpoint of other encoders...) propagates to the dispatcher's
    reporter (:mod:`findlit.cli.report`); Lightning has already torn the run down by then (its
    loggers are finalised as failed), and nothing of the user's is removed.
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
