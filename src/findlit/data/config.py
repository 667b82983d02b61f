"""Typed configuration of one dataset, and the table of formats and tasks it may name.

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
from findlit.errors import ConfigError

TaskName = Literal["segmentation", "retrieval", "grounding", "interleave"]
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
        task: what the dataset trains or evaluates.
        format: the annotation format to read (must suit the task).
        paths: where its files are.
        ratio: relative sampling frequency among the training datasets.
        batch_size: images per batch and per process.
        transforms: augmentation (training) and resizing (evaluation).
        features: folder of this dataset's vision feature cache (relative to ``root``), filled by
            ``findlit cache``; samples then carry the cached features instead of the image, and
            training augmentation is only the flip (``transforms.lsj`` must be false).

    """

    name: str
    task: TaskName
    format: FormatName
    paths: DatasetPaths = field(default_factory=DatasetPaths)
    ratio: float = 1.0
    batch_size: int = 2
    transforms: TransformConfig = field(default_factory=TransformConfig)
    features: str | None = None


@dataclass(frozen=True)
class _Format:
    reader: Callable[..., Dataset]
    paths: tuple[str, ...]
    """The :class:`DatasetPaths` fields the reader takes, in its argument order."""
    extra: Mapping[str, Any] = field(default_factory=dict)


FORMATS: dict[str, _Format] = {
    "coco_panoptic": _Format(read_coco_panoptic, ("panoptic_json", "panoptic_root", "image_root")),
    "coco_instances": _Format(read_coco_instances, ("instances_json", "image_root")),
    "coco_captions": _Format(read_coco_captions, ("captions_json", "image_root")),
    "karpathy": _Format(read_karpathy, ("karpathy_json", "image_root", "split")),
    "refcoco": _Format(read_refcoco, ("refs", "instances_json", "image_root", "split")),
    "refcoco_absent": _Format(
        read_refcoco, ("refs", "instances_json", "image_root", "split"), {"absent": True}
    ),
    "find_entity": _Format(read_find_entity, ("entity_json", "panoptic_json", "panoptic_root", "image_root")),
}

TASK_DATASETS: dict[tuple[str, str], type[datasets.TaskDataset]] = {
    ("segmentation", "coco_panoptic"): datasets.PanopticSegmentationDataset,
    ("segmentation", "coco_instances"): datasets.InstanceSegmentationDataset,
    ("retrieval", "coco_captions"): datasets.RetrievalDataset,
    ("retrieval", "karpathy"): datasets.RetrievalDataset,
    ("grounding", "refcoco"): datasets.GroundingDataset,
    ("grounding", "refcoco_absent"): datasets.GroundingDataset,
    ("interleave", "find_entity"): datasets.InterleaveDataset,
}


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
    if (config.task, config.format) not in TASK_DATASETS:
        suitable = sorted(f for t, f in TASK_DATASETS if t == config.task)
        raise ConfigError(
            f"{key}.format: {config.format!r} cannot feed task {config.task!r}; use one of {suitable}"
        )
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
    return fmt.reader(*arguments, bad_records=bad_records, keys=keys, **fmt.extra)


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
    """Read a dataset's records and wrap them in the task's dataset with the stage's transforms.

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
    dataset_type = TASK_DATASETS[(config.task, config.format)]
    transforms = build_transforms(config.transforms, train=train)
    features = None
    if config.features is not None:
        features = feature_cache(config, key, data, root, size_divisibility).open()
        transforms = build_feature_transforms(config.transforms, train=train)
    return dataset_type(
        config.name,
        data,
        transforms,
        train=train,
        on_bad_record=on_bad_record,
        key=key,
        features=features,
    )


def _resolve(path: str, root: str | Path | None) -> Path:
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() or root is None else Path(root).expanduser() / resolved
