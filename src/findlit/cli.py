"""The ``findlit`` command.

``findlit fit|validate|test|predict`` train and evaluate a FINDModule with LightningCLI (see
:mod:`findlit.lightning_cli`); ``findlit predict --config`` predicts on the images of the config's
``data.predict`` entries and writes ``predictions/<name>/<stem>.png`` and ``.json`` in the run
folder (:mod:`findlit.outputs.prediction_writer`); ``findlit predict`` without ``--config``
predicts on the image files it is given instead (see :mod:`findlit.predict_cli`).

``findlit data synth`` writes the embedded default dataset; ``findlit data check`` reads and
decodes every record of the datasets an experiment config names, and every image of its
``data.predict`` entries, and reports what is wrong;
``findlit cache`` fills the vision feature caches of a split (see :mod:`findlit.cache_cli`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from findlit import __version__
from findlit.data.errors import ConfigError

SUBCOMMANDS = ("fit", "validate", "test", "predict")
"""The LightningCLI subcommands (see :mod:`findlit.lightning_cli`)."""

CHECK_STAGES = ("train", "val", "test", "predict")
"""The ``data`` sections that ``findlit data check`` reads, in this order."""


def data_parser() -> ArgumentParser:
    """The parser of ``findlit data`` with its ``synth`` and ``check`` subcommands."""
    synth = ArgumentParser(description="Write the embedded default dataset in the COCO formats.")
    synth.add_argument("--out", type=str, default="data/demo", help="output folder")
    synth.add_argument("--train", type=int, default=2000, help="training images")
    synth.add_argument("--val", type=int, default=200, help="validation images")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    synth.add_argument("--workers", type=int, default=2, help="worker processes")

    check = ArgumentParser(
        description="Read and decode every record of the configured datasets and every image of data.predict."
    )
    check.add_argument(
        "--config",
        type=str,
        action="append",
        required=True,
        help="experiment YAML (repeatable, merged in order)",
    )
    check.add_argument(
        "--stage",
        type=str,
        choices=CHECK_STAGES,
        default=None,
        help="only this section: train, val, test or predict",
    )

    parser = ArgumentParser(prog="findlit data", description="Dataset tools.")
    subcommands = parser.add_subcommands()
    subcommands.add_subcommand("synth", synth)
    subcommands.add_subcommand("check", check)
    return parser


def run_synth(args: Namespace) -> int:
    """``findlit data synth``: generate the dataset and print what was written."""
    from findlit.data.synthetic import generate

    summary = generate(
        Path(args.out), args.train, args.val, size=args.size, seed=args.seed, workers=args.workers
    )
    print("\n".join(summary.lines()))
    return 0


def load_config(config_paths: Sequence[str]) -> dict[str, Any]:
    """Merge experiment YAMLs with OmegaConf (later files win) into one resolved mapping."""
    merged: Any = OmegaConf.create()
    for path in config_paths:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        except (OmegaConfBaseException, yaml.YAMLError, ValueError, TypeError) as error:
            raise ConfigError(f"cannot read config {path}: {error}") from None
    try:
        container = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot resolve config {', '.join(config_paths)}: {error}") from None
    if not isinstance(container, dict):
        raise ConfigError(f"{', '.join(config_paths)} should hold a mapping")
    return {str(key): value for key, value in container.items()}


def load_data_section(config_paths: Sequence[str]) -> dict[str, Any]:
    """Merge experiment YAMLs with OmegaConf and return their ``data`` section (init args)."""
    container = load_config(config_paths)
    if "data" not in container:
        raise ConfigError(f"no 'data' section in {', '.join(config_paths)}")
    data = container["data"]
    if isinstance(data, dict) and "init_args" in data:
        data = data["init_args"]
    if not isinstance(data, dict):
        raise ConfigError("the 'data' section should be a mapping")
    return data


def build_datamodule(data: dict[str, Any]) -> Any:
    """Validate a ``data`` section against the DataModule's signature and build it."""
    from findlit.data.datamodule import MultiTaskDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiTaskDataModule, "data")
    try:
        namespace = parser.parse_object({"data": data})
    except Exception as error:  # jsonargparse raises argparse.ArgumentError with the offending key
        raise ConfigError(str(error)) from None
    return parser.instantiate(namespace).data


def run_check(args: Namespace) -> int:
    """``findlit data check``: print counts and problems; non-zero exit when anything is wrong."""
    from findlit.data.check import check_predict, check_stages, format_reports

    datamodule = build_datamodule(load_data_section(args.config))
    wanted = CHECK_STAGES if args.stage is None else (args.stage,)
    stages = {stage: datamodule.configs[stage] for stage in wanted if stage != "predict"}
    predict = datamodule.predict_configs if "predict" in wanted else []
    if not any(stages.values()) and not predict:
        raise ConfigError(f"no datasets configured{' for stage ' + args.stage if args.stage else ''}")
    reports = check_stages(stages, datamodule.root) + check_predict(predict, datamodule.root)
    print(format_reports(reports))
    return 0 if all(report.ok for report in reports) else 1


USAGE = """\
usage: findlit data {synth,check} ...
       findlit cache --config EXPERIMENT.yaml --split {train,val,test} ...
       findlit {fit,validate,test,predict} --config EXPERIMENT.yaml [--config PARTIAL.yaml ...] ...
       findlit predict --ckpt_path CKPT --images IMAGE ... --prompts TEXT ... --out DIR
       findlit --version

subcommands:
  fit        train a FINDModule (LightningCLI; --print_config shows the merged config)
  validate   evaluate a checkpoint on the validation datasets (--ckpt_path)
  test       evaluate a checkpoint on the test datasets (--ckpt_path)
  predict    masks for free-text prompts (and class names) on image files:
             --ckpt_path CKPT --images A.jpg ... --prompts "TEXT" ... [--classes a,b] --out DIR
             (overlay PNG and RLE JSON per image); with --config, LightningCLI's predict on the
             config's data.predict entries (e.g. --config configs/predict/coco_sample.yaml after
             the experiment), written to <run folder>/predictions/<name>/<stem>.png and .json
  data       synth: write the embedded default dataset; check: read every configured record
             and every data.predict image
  cache      fill the vision feature caches of a split
  `findlit <subcommand> --help` describes each one."""


def _has_config(arguments: Sequence[str]) -> bool:
    """Whether ``--config`` is among the arguments: ``predict`` then goes to LightningCLI."""
    return any(argument == "--config" or argument.startswith("--config=") for argument in arguments)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``findlit`` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments in (["--version"], ["-V"]):
        print(f"findlit {__version__}")
        return 0
    if arguments in (["--help"], ["-h"]):
        print(USAGE)
        return 0
    if arguments and arguments[0] in SUBCOMMANDS:
        if len(arguments) == 1:  # nothing to train or evaluate: no config, no model
            print(USAGE, file=sys.stderr)
            return 2
        if arguments[0] == "predict" and not _has_config(arguments[1:]):
            from findlit.predict_cli import main as predict_main

            return predict_main(arguments[1:])
        from findlit.lightning_cli import run

        # None: LightningCLI reads sys.argv itself (it warns when given both)
        return run(None if argv is None else arguments)
    if arguments and arguments[0] == "cache":
        from findlit.cache_cli import main as cache_main

        return cache_main(arguments[1:])
    if not arguments or arguments[0] != "data":
        print(USAGE, file=sys.stderr)
        return 2
    args = data_parser().parse_args(arguments[1:])
    try:
        if args.subcommand == "synth":
            return run_synth(args.synth)
        return run_check(args.check)
    except ConfigError as error:
        print(f"findlit: config error: {error}", file=sys.stderr)
        return 2
    except FileExistsError as error:
        print(f"findlit: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
