"""Plain per-image records returned by the format readers.

Records hold paths and annotation metadata, never decoded pixels: decoding happens in the
datasets (or in ``findlit data check``), so reading an annotation file of 120k images is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Category:
    """One category of a dataset's open vocabulary."""

    id: int
    name: str
    isthing: bool = True
    supercategory: str = ""


@dataclass(frozen=True)
class ImageInfo:
    """One image: its id, path and size in pixels (None where the format does not say, e.g. Karpathy)."""

    id: int
    path: Path
    height: int | None
    width: int | None


@dataclass(frozen=True)
class PanopticSegment:
    """One segment of a COCO panoptic annotation (``segments_info`` entry).

    ``id`` is the colour-coded id in the PNG: R + 256·G + 256²·B.
    """

    id: int
    category_id: int
    iscrowd: bool
    bbox: tuple[float, float, float, float]
    area: int


@dataclass(frozen=True)
class PanopticRecord:
    """An image with its panoptic PNG and segments. Crowd segments are kept (as ignore regions)."""

    image: ImageInfo
    png_path: Path
    segments: tuple[PanopticSegment, ...]


@dataclass(frozen=True)
class InstanceAnnotation:
    """One COCO instances annotation; ``segmentation`` is kept raw (polygons or RLE) for pycocotools."""

    id: int
    category_id: int
    iscrowd: bool
    bbox: tuple[float, float, float, float]
    area: float
    segmentation: Any


@dataclass(frozen=True)
class InstancesRecord:
    """An image with its instance annotations."""

    image: ImageInfo
    annotations: tuple[InstanceAnnotation, ...]


@dataclass(frozen=True)
class CaptionsRecord:
    """An image with its captions (COCO captions or a Karpathy split)."""

    image: ImageInfo
    captions: tuple[str, ...]
    split: str | None = None


@dataclass(frozen=True)
class Ref:
    """One RefCOCO referring record joined with its instances annotation.

    ``annotation`` is None only for refs read as "absent" (objects that are not in the image,
    used for rejection tests).
    """

    ref_id: int
    ann_id: int
    category_id: int
    split: str
    sentences: tuple[str, ...]
    annotation: InstanceAnnotation | None


@dataclass(frozen=True)
class RefsRecord:
    """An image with all its refs of the requested split."""

    image: ImageInfo
    refs: tuple[Ref, ...]


@dataclass(frozen=True)
class SegmentReference:
    """A segment in another image that shows the same thing as a phrase (interleave retrieval).

    ``record``: the other image's panoptic record (the reader joins it), from which evaluation draws
    the phrase's visual prompt; None when it is not known.
    """

    image_id: int
    segment_id: int
    prob: float = 1.0
    record: PanopticRecord | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Phrase:
    """A phrase of an entity sentence: ``sentence[start:end] == text``; ``segment_id`` is a panoptic id."""

    text: str
    start: int
    end: int
    segment_id: int
    category_id: int
    reference: SegmentReference | None = None


@dataclass(frozen=True)
class EntitySentence:
    """One FIND-Bench entity annotation: a sentence whose phrases point at segments."""

    id: int
    sentence: str
    phrases: tuple[Phrase, ...]


@dataclass(frozen=True)
class EntityRecord:
    """An image with its panoptic segments and the entity sentences that refer to them."""

    panoptic: PanopticRecord
    sentences: tuple[EntitySentence, ...]

    @property
    def image(self) -> ImageInfo:
        """The image this record describes."""
        return self.panoptic.image


@dataclass(frozen=True)
class Dataset:
    """What a reader returns: the records plus the vocabulary they use.

    ``categories`` maps category id to :class:`Category`; it is empty for formats without one
    (captions). ``source`` is the main annotation file; ``files`` maps each path argument of the
    reader (``instances_json``, ``panoptic_root``...) to the resolved path, for messages.
    """

    records: tuple[Any, ...]
    categories: dict[int, Category] = field(default_factory=dict)
    source: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
