"""Typed configuration of one dataset, and the table of the formats it may name.

Each format has one reader and one dataset class. The task a dataset feeds is a plain name here:
which tasks exist, and which formats feed each, is the tasks' business (``findlit.tasks``), checked
by the model when it meets the DataModule.

These dataclasses are part of the YAML schema (jsonargparse reads them from the DataModule's
signature), so a misspelt key is rejected by the parser with its name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from findlit.data import datasets
from findlit.data.errors import BadRecordPolicy, BadRecords
from findlit.data.feature_cache import FeatureCache, Preprocessing
from findlit.data.formats import (
    read_coco_captions,
    read_coco_instances,
    read_coco_panoptic,
    read_find_entity,
    read_karpathy,
    read_refcoco,
)
from findlit.data.records import Dataset
from findlit.data.transforms import TransformConfig, build_feature_transforms, build_transforms
from findlit.errors import ConfigError, DataError

FormatName = Literal[
    "coco_panoptic", "coco_instances", "coco_captions", "karpathy", "refcoco", "refcoco_absent", "find_entity"
]


@dataclass
class DatasetPaths:
    """Where a dataset's files are. Which keys are needed depends on the format.

    Relative paths are taken from the DataModule's ``root``.

    Args:
        image_root: folder of the images (for ``karpathy``: the COCO root holding ``filepath`` folders).
        panoptic_json: COCO panoptic JSON (``coco_panoptic``, ``find_entity``).
        panoptic_root: folder of the panoptic PNGs (``coco_panoptic``, ``find_entity``).
        instances_json: COCO instances JSON (``coco_instances``, ``refcoco``).
        captions_json: COCO captions JSON (``coco_captions``).
        karpathy_json: Karpathy split file ``dataset_coco.json`` (``karpathy``).
        refs: RefCOCO ``refs(<split_by>).p`` pickle or the same records as JSON (``refcoco``).
        entity_json: FIND-Bench entity JSON (``find_entity``).
        split: splits to keep, for ``karpathy`` and ``refcoco`` (e.g. ``val``, ``[train, restval]``).

    """

    image_root: str | None = None
    panoptic_json: str | None = None
    panoptic_root: str | None = None
    instances_json: str | None = None
    captions_json: str | None = None
    karpathy_json: str | None = None
    refs: str | None = None
    entity_json: str | None = None
    split: str | list[str] | None = None


@dataclass
class DatasetConfig:
    """One dataset of a stage.

    Args:
        name: unique name; metrics are logged as ``<stage>/<name>/<metric>``.
        task: the name of the task the dataset trains or evaluates (a registered task of the model;
            its format must be one that feeds the task, checked when training or testing starts).
        format: the annotation format to read.
        paths: where its files are.
        ratio: relative sampling frequency among the training datasets.
        batch_size: images per batch and per process.
        transforms: augmentation (training) and resizing (evaluation).
        features: folder of this dataset's vision feature cache (relative to ``root``), filled by
            ``findlit cache``; samples then carry the cached features instead of the image, and
            training augmentation is only the flip (``transforms.lsj`` must be false).

    """

    name: str
    task: str
    format: FormatName
    paths: DatasetPaths = field(default_factory=DatasetPaths)
    ratio: float = 1.0
    batch_size: int = 2
    transforms: TransformConfig = field(default_factory=TransformConfig)
    features: str | None = None


@dataclass(frozen=True)
class Format:
    """How one annotation format is read and served.

    Args:
        reader: reads the files into a :class:`~findlit.data.records.Dataset`.
        paths: the :class:`DatasetPaths` fields the reader takes, in its argument order.
        dataset: the dataset class that turns its records into samples.
        extra: further keyword arguments of the reader.

    """

    reader: Callable[..., Dataset]
    paths: tuple[str, ...]
    dataset: type[datasets.TaskDataset]
    extra: Mapping[str, Any] = field(default_factory=dict)


_REFCOCO_PATHS = ("refs", "instances_json", "image_root", "split")
_ENTITY_PATHS = ("entity_json", "panoptic_json", "panoptic_root", "image_root")

FORMATS: dict[str, Format] = {
    "coco_panoptic": Format(
        read_coco_panoptic,
        ("panoptic_json", "panoptic_root", "image_root"),
        datasets.PanopticSegmentationDataset,
    ),
    "coco_instances": Format(
        read_coco_instances, ("instances_json", "image_root"), datasets.InstanceSegmentationDataset
    ),
    "coco_captions": Format(read_coco_captions, ("captions_json", "image_root"), datasets.RetrievalDataset),
    "karpathy": Format(read_karpathy, ("karpathy_json", "image_root", "split"), datasets.RetrievalDataset),
    "refcoco": Format(read_refcoco, _REFCOCO_PATHS, datasets.GroundingDataset),
    "refcoco_absent": Format(read_refcoco, _REFCOCO_PATHS, datasets.GroundingDataset, {"absent": True}),
    "find_entity": Format(read_find_entity, _ENTITY_PATHS, datasets.InterleaveDataset),
}
"""Format name (``data.*[i].format``) -> its reader and dataset class."""


def read_records(
    config: DatasetConfig, key: str, root: str | Path | None = None, bad_records: BadRecords | None = None
) -> Dataset:
    """Run the reader of ``config.format`` on its paths.

    Args:
        config: the dataset's config.
        key: its config key, e.g. ``data.train[0]``; messages name ``<key>.paths.<field>``.
        root: folder that relative paths are taken from (default: the working directory).
        bad_records: policy and collector for per-record problems.

    """
    if config.format not in FORMATS:
        raise ConfigError(f"{key}.format: unknown format {config.format!r}; known: {sorted(FORMATS)}")
    fmt = FORMATS[config.format]
    arguments: list[Any] = []
    for name in fmt.paths:
        value = getattr(config.paths, name)
        if name == "split":
            arguments.append(value)
            continue
        if value is None:
            raise ConfigError(f"{key}.paths.{name} is required for format {config.format!r}")
        arguments.append(_resolve(value, root))
    keys = {f.name: f"{key}.paths.{f.name}" for f in fields(DatasetPaths)}
    data: Dataset = fmt.reader(*arguments, bad_records=bad_records, keys=keys, **fmt.extra)
    if not data.records:
        which = f" of split {config.paths.split!r}" if config.paths.split is not None else ""
        problems = bad_records.problems if bad_records is not None else []
        why = f" (all {len(problems)} were bad records; the first: {problems[0]})" if problems else ""
        # an empty dataset is a wrong path or split: training or scoring nothing would hide it
        raise DataError(f"no usable records{which} in this file{why}", data.source, key=key)
    return data


def feature_cache(
    config: DatasetConfig,
    key: str,
    data: Dataset,
    root: str | Path | None = None,
    size_divisibility: int = 32,
) -> FeatureCache:
    """The feature cache that ``config.features`` names, for the records ``data`` (nothing is read yet)."""
    if config.features is None:
        raise ConfigError(f"{key}.features is not set")
    return FeatureCache(
        _resolve(config.features, root),
        [record.image for record in data.records],
        Preprocessing.from_transforms(config.transforms, size_divisibility),
        key=f"{key}.features",
    )


def build_dataset(
    config: DatasetConfig,
    key: str,
    *,
    train: bool,
    root: str | Path | None = None,
    on_bad_record: BadRecordPolicy = "error",
    size_divisibility: int = 32,
) -> datasets.TaskDataset:
    """Read a dataset's records and wrap them in its format's dataset with the stage's transforms.

    Per-record problems found while reading follow ``on_bad_record``; with ``"skip"`` one summary
    warning is emitted for this dataset. With ``features`` set, the feature cache is opened and
    checked against this config (a stale, incomplete or corrupt cache is an error here).
    """
    if config.batch_size <= 0:
        raise ConfigError(f"{key}.batch_size must be positive, got {config.batch_size}")
    if config.ratio < 0:
        raise ConfigError(f"{key}.ratio must be >= 0, got {config.ratio}")
    if config.features is not None and train and config.transforms.lsj:
        raise ConfigError(
            f"{key}.transforms.lsj: large-scale jitter cannot rescale or crop cached features "
            f"({key}.features is set); set lsj: false (training then only flips)"
        )
    bad_records = BadRecords(on_bad_record, dataset=config.name)
    data = read_records(config, key, root, bad_records)
    bad_records.warn_summary()
    dataset_type = FORMATS[config.format].dataset
    transforms = build_transforms(config.transforms, train=train)
    features = None
    if config.features is not None:
        features = feature_cache(config, key, data, root, size_divisibility).open()
        transforms = build_feature_transforms(config.transforms, train=train)
    return dataset_type(
        config.name,
        data,
        transforms,
        task=config.task,
        train=train,
        on_bad_record=on_bad_record,
        key=key,
        features=features,
    )


def _resolve(path: str, root: str | Path | None) -> Path:
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() or root is None else Path(root).expanduser() / resolved
