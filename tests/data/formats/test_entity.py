from pathlib import Path

from findlit.data.formats import read_find_entity
from findlit.data.records import SegmentReference


def read(sample: Path):
    annotations = sample / "annotations"
    return read_find_entity(
        annotations / "entity_val2017.json",
        annotations / "panoptic_val2017.json",
        sample / "panoptic_val2017",
        sample / "val2017",
    )


def test_entities_join_panoptic_segments(coco_sample: Path) -> None:
    data = read(coco_sample)
    records = {r.image.id: r for r in data.records}
    assert set(records) == {142238, 439180}
    sentence = records[142238].sentences[0]
    assert sentence.sentence == "A rugby ball flies above the grass while trees stand under the sky."
    assert [p.text for p in sentence.phrases] == ["A rugby ball", "the grass", "trees", "the sky"]
    for phrase in sentence.phrases:
        assert sentence.sentence[phrase.start : phrase.end] == phrase.text
        segment = {s.id: s for s in records[142238].panoptic.segments}[phrase.segment_id]
        assert segment.category_id == phrase.category_id
    assert data.categories[sentence.phrases[0].category_id].name == "sports ball"


def test_reference_to_a_segment_in_another_image(coco_sample: Path) -> None:
    records = {r.image.id: r for r in read(coco_sample).records}
    grass = records[142238].sentences[0].phrases[1]
    assert grass.reference == SegmentReference(image_id=439180, segment_id=10025880, prob=1.0)
    other = {s.id: s for s in records[439180].panoptic.segments}
    assert other[grass.reference.segment_id].category_id == grass.category_id
    truck = records[439180].sentences[0].phrases[0]
    assert truck.text == "a red truck" and truck.reference is None
