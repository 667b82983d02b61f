from pathlib import Path

import numpy as np
import torch
from PIL import Image

from findlit.data.decode import decode_panoptic, panoptic_id_map, read_image, semantic_map
from findlit.data.formats import read_coco_panoptic


def read(sample: Path):
    annotations = sample / "annotations"
    return read_coco_panoptic(
        annotations / "panoptic_val2017.json", sample / "panoptic_val2017", sample / "val2017"
    )


def test_reads_both_images_with_18_and_32_segments(coco_sample: Path) -> None:
    data = read(coco_sample)
    segments = {record.image.id: len(record.segments) for record in data.records}
    assert segments == {142238: 18, 439180: 32}
    record = data.records[0]
    assert record.image.path == coco_sample / "val2017" / "000000142238.jpg"
    assert (record.image.height, record.image.width) == (427, 640)
    assert record.png_path == coco_sample / "panoptic_val2017" / "000000142238.png"


def test_categories_keep_names_and_isthing(coco_sample: Path) -> None:
    categories = read(coco_sample).categories
    assert len(categories) == 133
    assert sum(c.isthing for c in categories.values()) == 80
    assert categories[1].name == "person" and categories[1].isthing
    assert categories[184].name == "tree-merged" and not categories[184].isthing


def test_segment_id_is_rgb_code(coco_sample: Path) -> None:
    record = read(coco_sample).records[0]
    rgb = np.asarray(Image.open(record.png_path).convert("RGB")).astype(np.int64)
    ids = panoptic_id_map(record)
    y, x = 250, 300
    assert ids[y, x] == rgb[y, x, 0] + 256 * rgb[y, x, 1] + 65536 * rgb[y, x, 2]
    assert set(np.unique(ids).tolist()) - {0} == {segment.id for segment in record.segments}


def test_crowd_segments_become_ignore_regions(coco_sample: Path) -> None:
    for record in read(coco_sample).records:
        crowd = [s for s in record.segments if s.iscrowd]
        assert crowd, "the sample has crowd segments in both images"
        panoptic = decode_panoptic(record)
        assert panoptic.masks.shape[0] == len(record.segments) - len(crowd)
        ids = torch.from_numpy(panoptic_id_map(record))
        for segment in crowd:
            region = ids == segment.id
            assert region.sum() == segment.area
            assert panoptic.ignore[region].all()
            assert not panoptic.masks[:, region].any()
        # every pixel is either one kept segment or ignored
        coverage = panoptic.masks.sum(0) + panoptic.ignore.long()
        assert (coverage == 1).all()


def test_masks_match_areas(coco_sample: Path) -> None:
    record = read(coco_sample).records[1]
    panoptic = decode_panoptic(record)
    areas = {s.id: s.area for s in record.segments}
    for mask, segment_id in zip(panoptic.masks, panoptic.segment_ids.tolist(), strict=True):
        assert int(mask.sum()) == areas[segment_id]


def test_semantic_map_from_panoptic(coco_sample: Path) -> None:
    data = read(coco_sample)
    record = data.records[0]
    panoptic = decode_panoptic(record)
    index = {c: k for k, c in enumerate(sorted(data.categories))}
    semantic = semantic_map(panoptic, index)
    assert semantic.shape == (427, 640)
    assert (semantic[panoptic.ignore] == 255).all()
    for mask, category_id in zip(panoptic.masks, panoptic.category_ids.tolist(), strict=True):
        assert (semantic[mask] == index[category_id]).all()


def test_image_decodes_to_uint8_rgb(coco_sample: Path) -> None:
    image = read_image(read(coco_sample).records[1].image)
    assert image.dtype == torch.uint8 and image.shape == (3, 360, 640)
