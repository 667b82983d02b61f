import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from findlit.data.decode import decode_instance, decode_panoptic
from findlit.data.formats import read_coco_instances, read_coco_panoptic


def test_reads_rle_annotations_matching_panoptic(coco_sample: Path) -> None:
    annotations = coco_sample / "annotations"
    instances = read_coco_instances(
        annotations / "panoptic_detection_format_val2017.json", coco_sample / "val2017"
    )
    panoptic = read_coco_panoptic(
        annotations / "panoptic_val2017.json", coco_sample / "panoptic_val2017", coco_sample / "val2017"
    )
    assert {r.image.id: len(r.annotations) for r in instances.records} == {142238: 18, 439180: 32}
    for inst, pan in zip(instances.records, panoptic.records, strict=True):
        decoded = decode_panoptic(pan)
        by_bbox = {s.bbox: s.id for s in pan.segments}
        for annotation in inst.annotations:
            mask = decode_instance(annotation, inst.image)
            assert mask.shape == (inst.image.height, inst.image.width)
            if annotation.iscrowd:
                continue
            segment_id = by_bbox[annotation.bbox]
            row = decoded.segment_ids.tolist().index(segment_id)
            assert torch.equal(mask, decoded.masks[row])


def _write_instances(
    path: Path, segmentation: object, height: int = 20, width: int = 30, iscrowd: int = 0
) -> None:
    document = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": height, "width": width}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 3,
                "segmentation": segmentation,
                "iscrowd": iscrowd,
                "bbox": [0, 0, 1, 1],
                "area": 1,
            }
        ],
        "categories": [{"id": 3, "name": "cup"}],
    }
    path.write_text(json.dumps(document))


def _square() -> np.ndarray:
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:15, 10:20] = 1
    return mask


@pytest.mark.parametrize("kind", ["polygon", "compressed", "uncompressed"])
def test_decodes_every_coco_segmentation_kind(tmp_path: Path, kind: str) -> None:
    expected = _square()
    if kind == "polygon":
        # pixel-corner polygon of the square: pycocotools rasterises it to the same pixels
        segmentation: object = [[10, 5, 20, 5, 20, 15, 10, 15]]
    elif kind == "compressed":
        rle = mask_utils.encode(np.asfortranarray(expected))
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    else:
        flat = expected.flatten(order="F")
        changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        counts = np.diff(np.concatenate([[0], changes])).tolist()
        segmentation = {"size": [20, 30], "counts": counts}
    _write_instances(tmp_path / "instances.json", segmentation, iscrowd=int(kind == "uncompressed"))
    data = read_coco_instances(tmp_path / "instances.json", tmp_path)
    annotation = data.records[0].annotations[0]
    mask = decode_instance(annotation, data.records[0].image).numpy()
    if kind == "polygon":
        assert abs(int(mask.sum()) - int(expected.sum())) <= 2 * 10 + 1  # rasterisation at the edges
        assert mask[6:14, 11:19].all() and not mask[:4].any()
    else:
        assert np.array_equal(mask, expected.astype(bool))
    assert data.categories[3].name == "cup"
