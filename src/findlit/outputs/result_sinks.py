"""Standard-format writers of one test dataset's predictions, fed batch by batch (no Lightning).

A task chooses its sink (:meth:`Task.results_sink <findlit.tasks.base.Task.results_sink>`);
:class:`~findlit.outputs.test_results.TestResultsWriter` feeds it the predictions of
``FINDModule.test_step`` and, under DDP, gathers every rank's :meth:`ResultsSink.payload` for rank 0
to write:

- :class:`SegmentationSink`: COCO panoptic PNGs + JSON (panopticapi's ``pq_compute``) and COCO
  instance results with RLE masks (``COCO.loadRes``);
- :class:`GroundingSink`: referring segmentation results, one entry per sentence, with ref ids;
- :class:`RetrievalSink`: ranked galleries of every query, and the captions behind their ids.

Masks are resized from the transformed image size to the size on disk with nearest-neighbour
sampling of the binary masks (and of the panoptic id map); the evaluation transform only resizes
(no crop), so this maps every pixel back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from findlit.nearest_resize import resize_nearest
from findlit.outputs.coco_writers import (
    GroundingResultsWriter,
    InstanceResultsWriter,
    PanopticWriter,
    RetrievalResultsWriter,
    write_json_atomic,
)


@dataclass(frozen=True)
class ResultsOptions:
    """Options of the sinks, from :class:`~findlit.outputs.test_results.TestResultsWriter`.

    Args:
        retrieval_top_k: length of each ranked retrieval gallery (None: the whole gallery).
        overwrite: let the writers replace files (only under DDP, after rank 0 checked the folder).

    """

    retrieval_top_k: int | None = 10
    overwrite: bool = False


INSTANCES_NAME = "instances_results.json"
GROUNDING_NAME = "grounding_results.json"
RETRIEVAL_NAME = "retrieval_results.json"
CAPTIONS_NAME = "retrieval_captions.json"


def category_ids_of(vocabulary: Any) -> list[int]:
    """Class index -> dataset category id of a :class:`~findlit.tasks.base.Vocabulary`.

    A vocabulary without category ids (a dataset without categories) maps each index to itself.
    """
    ids = list(getattr(vocabulary, "category_ids", []) or [])
    return ids or list(range(len(getattr(vocabulary, "class_names", []))))


def _records_by_image(dataset: Any) -> dict[int, Any]:
    return {int(record.image.id): record for record in getattr(dataset, "records", ())}


class ResultsSink:
    """Predictions of one test dataset in a standard format: fed per batch, written once by rank 0.

    ``payload`` is what this rank contributes (picklable, on the CPU); ``finish`` gets every rank's
    payload, in rank order, and writes the files.
    """

    def add(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        """Take one batch's predictions (one dict per image, at the transformed size)."""
        raise NotImplementedError

    def payload(self) -> Any:
        """What this rank contributes to the files."""
        raise NotImplementedError

    def finish(self, payloads: Sequence[Any]) -> list[Path]:
        """Write the files from every rank's payload, in rank order; the paths written."""
        raise NotImplementedError


class SegmentationSink(ResultsSink):
    """COCO panoptic PNGs + JSON and COCO instance results of a segmentation dataset.

    Args:
        folder: the dataset's prediction folder.
        dataset: the test dataset (``categories`` and ``records`` give names and file names).
        category_ids: class index -> category id (the model's vocabulary of this dataset).
        overwrite: passed to the writers (only under DDP, after rank 0 checked the folder).

    """

    def __init__(self, folder: Path, dataset: Any, category_ids: Sequence[int], *, overwrite: bool = False):
        self.category_ids = list(category_ids)
        self.file_names = {i: r.image.path.name for i, r in _records_by_image(dataset).items()}
        self.panoptic = PanopticWriter(folder, dataset.categories, overwrite=overwrite)
        self.instances = InstanceResultsWriter(folder / INSTANCES_NAME, overwrite=overwrite)
        self.kinds: set[str] = set()

    def add(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        """Write each image's panoptic PNG and keep its instance results, at the size on disk."""
        for b, prediction in enumerate(predictions):
            image_id = int(batch["image_ids"][b])
            size = batch["orig_sizes"][b]
            if "panoptic" in prediction:
                self.kinds.add("panoptic")
                segment_ids, segments = prediction["panoptic"]
                self.panoptic.add(
                    image_id,
                    self.file_names.get(image_id, f"{image_id:012d}.jpg"),
                    resize_nearest(segment_ids, size).cpu(),
                    [
                        {
                            "id": int(s["id"]),
                            "category_id": self.category_ids[int(s["category"])],
                            "score": float(s["score"]),
                        }
                        for s in segments
                    ],
                )
            if "instance" in prediction:
                self.kinds.add("instance")
                instance = prediction["instance"]
                labels = instance["labels"].tolist()
                self.instances.add(
                    image_id,
                    resize_nearest(instance["masks"], size).cpu(),
                    [self.category_ids[int(label)] for label in labels],
                    instance["scores"].float().cpu(),
                )

    def payload(self) -> Any:
        """(kinds, panoptic annotations, panoptic images, instance entries) of this rank."""
        return self.kinds, self.panoptic.annotations, self.panoptic.images, self.instances.entries

    def finish(self, payloads: Sequence[Any]) -> list[Path]:
        """Write the JSONs of the kinds any rank predicted; entries sorted by image id."""
        kinds = set().union(*(p[0] for p in payloads))
        written = []
        if "panoptic" in kinds:
            self.panoptic.annotations = _by_image([a for p in payloads for a in p[1]], "image_id")
            self.panoptic.images = _by_image([i for p in payloads for i in p[2]], "id")
            written.append(self.panoptic.close())
        if "instance" in kinds:
            self.instances.entries = _by_image([e for p in payloads for e in p[3]], "image_id")
            written.append(self.instances.close())
        return written


class GroundingSink(ResultsSink):
    """Referring segmentation results of a grounding dataset, one entry per sentence.

    Each sentence's ``ref_id`` comes from the dataset's record of the image (the sample's
    ``sentence_targets`` index its refs, in record order); ``sentence_id`` is the sentence's
    position within its ref (the records keep no RefCOCO ``sent_id``).
    """

    def __init__(self, folder: Path, dataset: Any, *, overwrite: bool = False):
        self.records = _records_by_image(dataset)
        self.writer = GroundingResultsWriter(folder / GROUNDING_NAME, overwrite=overwrite)

    def add(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        """Add every sentence's mask, resized to the image's size on disk."""
        for b, prediction in enumerate(predictions):
            image_id = int(batch["image_ids"][b])
            refs = self.records[image_id].refs
            targets = batch["targets"][b]["sentence_targets"].tolist()
            masks = resize_nearest(prediction["masks"], batch["orig_sizes"][b]).cpu()
            scores = prediction["scores"].float().cpu().tolist()
            seen: dict[int, int] = {}
            for s, sentence in enumerate(prediction["sentences"]):
                ref = refs[targets[s]]
                position = seen[targets[s]] = seen.get(targets[s], -1) + 1
                self.writer.add(image_id, ref.ref_id, sentence, masks[s], scores[s], sentence_id=position)

    def payload(self) -> Any:
        """This rank's entries."""
        return self.writer.entries

    def finish(self, payloads: Sequence[Any]) -> list[Path]:
        """Write every rank's entries, sorted by image id."""
        self.writer.entries = _by_image([e for p in payloads for e in p], "image_id")
        return [self.writer.close()]


class RetrievalSink(ResultsSink):
    """Ranked galleries of a retrieval dataset, and the captions behind its caption ids.

    The records keep no caption ids, so captions are numbered in dataset order (record by record,
    caption by caption, from 0); ``retrieval_captions.json`` lists ``{id, image_id, caption}`` for
    each caption evaluated. Every image query ranks all captions and every caption query ranks all
    images (over every rank), cut to ``top_k``.
    """

    def __init__(self, folder: Path, dataset: Any, top_k: int | None, *, overwrite: bool = False):
        self.captions_path = folder / CAPTIONS_NAME
        if self.captions_path.exists() and not overwrite:
            raise FileExistsError(f"{self.captions_path} exists")
        self.writer = RetrievalResultsWriter(folder / RETRIEVAL_NAME, top_k=top_k, overwrite=overwrite)
        self.caption_ids: dict[int, list[int]] = {}
        self.caption_texts: dict[int, tuple[str, ...]] = {}
        first = 0
        for image_id, record in _records_by_image(dataset).items():
            self.caption_ids[image_id] = list(range(first, first + len(record.captions)))
            self.caption_texts[image_id] = tuple(record.captions)
            first += len(record.captions)
        self.images: list[tuple[int, Tensor]] = []
        self.captions: list[tuple[int, int, Tensor]] = []

    def add(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        """Keep each image's embedding float[E] and its captions' float[c,E] (on the CPU)."""
        for b, prediction in enumerate(predictions):
            image_id = int(batch["image_ids"][b])
            ids = self.caption_ids[image_id]
            embeddings = prediction["caption_embeddings"].float().cpu()
            if len(embeddings) != len(ids):
                raise ValueError(
                    f"image_id={image_id}: {len(embeddings)} caption embeddings for {len(ids)} captions"
                )
            self.images.append((image_id, prediction["image_embedding"].float().cpu()))
            self.captions.extend((ids[k], image_id, embeddings[k]) for k in range(len(ids)))

    def payload(self) -> Any:
        """This rank's image and caption embeddings."""
        return self.images, self.captions

    def finish(self, payloads: Sequence[Any]) -> list[Path]:
        """Rank the galleries; write the results and the captions file."""
        images = sorted((i for p in payloads for i in p[0]), key=lambda item: item[0])
        captions = sorted((c for p in payloads for c in p[1]), key=lambda item: item[0])
        if images and captions:
            image_ids = torch.tensor([i for i, _ in images])
            caption_ids = torch.tensor([c for c, _, _ in captions])
            image_matrix = torch.stack([e for _, e in images])  # [I,E]
            caption_matrix = torch.stack([e for _, _, e in captions])  # [C,E]
            self._rank("image", image_ids, image_matrix, caption_ids, caption_matrix)
            self._rank("text", caption_ids, caption_matrix, image_ids, image_matrix)
        gallery = [
            {"id": c, "image_id": i, "caption": self.caption_texts[i][self.caption_ids[i].index(c)]}
            for c, i, _ in captions
        ]
        write_json_atomic(self.captions_path, gallery)
        return [self.writer.close(), self.captions_path]

    def _rank(
        self,
        kind: Literal["image", "text"],
        query_ids: Tensor,
        queries: Tensor,
        gallery_ids: Tensor,
        gallery: Tensor,
        chunk: int = 1024,
    ) -> None:
        """Add the top-k gallery of each query; similarities in chunks of ``chunk`` queries."""
        k = len(gallery_ids) if self.writer.top_k is None else min(self.writer.top_k, len(gallery_ids))
        for start in range(0, len(queries), chunk):
            scores, index = (queries[start : start + chunk] @ gallery.T).topk(k, dim=1)
            for row in range(len(scores)):
                self.writer.add(kind, int(query_ids[start + row]), gallery_ids[index[row]], scores[row])


def _by_image(entries: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    # a stable sort: one image's entries keep their order (e.g. instance results by score)
    return sorted(entries, key=lambda entry: int(entry[key]))
