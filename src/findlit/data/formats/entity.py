"""Reader of FIND-Bench entity annotations (COCO-Entity), joined with COCO panoptic.

Each annotation is a sentence whose phrases carry character offsets and the panoptic segment id
(``annotation_id``) they name; a phrase may also carry a ``reference`` to a segment of another
image (interleave retrieval).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from findlit.data.errors import BadRecords
from findlit.data.formats.jsonfile import existing_path, field, load_json, optional_number, top_level_list
from findlit.data.formats.panoptic import read_coco_panoptic
from findlit.data.records import (
    Dataset,
    EntityRecord,
    EntitySentence,
    PanopticRecord,
    Phrase,
    SegmentReference,
)
from findlit.errors import DataError


def read_find_entity(
    entity_json: str | Path,
    panoptic_json: str | Path,
    panoptic_root: str | Path,
    image_root: str | Path,
    *,
    bad_records: BadRecords | None = None,
    keys: Mapping[str, str] | None = None,
) -> Dataset:
    """Read entity sentences and join each phrase with its panoptic segment by ``annotation_id``.

    Returns:
        A :class:`Dataset` of :class:`EntityRecord`, one per image with at least one sentence,
        carrying the panoptic categories.

    """
    keys = keys or {}
    bad_records = bad_records or BadRecords()
    key = keys.get("entity_json")
    json_path = existing_path(entity_json, key)
    panoptic = read_coco_panoptic(
        panoptic_json, panoptic_root, image_root, bad_records=bad_records, keys=keys
    )
    by_image: dict[int, PanopticRecord] = {record.image.id: record for record in panoptic.records}
    document = load_json(json_path, key)

    sentences: dict[int, list[EntitySentence]] = {}
    for entry in top_level_list(document, "annotations", json_path, key):
        with bad_records.guard():
            try:
                image_id, sentence = _entity_sentence(entry, json_path, by_image)
            except DataError as error:
                raise error.with_key(key) from None
            sentences.setdefault(image_id, []).append(sentence)
    records = tuple(
        EntityRecord(by_image[i], tuple(image_sentences)) for i, image_sentences in sentences.items()
    )
    files = {**panoptic.files, "entity_json": json_path}
    return Dataset(records=records, categories=panoptic.categories, source=json_path, files=files)


def _entity_sentence(
    entry: Any, file: Path, by_image: Mapping[int, PanopticRecord]
) -> tuple[int, EntitySentence]:
    sentence_id = field(entry, "id", file, "entity annotation without id", int)
    name = f"entity id={sentence_id}"
    image_id = field(entry, "image_id", file, name, int)
    if image_id not in by_image:
        raise DataError(f"image_id {image_id} has no panoptic annotation", file, name)
    text = field(entry, "sentence", file, name, str)
    segments = {segment.id: segment for segment in by_image[image_id].segments}
    phrases = []
    for index, phrase in enumerate(field(entry, "phrase", file, name, list)):
        phrase_name = f"{name} image_id={image_id} phrase {index}"
        words = field(phrase, "phrase", file, phrase_name, str)
        start = field(phrase, "start_idx", file, phrase_name, int)
        end = field(phrase, "end_idx", file, phrase_name, int)
        if not (0 <= start < end <= len(text)) or text[start:end] != words:
            raise DataError(
                f"phrase span [{start}:{end}] gives {text[start:end]!r}, not the phrase {words!r}",
                file,
                phrase_name,
            )
        segment_id = field(phrase, "annotation_id", file, phrase_name, int)
        if segment_id not in segments:
            raise DataError(
                f"annotation_id {segment_id} is not a segment of image {image_id}", file, phrase_name
            )
        category_id = phrase.get("category_id", segments[segment_id].category_id)
        if category_id != segments[segment_id].category_id:
            raise DataError(
                f"category_id {category_id} differs from segment {segment_id}'s "
                f"{segments[segment_id].category_id}",
                file,
                phrase_name,
            )
        reference = None
        if phrase.get("reference") is not None:
            reference = _reference(phrase["reference"], file, phrase_name, by_image)
        phrases.append(Phrase(words, start, end, segment_id, category_id, reference))
    return image_id, EntitySentence(sentence_id, text, tuple(phrases))


def _reference(value: Any, file: Path, name: str, by_image: Mapping[int, PanopticRecord]) -> SegmentReference:
    image_id = field(value, "image_id", file, name, int)
    segment_id = field(value, "annotation_id", file, name, int)
    if image_id not in by_image:
        raise DataError(f"reference image_id {image_id} has no panoptic annotation", file, name)
    if segment_id not in {segment.id for segment in by_image[image_id].segments}:
        raise DataError(
            f"reference annotation_id {segment_id} is not a segment of image {image_id}", file, name
        )
    prob = optional_number(value, "prob", 1.0, file, name)
    return SegmentReference(image_id=image_id, segment_id=segment_id, prob=prob, record=by_image[image_id])
