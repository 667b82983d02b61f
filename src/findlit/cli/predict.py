r"""``findlit predict`` on image files: an overlay and RLE JSON per image (see the Predictor).

::

    findlit predict --ckpt_path run.ckpt --images a.jpg b.jpg --prompts "the cat" "a red car" \
        [--classes person,dog] [--stuff sky,grass] [--points 120,80 200,90,0] [--boxes 10,10,90,120] \
        [--scribbles scribble.png] \
        --out predictions/

writes ``predictions/a.png``, ``predictions/a.json``, ``predictions/b.png``, ``predictions/b.json``.
Bad input (no prompt, a missing image, an existing output without ``--overwrite``, a checkpoint of
other encoders) is reported before anything runs.

``findlit predict --config EXP.yaml --config configs/predict/coco_sample.yaml --ckpt_path run.ckpt``
is LightningCLI's predict instead (see :mod:`findlit.cli.train`): the same predictions
(:func:`~findlit.tasks.requests.predict_batch` serves both) on the images of the config's
``data.predict`` entries (:class:`~findlit.data.predict_config.PredictConfig`: files and folders,
prompts, class names, resize, batch size), written to ``predictions/<name>/<stem>.png`` and
``<stem>.json`` in the run folder (:mod:`findlit.outputs.prediction_writer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentParser


def _names(value: str | None) -> list[str]:
    """Comma-separated class names as a list (blank entries kept, so they are reported)."""
    return [] if value is None else [name.strip() for name in value.split(",")]


def _numbers(values: Sequence[str], flag: str, shape: str, sizes: tuple[int, ...]) -> list[list[float]]:
    """``x,y[,label]`` or ``x0,y0,x1,y1`` strings as lists of numbers; a malformed one is refused."""
    from findlit.inference.predictor import PredictError

    parsed = []
    for value in values:
        try:
            numbers = [float(part) for part in value.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) not in sizes:
            raise PredictError(f"{flag}: {value!r} is not {shape}")
        parsed.append(numbers)
    return parsed


def parser() -> ArgumentParser:
    """The parser of ``findlit predict`` on images."""
    parser = ArgumentParser(
        prog="findlit predict",
        description="Predict masks for free-text prompts (and class names, clicks, boxes) on image files; "
        "write an overlay PNG and a JSON of COCO RLE masks per image. With --config, LightningCLI's "
        "predict runs on the config's data.predict entries (e.g. --config EXP.yaml --config "
        "configs/predict/coco_sample.yaml --ckpt_path CKPT) and writes <run folder>/predictions/<name>/.",
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="findlit checkpoint")
    parser.add_argument(
        "--images", type=str, nargs="+", required=True, help="image files, or folders of them (not recursive)"
    )
    parser.add_argument(
        "--prompts", type=str, nargs="*", default=[], help="free-text referring expressions, one mask each"
    )
    parser.add_argument("--classes", type=str, default=None, help="comma-separated thing class names")
    parser.add_argument("--stuff", type=str, default=None, help="comma-separated stuff class names")
    parser.add_argument(
        "--points",
        type=str,
        nargs="*",
        default=[],
        help="clicks x,y[,label] in image pixels (label 1 on the object, 0 off it): one object together",
    )
    parser.add_argument(
        "--boxes", type=str, nargs="*", default=[], help="boxes x0,y0,x1,y1 in image pixels, one object each"
    )
    parser.add_argument(
        "--scribbles",
        type=str,
        nargs="*",
        default=[],
        help="scribble image files at the images' size (non-zero on the scribble), one object each",
    )
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--mode",
        type=str,
        choices=["panoptic", "instance"],
        default="panoptic",
        help="what class names give: non-overlapping segments or instance detections",
    )
    parser.add_argument("--min_score", type=float, default=0.5, help="instance mode: lowest detection score")
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="longest side of the resize (default: the checkpoint's training config, else 1024)",
    )
    parser.add_argument(
        "--device", type=str, default=None, help="cpu, cuda, cuda:1... (default: cuda if any)"
    )
    return parser


def expand_folders(images: Sequence[str]) -> list[str]:
    """``--images`` with each folder replaced by its image files (as a ``data.predict`` entry's).

    Raises:
        PredictError: a folder that holds no image file.

    """
    from findlit.data.predict_config import IMAGE_SUFFIXES, folder_images
    from findlit.inference.predictor import PredictError

    files: list[str] = []
    for image in images:
        if not Path(image).is_dir():
            files.append(image)  # a file, or missing: check_files names it
            continue
        found = folder_images(Path(image))
        if not found:
            raise PredictError(f"--images: folder {image} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
        files.extend(str(path) for path in found)
    return files


def main(argv: Sequence[str]) -> int:
    """Run ``findlit predict`` on images (``argv`` without the subcommand); returns the exit code.

    Its errors (a bad request, a missing image or checkpoint, earlier outputs, a checkpoint of other
    encoders) are :class:`~findlit.errors.FindlitError` s, reported by the dispatcher.
    """
    from findlit.data.predict_config import request_problem
    from findlit.inference.predictor import PredictError, Predictor, check_files, scribble_mask
    from findlit.training.checkpoint_io import require_checkpoint_file

    args = parser().parse_args(list(argv))
    classes, stuff = _names(args.classes), _names(args.stuff)
    points = _numbers(args.points, "--points", "x,y or x,y,label", (2, 3))
    boxes = _numbers(args.boxes, "--boxes", "x0,y0,x1,y1", (4,))
    scribbles = [scribble_mask(path, index, "--scribbles") for index, path in enumerate(args.scribbles)]
    # the request and the files first: a bad one should not wait for the checkpoint to load
    problem = request_problem(args.prompts, classes, stuff, "panoptic", points, boxes, scribbles)
    if problem is not None:
        raise PredictError(f"--{problem[0]}: {problem[1]}")
    if args.image_size is not None and args.image_size < 1:
        raise PredictError(f"--image_size: must be a positive number of pixels, got {args.image_size}")
    if not 0.0 <= args.min_score <= 1.0:
        raise PredictError(f"--min_score: must be between 0 and 1, got {args.min_score}")
    images = expand_folders(args.images)
    check_files(images, args.out, args.overwrite)
    require_checkpoint_file(args.ckpt_path)
    predictor = Predictor.from_checkpoint(
        args.ckpt_path,
        image_size=args.image_size,
        device=args.device,
        mode=args.mode,
        min_score=args.min_score,
    )
    written = predictor.write(
        images,
        args.out,
        args.prompts,
        classes,
        stuff,
        args.overwrite,
        points=points,
        boxes=boxes,
        scribbles=scribbles,
    )
    for overlay, document in written:
        print(f"{overlay}\n{document}")
    return 0
