"""Map-style datasets, one per kind of annotation, that turn format records into :class:`Sample` dicts.

Each format of :data:`findlit.data.config.FORMATS` names its dataset class here. A dataset is told
the name of the task it feeds (its config's ``task``) and puts it in every sample; it does not know
what the task does.

A dataset is indexed either by an int (evaluation: no randomness) or by a
``(index, seed)`` pair from the training sampler: the seed drives every random choice for that
sample (augmentation, which caption or sentence is drawn), so a run and its resumed copy, or
runs on different numbers of processes, see the same samples. The seed is kept in the sample
(``seed``; the index in evaluation) for the random points of the losses.

Given a :class:`~findlit.data.feature_cache.FeatureReader`, a dataset reads each image's
cached vision features instead of decoding the image; targets are decoded as usual.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from findlit.data.decode import PanopticMasks, decode_instance, decode_panoptic, read_image
from findlit.data.errors import BadRecordPolicy, BadRecords
from findlit.data.feature_cache import FeatureReader
from findlit.data.records import (
    CaptionsRecord,
    Category,
    Dataset,
    EntityRecord,
    ImageInfo,
    InstanceAnnotation,
    InstancesRecord,
    PanopticRecord,
    RefsRecord,
    SegmentReference,
)
from findlit.data.sample import EntityPrompt, OriginalTargets, ReferenceImage, Sample
from findlit.errors import DataError

Transform = Callable[[Sample, torch.Generator], Sample]
SampleIndex = int | tuple[int, int]
"""An int (evaluation) or ``(index, seed)`` (training)."""

_MAX_SKIPS = 100
"""How many following records a skipped bad record may be replaced by before giving up."""


class TaskDataset(TorchDataset[Sample]):
    """Base of the datasets: decoding, transforms and the bad-record policy.

    Args:
        name: the dataset's name, put in every sample and every message.
        data: what a reader returned.
        transforms: applied to each decoded sample with the sample's generator (None: identity).
        task: the name of the task the dataset feeds, put in every sample (``batch["task"]``).
        train: training mode (random choices of captions and sentences).
        on_bad_record: ``"error"`` raises on a record that fails to decode; ``"skip"`` replaces it
            by the next good record and warns once.
        key: the config key that configured this dataset, for messages.
        features: read each image's cached features instead of the image (samples then have
            ``features``, ``image_size`` and ``padding_mask`` and no ``image``).

    """

    def __init__(
        self,
        name: str,
        data: Dataset,
        transforms: Transform | None = None,
        *,
        task: str,
        train: bool = False,
        on_bad_record: BadRecordPolicy = "error",
        key: str | None = None,
        features: FeatureReader | None = None,
    ):
        self.name = name
        self.task = task
        self.features = features
        self.records: tuple[Any, ...] = data.records
        self.categories: dict[int, Category] = dict(data.categories)
        self.transforms = transforms
        self.train = train
        self.key = key
        self.files = dict(data.files)
        self.bad_records = BadRecords(on_bad_record, dataset=name)
        self._warned = False
        # A contiguous vocabulary: labels index class_names.
        self.category_ids: list[int] = sorted(self.categories)
        self.class_names: list[str] = [self.categories[i].name for i in self.category_ids]
        self.thing_classes: list[bool] = [self.categories[i].isthing for i in self.category_ids]
        self.category_index: dict[int, int] = {c: k for k, c in enumerate(self.category_ids)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: SampleIndex) -> Sample:
        position, seed = (index, index) if isinstance(index, int) else index
        if not 0 <= position < len(self.records):
            raise IndexError(
                f"index {position} is out of range for dataset '{self.name}' of {len(self.records)}"
            )
        generator = torch.Generator().manual_seed(seed)
        for attempt in range(_MAX_SKIPS):
            record = self.records[(position + attempt) % len(self.records)]
            try:
                sample = self.decode(record, generator)
            except DataError as error:
                self.bad_records.report(error.with_key(self.key))
                self._warn_once()
                continue
            sample["task"] = self.task
            sample["dataset"] = self.name
            sample["seed"] = seed
            if not self.train and "masks" in sample:
                # evaluation scores at the size on disk (FIND, Mask2Former and the COCO tools do):
                # the decoded targets, before transforms resize them or drop what a resize emptied
                sample["original"] = original_targets(sample)
            return self.finish(self.transforms(sample, generator) if self.transforms is not None else sample)
        raise DataError(f"{_MAX_SKIPS} consecutive bad records in dataset '{self.name}'", None, key=self.key)

    def decode(self, record: Any, generator: torch.Generator) -> Sample:
        """Decode one record into a sample (image and task targets)."""
        raise NotImplementedError

    def finish(self, sample: Sample) -> Sample:
        """Adjust a transformed sample (default: unchanged)."""
        return sample

    def _warn_once(self) -> None:
        # Samples are decoded in worker processes that never see the end of the run, so the
        # warning comes once, at the first skip, and points at the command that lists them all.
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"dataset '{self.name}': skipping records that fail to decode; first: "
                f"{self.bad_records.problems[0]}. `findlit data check` lists them all.",
                stacklevel=3,
            )

    def path_key(self, name: str) -> str | None:
        """The config key of path ``name``, e.g. ``data.val[0].paths.image_root``."""
        return f"{self.key}.paths.{name}" if self.key is not None else None

    def _instance_mask(self, annotation: InstanceAnnotation, image: ImageInfo) -> Tensor:
        """bool[H,W] of one instance annotation; errors name the instances file and its key."""
        return decode_instance(
            annotation, image, self.path_key("instances_json"), self.files.get("instances_json")
        )

    def _panoptic(self, record: PanopticRecord) -> PanopticMasks:
        return decode_panoptic(record, self.path_key("panoptic_root"))

    def _base(self, record: Any) -> Sample:
        if self.features is not None:
            cached = self.features.read(self.features.position(record.image.id))
            return Sample(
                image_id=record.image.id,
                orig_size=cached.orig_size,
                features=cached.features,
                image_size=cached.image_size,
                padding_mask=cached.padding_mask(),
            )
        image = read_image(record.image, self.path_key("image_root"))
        return Sample(image_id=record.image.id, image=image, orig_size=(image.shape[1], image.shape[2]))


def original_targets(sample: Sample) -> OriginalTargets:
    """The decoded ``masks`` and those of ``labels``, ``ignore_mask``, ``iscrowd`` ``sample`` has."""
    original = OriginalTargets(masks=sample["masks"])
    fields: Mapping[str, Any] = sample  # a task plugin's samples may add "iscrowd"
    for key in ("labels", "ignore_mask", "iscrowd"):
        if key in fields:
            original[key] = fields[key]
    return original


class _SegmentationDataset(TaskDataset):
    """Segmentation targets: segments that a crop left without pixels are dropped."""

    def finish(self, sample: Sample) -> Sample:
        """Drop the masks that transforms emptied, with their labels (no other field indexes them)."""
        keep = sample["masks"].flatten(1).any(1)
        if not bool(keep.all()):
            sample["masks"], sample["labels"] = sample["masks"][keep], sample["labels"][keep]
            sample["is_thing"] = sample["is_thing"][keep]
        return sample


class PanopticSegmentationDataset(_SegmentationDataset):
    """Generic segmentation from COCO panoptic: one mask per non-crowd segment, crowd and void ignored."""

    panoptic: ClassVar[bool] = True
    """Segments partition the image (PQ is defined); the metrics read this flag."""

    def decode(self, record: PanopticRecord, generator: torch.Generator) -> Sample:
        """Image, masks bool[N,H,W], labels int64[N], is_thing bool[N], ignore_mask bool[H,W]."""
        sample = self._base(record)
        panoptic = self._panoptic(record)
        labels = [self.category_index[c] for c in panoptic.category_ids.tolist()]
        sample["masks"] = panoptic.masks
        sample["labels"] = torch.tensor(labels, dtype=torch.int64)
        sample["is_thing"] = torch.tensor([self.thing_classes[k] for k in labels], dtype=torch.bool)
        sample["ignore_mask"] = panoptic.ignore
        return sample


class InstanceSegmentationDataset(_SegmentationDataset):
    """Instance segmentation from COCO instances; crowd annotations become ignore regions."""

    panoptic: ClassVar[bool] = False
    """Masks may overlap and need not cover the image: no PQ, only mask AP and mIoU."""

    def decode(self, record: InstancesRecord, generator: torch.Generator) -> Sample:
        """Image, masks bool[N,H,W], labels int64[N], is_thing bool[N], ignore_mask bool[H,W]."""
        sample = self._base(record)
        height, width = sample["orig_size"]
        kept = [ann for ann in record.annotations if not ann.iscrowd]
        masks = [self._instance_mask(ann, record.image) for ann in kept]
        ignore = torch.zeros(height, width, dtype=torch.bool)
        for ann in record.annotations:
            if ann.iscrowd:
                ignore |= self._instance_mask(ann, record.image)
        labels = [self.category_index[ann.category_id] for ann in kept]
        sample["masks"] = torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.bool)
        sample["labels"] = torch.tensor(labels, dtype=torch.int64)
        sample["is_thing"] = torch.tensor([self.thing_classes[k] for k in labels], dtype=torch.bool)
        sample["ignore_mask"] = ignore
        return sample


class RetrievalDataset(TaskDataset):
    """Image-text retrieval: every caption of the image, in a random order in training.

    The retrieval task trains on the first ``train_captions`` of them (FIND: one, a random draw);
    evaluation keeps them all in the file's order.
    """

    def decode(self, record: CaptionsRecord, generator: torch.Generator) -> Sample:
        """Image and ``captions`` (all, shuffled in training)."""
        if not record.captions:
            raise DataError("image has no captions", record.image.path, f"image_id={record.image.id}")
        sample = self._base(record)
        if self.train:
            order = torch.randperm(len(record.captions), generator=generator).tolist()
            sample["captions"] = [record.captions[i] for i in order]
        else:
            sample["captions"] = list(record.captions)
        return sample


class GroundingDataset(TaskDataset):
    """Referring segmentation: one mask per ref; training draws one sentence per ref, evaluation all."""

    def decode(self, record: RefsRecord, generator: torch.Generator) -> Sample:
        """Image, masks bool[R,H,W] (one per ref), ``sentences`` and sentence_targets int64[S]."""
        sample = self._base(record)
        height, width = sample["orig_size"]
        masks, sentences, targets = [], [], []
        for ref in record.refs:
            if ref.annotation is None:
                masks.append(torch.zeros(height, width, dtype=torch.bool))
            else:
                masks.append(self._instance_mask(ref.annotation, record.image))
            chosen = (
                [ref.sentences[_choice(len(ref.sentences), generator)]] if self.train else list(ref.sentences)
            )
            sentences.extend(chosen)
            targets.extend([len(masks) - 1] * len(chosen))
        sample["masks"] = torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.bool)
        sample["sentences"] = sentences
        sample["sentence_targets"] = torch.tensor(targets, dtype=torch.int64)
        sample["labels"] = torch.tensor(
            [self.category_index[r.category_id] for r in record.refs], dtype=torch.int64
        )
        return sample


class InterleaveDataset(TaskDataset):
    """FIND-Bench entities: masks of the segments that phrases name, and the entity sentences."""

    def decode(self, record: EntityRecord, generator: torch.Generator) -> Sample:
        """Image, masks bool[M,H,W] (segments named by phrases), labels int64[M], ``entities``."""
        sample = self._base(record)
        panoptic = self._panoptic(record.panoptic)
        position = {segment_id: k for k, segment_id in enumerate(panoptic.segment_ids.tolist())}
        crowd = {segment.id for segment in record.panoptic.segments if segment.iscrowd}
        named: list[int] = []
        entities: list[EntityPrompt] = []
        for sentence in record.sentences:
            spans, targets, references = [], [], []
            for phrase in sentence.phrases:
                if phrase.segment_id in crowd:
                    continue  # a crowd region has no single-object mask to ground
                if phrase.segment_id not in named:
                    named.append(phrase.segment_id)
                spans.append((phrase.start, phrase.end))
                targets.append(named.index(phrase.segment_id))
                ref = phrase.reference
                references.append((ref.image_id, ref.segment_id) if ref is not None else None)
            entities.append(
                EntityPrompt(sentence=sentence.sentence, spans=spans, targets=targets, references=references)
            )
        rows = [position[segment_id] for segment_id in named]
        sample["masks"] = panoptic.masks[rows]
        sample["labels"] = torch.tensor(
            [self.category_index[c] for c in panoptic.category_ids[rows].tolist()], dtype=torch.int64
        )
        sample["entities"] = entities
        if not self.train and self.features is None:
            sample["reference_images"] = [
                self._reference_image(phrase.reference) if phrase.reference is not None else None
                for sentence in record.sentences
                for phrase in sentence.phrases
                if phrase.segment_id not in crowd
            ]
        return sample

    def _reference_image(self, reference: SegmentReference) -> ReferenceImage | None:
        """The referenced image and segment, resized as this dataset's images (evaluation only).

        Interleave retrieval draws a visual entity's stroke on its reference, a segment of another
        image (FIND's ``evaluate_retrieval_interleave``); None when the reader did not join its record,
        the segment is a crowd region or the referenced image does not decode (with a warning).
        """
        if reference.record is None:
            return None
        try:
            image = read_image(reference.record.image, self.path_key("image_root"))
            panoptic = self._panoptic(reference.record)
        except DataError as error:
            # the referring record itself is fine: its phrase goes without its reference (its
            # visual retrieval reads it as text), and the referenced image's own record, when it is
            # one of this dataset's, is reported when it is decoded
            warnings.warn(
                f"dataset '{self.name}': a reference skipped, its image does not decode: "
                f"{error.with_key(self.key)}",
                stacklevel=2,
            )
            return None
        segments = panoptic.segment_ids.tolist()
        if reference.segment_id not in segments:  # a crowd region: no single-object mask
            return None
        row = segments.index(reference.segment_id)
        resized: Sample = {"image": image, "masks": panoptic.masks[row : row + 1]}
        if self.transforms is not None:
            resized = self.transforms(resized, torch.Generator().manual_seed(0))
        return ReferenceImage(image=resized["image"], mask=resized["masks"][0])


def _choice(count: int, generator: torch.Generator) -> int:
    return int(torch.randint(count, (1,), generator=generator))
