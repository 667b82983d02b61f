"""``findlit data``: ``synth`` writes the embedded default dataset, ``check`` reads every record.

``findlit data check`` reads and decodes every record of the datasets an experiment config names,
and every image of its ``data.predict`` entries, and reports what is wrong.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from findlit.cli.config import build_datamodule, load_data_section
from findlit.errors import ConfigError

CHECK_STAGES = ("train", "val", "test", "predict")
"""The ``data`` sections that ``findlit data check`` reads, in this order."""


def data_parser() -> ArgumentParser:
    """The parser of ``findlit data`` with its ``synth`` and ``check`` subcommands."""
    synth = ArgumentParser(description="Write the embedded default dataset in the COCO formats.")
    synth.add_argument("--out", type=str, default="data/demo", help="output folder")
    synth.add_argument("--train", type=int, default=2000, help="training images")
    synth.add_argument("--val", type=int, default=200, help="validation images (choices are made on them)")
    synth.add_argument("--test", type=int, default=200, help="test images (reported, never chosen on)")
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
    from findlit.data.synthetic.pipeline import check_arguments

    try:  # the generator's own rules, checked before anything is written
        check_arguments(
            {"train": args.train, "val": args.val, "test": args.test}, args.size, args.seed, args.workers
        )
    except ValueError as error:
        raise ConfigError(f"findlit data synth: {error}") from None
    summary = generate(
        Path(args.out),
        args.train,
        args.val,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        test=args.test,
    )
    print("\n".join(summary.lines()))
    return 0


def run_check(args: Namespace) -> int:
    """``findlit data check``: print counts and problems; non-zero exit when anything is wrong."""
    from findlit.data.check import check_predict, check_stages, format_reports

    datamodule = build_datamodule(load_data_section(args.config), args.config)
    wanted = CHECK_STAGES if args.stage is None else (args.stage,)
    stages = {stage: datamodule.configs[stage] for stage in wanted if stage != "predict"}
    predict = datamodule.predict_configs if "predict" in wanted else []
    if not any(stages.values()) and not predict:
        raise ConfigError(f"no datasets configured{' for stage ' + args.stage if args.stage else ''}")
    reports = check_stages(stages, datamodule.root) + check_predict(predict, datamodule.root)
    print(format_reports(reports))
    return 0 if all(report.ok for report in reports) else 1
