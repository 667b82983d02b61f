"""The ``findlit`` command.

``findlit fit|validate|test|predict`` train and evaluate a FINDModule with LightningCLI (see
:mod:`findlit.cli.train`); ``findlit predict --config`` predicts on the images of the config's
``data.predict`` entries and writes ``predictions/<name>/<stem>.png`` and ``.json`` in the run
folder (:mod:`findlit.outputs.prediction_writer`); ``findlit predict`` without ``--config``
predicts on the image files it is given instead (see :mod:`findlit.cli.predict`).

``findlit data synth`` writes the embedded default dataset; ``findlit data check`` reads and
decodes every record of the datasets an experiment config names, and every image of its
``data.predict`` entries, and reports what is wrong;
``findlit cache`` fills the vision feature caches of a split (see :mod:`findlit.cli.cache`).

Every subcommand runs through the one reporter, :func:`findlit.cli.report.run_reported`: an error
of the user's is one line, ``findlit: <label>: <message>``, and exit code 2; ``data check`` and
``cache`` exit with 1 when they found problems in the data; anything else keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from findlit import __version__
from findlit.cli.commands import TRAINER_SUBCOMMANDS
from findlit.cli.report import USER_ERROR, run_reported

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
    """Entry point of the ``findlit`` console script: dispatch, and report the user's errors."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments in (["--version"], ["-V"]):
        print(f"findlit {__version__}")
        return 0
    if arguments in (["--help"], ["-h"]):
        print(USAGE)
        return 0
    return run_reported(lambda: _dispatch(arguments, from_sys_argv=argv is None))


def _dispatch(arguments: list[str], from_sys_argv: bool) -> int:
    """Run the subcommand ``arguments[0]`` and return its exit code (its errors propagate)."""
    if arguments and arguments[0] in TRAINER_SUBCOMMANDS:
        if len(arguments) == 1:  # nothing to train or evaluate: no config, no model
            print(USAGE, file=sys.stderr)
            return USER_ERROR
        if arguments[0] == "predict" and not _has_config(arguments[1:]):
            from findlit.cli.predict import main as predict_main

            return predict_main(arguments[1:])
        from findlit.cli.train import run

        # None: LightningCLI reads sys.argv itself (it warns when given both)
        return run(None if from_sys_argv else arguments)
    if arguments and arguments[0] == "cache":
        from findlit.cli.cache import main as cache_main

        return cache_main(arguments[1:])
    if not arguments or arguments[0] != "data":
        print(USAGE, file=sys.stderr)
        return USER_ERROR
    from findlit.cli.data import data_parser, run_check, run_synth

    args = data_parser().parse_args(arguments[1:])
    if args.subcommand == "synth":
        return run_synth(args.synth)
    return run_check(args.check)


if __name__ == "__main__":
    sys.exit(main())
