"""What to predict on which images: the ``data.predict`` entries and the request they carry.

A :class:`PredictConfig` names a set of image files (files and folders, relative to ``data.root``)
and what to predict on each of them: masks for free-text prompts (grounding) and for class names
(panoptic or instance segmentation). It is part of the YAML schema (jsonargparse reads it from the
DataModule's signature), so a misspelt key is rejected by the parser with its name; what the
parser cannot see (a missing file, an empty request, colliding outputs) is checked here, with
messages that name the key, e.g. ``data.predict[0].prompts: ...``.

The checks of a request (:func:`request_problem`) are shared with
:class:`~findlit.inference.predictor.Predictor`, which serves the same requests from Python.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from findlit.data.decode import read_rgb
from findlit.errors import ConfigError

SegmentationMode = Literal["panoptic", "instance"]

DEFAULT_IMAGE_SIZE = 1024
"""Longest side of the prediction resize when nothing else gives one (the default of
:class:`~findlit.data.transforms.TransformConfig`)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""File name endings (any case) that a folder's images have; other files in it are ignored."""


@dataclass
class PredictRequest:
    """What to predict on every image of a batch.

    Args:
        prompts: free-text referring expressions; each gives one mask per image (grounding task).
        classes: thing class names (segmentation task).
        stuff: stuff class names, after ``classes`` in the vocabulary (panoptic mode).
        mode: what class names give: ``panoptic`` (non-overlapping segments) or ``instance``
            (overlapping detections of the thing classes).
        min_score: instance mode: detections below this score are dropped.
        points: clicks ``[x, y]`` or ``[x, y, label]`` (label 1 on the object, 0 off it; default 1)
            in the image's pixels on disk: together they prompt one object (interactive task), as
            SAM's ``point_coords`` do.
        boxes: ``[x0, y0, x1, y1]`` in the image's pixels; each prompts one object by itself.
        scribbles: bool[H,W] masks at the image's size on disk (a scribble, a rough outline, a
            painted region); each prompts one object by itself, as SAM's ``mask_input`` does
            (:func:`read_scribble` reads them from image files).

    """

    prompts: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    stuff: list[str] = field(default_factory=list)
    mode: SegmentationMode = "panoptic"
    min_score: float = 0.5
    points: list[list[float]] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    scribbles: list[np.ndarray] = field(default_factory=list)


def request_problem(
    prompts: Sequence[str],
    classes: Sequence[str] = (),
    stuff: Sequence[str] = (),
    mode: str = "panoptic",
    points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
    scribbles: Sequence[np.ndarray | str] = (),
) -> tuple[str, str] | None:
    """What is wrong with a request, as (field, message), or None when it can run.

    ``scribbles`` may be file names not read yet (a ``data.predict`` entry's): they count as given.

    Refused: one string where a list is expected, nothing to predict, a blank prompt or class name,
    a class name given twice, an unknown mode, instance mode without thing classes, a click that is
    not ``[x, y]`` or ``[x, y, 0 or 1]``, negative clicks without a positive one, a box that is
    not ``[x0, y0, x1, y1]`` with x1 > x0 and y1 > y0, and a scribble that is not a 2-D mask or is
    empty. (A click, box or scribble that does not fit an image is refused when that image's size
    is known.)
    """
    for name, texts in (("prompts", prompts), ("classes", classes), ("stuff", stuff)):
        if isinstance(texts, str):
            return name, "prompts, classes and stuff must be lists of strings, not one string"
    if not prompts and not classes and not stuff and not points and not boxes and not len(scribbles):
        return (
            "prompts",
            "nothing to predict: the prompt list is empty and no class names, clicks, boxes or "
            "scribbles are given",
        )
    problem = visual_prompt_problem(points, boxes, scribbles)
    if problem is not None:
        return problem
    kinds = (("prompts", "prompt", prompts), ("classes", "class name", classes))
    for name, kind, texts in (*kinds, ("stuff", "stuff class name", stuff)):
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                return name, f"{kind} {index} is empty: {text!r}"
    names = [*classes, *stuff]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return "classes", f"class names given more than once: {repeated}"
    if mode not in ("panoptic", "instance"):
        return "mode", f"mode must be 'panoptic' or 'instance', got {mode!r}"
    if mode == "instance" and stuff and not classes:
        return "classes", "instance mode needs thing class names: only stuff names are given"
    return None


def _numbers(value: object) -> list[float] | None:
    if isinstance(value, str) or not isinstance(value, Sequence):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


def visual_prompt_problem(
    points: Sequence[Sequence[float]],
    boxes: Sequence[Sequence[float]],
    scribbles: Sequence[np.ndarray | str] = (),
) -> tuple[str, str] | None:
    """What is wrong with the clicks, boxes and scribbles of a request, as (field, message), or None.

    A scribble given as a file name (not read yet) is not looked at.
    """
    for index, scribble in enumerate(scribbles):
        if isinstance(scribble, str):
            continue
        if not isinstance(scribble, np.ndarray) or scribble.ndim != 2:
            shape = list(scribble.shape) if isinstance(scribble, np.ndarray) else type(scribble).__name__
            return "scribbles", f"scribble {index} must be a mask [H, W] at the image's size, got {shape}"
        if not scribble.any():
            return "scribbles", f"scribble {index} is empty: it marks no pixel"
    for index, point in enumerate(points):
        values = _numbers(point)
        if values is None or len(values) not in (2, 3) or (len(values) == 3 and values[2] not in (0, 1)):
            return "points", f"click {index} must be [x, y] or [x, y, label] with label 0 or 1, got {point!r}"
        if min(values[:2]) < 0:
            return "points", f"click {index} at {values[:2]} is outside the image (negative coordinate)"
    if points and all(len(p) == 3 and float(p[2]) == 0 for p in points):
        return "points", "negative clicks without a positive one: click the object at least once (label 1)"
    for index, box in enumerate(boxes):
        values = _numbers(box)
        if values is None or len(values) != 4:
            return "boxes", f"box {index} must be [x0, y0, x1, y1], got {box!r}"
        x0, y0, x1, y1 = values
        if x1 <= x0 or y1 <= y0:
            return "boxes", f"box {index} {values} needs x1 > x0 and y1 > y0"
        if min(values) < 0:
            return "boxes", f"box {index} {values} is outside the image (negative coordinate)"
    return None


@dataclass
class PredictConfig:
    """One set of images to predict on (an entry of ``data.predict``).

    ``findlit predict --config ...`` writes, for each image, ``<stem>.png`` (overlay) and
    ``<stem>.json`` (COCO RLE masks) in ``predictions/<name>/`` of the run's folder.

    Args:
        name: unique name; the folder of this entry's outputs.
        images: image files and folders (every image file directly inside, by name), relative to
            ``root``. No two images may share a file stem: their outputs would collide.
        prompts: free-text referring expressions (grounding); each gives one mask per image.
        classes: thing class names (segmentation: panoptic segments or instance detections).
        stuff: stuff class names (panoptic mode), after ``classes`` in the vocabulary.
        mode: what class names give: ``panoptic`` (non-overlapping segments) or ``instance``
            (overlapping detections of the thing classes).
        min_score: instance mode: detections below this score are dropped.
        image_size: longest side of the resize (its cap when ``eval_shortest_edge`` is set); None:
            the evaluation resize of the first ``test``, then ``val``, then ``train`` dataset of the
            same ``data`` section (with its ``eval_shortest_edge``), else 1024.
        eval_shortest_edge: resize the shortest side to this instead (longest capped at image_size).
        points: clicks on one object ``[x, y]`` or ``[x, y, label]`` (interactive task).
        boxes: ``[x0, y0, x1, y1]``, one object each (interactive task).
        scribbles: image files of scribbles, relative to ``root``, one object each (interactive
            task): a pixel is on the scribble where any channel is non-zero (:func:`read_scribble`);
            each at the size of the images.
        batch_size: images per batch and per process.
        pad_to_square: pad every image to ``image_size`` x ``image_size`` (as large-scale jitter's
            training crops are), so that its masks do not depend on the other images of its batch
            or on the number of processes; false pads only to the batch's largest image.
        root: folder that relative ``images`` are taken from (default: ``data.root``); a relative
            ``root`` is taken from the working directory, as ``data.root`` is.

    """

    name: str
    images: list[str]
    prompts: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    stuff: list[str] = field(default_factory=list)
    mode: SegmentationMode = "panoptic"
    min_score: float = 0.5
    image_size: int | None = None
    eval_shortest_edge: int | None = None
    batch_size: int = 2
    pad_to_square: bool = True
    root: str | None = None
    points: list[list[float]] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    scribbles: list[str] = field(default_factory=list)

    def request(self, key: str | None = None, root: str | Path | None = None) -> PredictRequest:
        """The request this entry makes of every one of its images (its scribble files read).

        Args:
            key: the entry's config key (errors name ``<key>.scribbles``).
            root: ``data.root``; the entry's own ``root`` wins when set (as for ``images``).

        Raises:
            DataError: a scribble file that is missing or not an image, naming it and the key.

        """
        base = self.root if self.root is not None else root
        field_key = f"{key}.scribbles" if key is not None else None
        return PredictRequest(
            list(self.prompts),
            list(self.classes),
            list(self.stuff),
            self.mode,
            self.min_score,
            [list(point) for point in self.points],
            [list(box) for box in self.boxes],
            [read_scribble(_under(path, base), field_key) for path in self.scribbles],
        )


def _under(entry: str | Path, base: str | Path | None) -> Path:
    """``entry`` (``~`` expanded) under ``base`` unless it is absolute or there is no base."""
    path = Path(entry).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base).expanduser() / path
    return path


def read_scribble(path: str | Path, key: str | None = None) -> np.ndarray:
    """bool[H,W] of a scribble image file: True where any channel is non-zero.

    Drawn as white (or any colour) on black, at the size of the image it prompts; turned upright by
    its EXIF orientation, as the photos are. Errors name the file (and ``key``).
    """
    return np.asarray(read_rgb(path, "scribble", key, upright=True).any(axis=2))


def check_predict_config(config: PredictConfig, key: str) -> None:
    """Refuse, naming ``<key>.<field>``, what needs no file to be found wrong."""
    name = config.name
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"{key}.name: must be a plain folder name (no '/'), got {name!r}")
    if isinstance(config.scribbles, str):
        raise ConfigError(f"{key}.scribbles: must be a list of image files, not one string")
    problem = request_problem(
        config.prompts,
        config.classes,
        config.stuff,
        config.mode,
        config.points,
        config.boxes,
        [str(path) for path in config.scribbles],
    )
    if problem is not None:
        raise ConfigError(f"{key}.{problem[0]}: {problem[1]}")
    if isinstance(config.images, str):
        raise ConfigError(f"{key}.images: must be a list of files and folders, not one string")
    if not config.images:
        raise ConfigError(f"{key}.images: no image file or folder given")
    if config.batch_size <= 0:
        raise ConfigError(f"{key}.batch_size must be positive, got {config.batch_size}")
    for option in ("image_size", "eval_shortest_edge"):
        value = getattr(config, option)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}.{option} must be > 0 or null, got {value}")
    if not 0.0 <= config.min_score <= 1.0:
        raise ConfigError(f"{key}.min_score must be in [0, 1], got {config.min_score}")


def image_files(config: PredictConfig, key: str, root: str | Path | None = None) -> list[Path]:
    """The image files of an entry, in the order given (a folder's by name), checked.

    Args:
        config: the entry.
        key: its config key, e.g. ``data.predict[0]``; messages name ``<key>.images[i]``.
        root: ``data.root``; the entry's own ``root`` wins when set.

    Raises:
        ConfigError: the first of :func:`find_images`' problems (a missing file or folder, a
            folder without images, two images of one stem).

    """
    files, problems = find_images(config, key, root)
    if problems:
        raise ConfigError(problems[0])
    return files


def folder_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` (by suffix, :data:`IMAGE_SUFFIXES`), sorted by name; not recursive."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_images(
    config: PredictConfig, key: str, root: str | Path | None = None
) -> tuple[list[Path], list[str]]:
    """The image files of an entry that exist, in the order given, and every problem of its ``images``.

    :func:`image_files` stops at the first problem; ``findlit data check`` lists them all.

    Args:
        config: the entry.
        key: its config key, e.g. ``data.predict[0]``; problems name ``<key>.images[i]``.
        root: ``data.root``; the entry's own ``root`` wins when set.

    Returns:
        (files, problems): a folder gives its image files by name; problems are a missing file or
        folder, a folder without images, and images that share a file stem (their outputs would
        collide).

    """
    base = config.root if config.root is not None else root
    files: list[Path] = []
    problems: list[str] = []
    for index, entry in enumerate(config.images):
        path = _under(entry, base)
        if path.is_dir():
            found = folder_images(path)
            if not found:
                problems.append(
                    f"{key}.images[{index}]: folder {path} holds no image file ({', '.join(IMAGE_SUFFIXES)})"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{key}.images[{index}]: no such file or folder: {path}")
    shared = shared_stems(files)
    if shared:
        listed = "; ".join(f"{stem}: {', '.join(map(str, paths))}" for stem, paths in sorted(shared.items()))
        problems.append(
            f"{key}.images: images share a file stem, so their outputs <stem>.png and <stem>.json would "
            f"collide ({listed})"
        )
    return files, problems


def shared_stems(files: Sequence[str | Path]) -> dict[str, list[Path]]:
    """File stem -> its files, for the stems of several files (outputs <stem>.png would collide)."""
    by_stem: dict[str, list[Path]] = {}
    for file in files:
        by_stem.setdefault(Path(file).stem, []).append(Path(file))
    return {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}


def evaluation_resize(stages: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(image_size, eval_shortest_edge) of the first ``test``, then ``val``, then ``train`` dataset.

    Args:
        stages: a ``data`` section (or the DataModule's configs): stage -> list of dataset
            configs, as mappings or :class:`~findlit.data.config.DatasetConfig` objects.

    Returns:
        The first dataset that sets ``transforms`` with an ``image_size`` wins; (None, None) when
        none does.

    """
    for stage in ("test", "val", "train"):
        for dataset in stages.get(stage) or []:
            transforms = _field(dataset, "transforms")
            if transforms is None:
                continue
            size = _field(transforms, "image_size")
            shortest = _field(transforms, "eval_shortest_edge")
            if size is not None:
                return int(size), None if shortest is None else int(shortest)
    return None, None


def _field(value: Any, name: str) -> Any:
    """``value[name]`` of a mapping or ``value.name`` of a dataclass (configs come as either)."""
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
