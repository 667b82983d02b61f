from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from findlit.data.decode import decode_panoptic, panoptic_id_map, to_rle
from findlit.data.formats import read_coco_panoptic
from findlit.outputs.coco_writers import (
    GroundingResultsWriter,
    InstanceResultsWriter,
    PanopticWriter,
    RetrievalResultsWriter,
)


def _read_sample(sample: Path) -> Any:
    return read_coco_panoptic(
        sample / "annotations" / "panoptic_val2017.json", sample / "panoptic_val2017", sample / "val2017"
    )


def _write_ground_truth_as_prediction(sample: Path, folder: Path) -> Any:
    truth = _read_sample(sample)
    with PanopticWriter(folder, truth.categories) as writer:
        for record in truth.records:
            ids = torch.from_numpy(panoptic_id_map(record))
            segments = [{"id": s.id, "category_id": s.category_id, "score": 1.0} for s in record.segments]
            writer.add(record.image.id, record.image.path.name, ids, segments)
    return truth


def test_panoptic_round_trip_of_ground_truth(coco_sample: Path, tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    truth = _write_ground_truth_as_prediction(coco_sample, folder)
    written = read_coco_panoptic(
        folder / "panoptic_predictions.json", folder / "panoptic", coco_sample / "val2017"
    )

    assert written.categories == truth.categories
    assert len(written.records) == len(truth.records) == 2
    for expected, got in zip(truth.records, written.records, strict=True):
        assert got.image == expected.image
        assert got.png_path.name == expected.png_path.name
        np.testing.assert_array_equal(panoptic_id_map(got), panoptic_id_map(expected))
        by_id = {s.id: s for s in got.segments}
        assert set(by_id) == {s.id for s in expected.segments}
        for segment in expected.segments:
            assert by_id[segment.id].category_id == segment.category_id
            assert by_id[segment.id].area == segment.area
            assert by_id[segment.id].bbox == segment.bbox
            assert not by_id[segment.id].iscrowd
        # Every ground-truth segment has a prediction of its category with IoU 1, so PQ is 1.
        gt_masks, got_masks = decode_panoptic(expected), decode_panoptic(got)
        predicted = dict(zip(got_masks.segment_ids.tolist(), got_masks.masks, strict=True))
        for segment_id, category_id, mask in zip(
            gt_masks.segment_ids.tolist(), gt_masks.category_ids.tolist(), gt_masks.masks, strict=True
        ):
            assert torch.equal(predicted[segment_id], mask)
            assert by_id[segment_id].category_id == category_id


def test_panoptic_json_is_coco_results_format(coco_sample: Path, tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    _write_ground_truth_as_prediction(coco_sample, folder)
    document = json.loads((folder / "panoptic_predictions.json").read_text())
    assert {"annotations", "categories"} <= set(document)
    annotation = document["annotations"][0]
    assert set(annotation) == {"image_id", "file_name", "segments_info"}
    assert set(annotation["segments_info"][0]) == {"id", "category_id", "area", "bbox", "iscrowd", "score"}
    assert sorted(p.name for p in (folder / "panoptic").iterdir()) == ["000000142238.png", "000000439180.png"]


def test_panoptic_drops_empty_segments_and_refuses_unlisted_ids(tmp_path: Path) -> None:
    ids = np.zeros((4, 5), dtype=np.int64)
    ids[1:3, 1:4] = 7
    writer = PanopticWriter(tmp_path / "out", [{"id": 1, "name": "a", "isthing": 1}])
    annotation = writer.add(1, "x.jpg", ids, [{"id": 7, "category_id": 1}, {"id": 9, "category_id": 1}])
    assert annotation["segments_info"] == [
        {"id": 7, "category_id": 1, "area": 6, "bbox": [1, 1, 3, 2], "iscrowd": 0}
    ]
    with pytest.raises(ValueError, match="not listed"):
        writer.add(2, "y.jpg", ids, [])
    with pytest.raises(ValueError, match="category_id 5"):
        writer.add(3, "z.jpg", ids, [{"id": 7, "category_id": 5}])


def test_panoptic_refuses_non_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    PanopticWriter(folder, [])  # empty: fine
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        PanopticWriter(folder, [])
    writer = PanopticWriter(folder, [], overwrite=True)
    writer.close()
    assert (folder / "notes.txt").read_text() == "mine"
    assert json.loads((folder / "panoptic_predictions.json").read_text())["annotations"] == []


def test_close_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "instances.json"
    writer = InstanceResultsWriter(path)
    writer.add(1, np.ones((1, 3, 3), dtype=bool), [1], [0.5])

    def fail_midway(document: Any, handle: Any, **_: Any) -> None:
        handle.write('[{"image_id": ')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_json_writers_refuse_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("[]")
    for kind in (InstanceResultsWriter, GroundingResultsWriter, RetrievalResultsWriter):
        with pytest.raises(FileExistsError):
            kind(path)
        kind(path, overwrite=True)


def test_instance_results_score_ap_one_on_ground_truth(coco_sample: Path, tmp_path: Path) -> None:
    # All categories of the detection-format file (things and stuff); its 3 crowd annotations are
    # written as predictions too and COCOeval ignores the matches to them.
    gt_path = coco_sample / "annotations" / "panoptic_detection_format_val2017.json"
    document = json.loads(gt_path.read_text())
    sizes = {image["id"]: (image["height"], image["width"]) for image in document["images"]}
    path = tmp_path / "instances_results.json"
    with InstanceResultsWriter(path) as writer:
        for image_id, (height, width) in sizes.items():
            annotations = [a for a in document["annotations"] if a["image_id"] == image_id]
            masks = np.stack(
                [mask_utils.decode(to_rle(a["segmentation"], height, width)) for a in annotations]
            ).astype(bool)
            writer.add(
                image_id, torch.from_numpy(masks), [a["category_id"] for a in annotations], [1.0] * len(masks)
            )

    entries = json.loads(path.read_text())
    assert len(entries) == len(document["annotations"])
    assert isinstance(entries[0]["segmentation"]["counts"], str)
    assert set(entries[0]) == {"image_id", "category_id", "segmentation", "score", "bbox"}

    # The sample's annotation ids start at 0, and COCOeval stores matches by ground-truth id with 0
    # meaning "unmatched": the detection matched to annotation 0 would count as a false positive
    # (AP 0.990). Shifting the ids by one leaves the annotations themselves untouched.
    for annotation in document["annotations"]:
        annotation["id"] += 1
    shifted = tmp_path / "ground_truth.json"
    shifted.write_text(json.dumps(document))
    ground_truth = COCO(str(shifted))
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(path)), iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]
    assert evaluation.stats[1] == pytest.approx(1.0)  # AP50


def test_instance_results_check_lengths(tmp_path: Path) -> None:
    writer = InstanceResultsWriter(tmp_path / "r.json")
    with pytest.raises(ValueError, match="differ"):
        writer.add(1, np.zeros((2, 4, 4), dtype=bool), [1], [0.5, 0.2])
    writer.add(1, np.zeros((0, 4, 4), dtype=bool), [], [])
    assert writer.entries == []


def test_grounding_rle_decodes_back(tmp_path: Path) -> None:
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:20, 10:33] = True
    mask[25, 0] = True
    path = tmp_path / "grounding.json"
    with GroundingResultsWriter(path) as writer:
        writer.add(142238, 7, "the man on the left", torch.from_numpy(mask), 0.75, sentence_id=3)
        writer.add(142238, 8, "the dog", np.zeros((30, 40), dtype=bool), 0.1)
    first, second = json.loads(path.read_text())
    assert first["ref_id"] == 7 and first["sentence_id"] == 3 and first["sentence"] == "the man on the left"
    assert first["score"] == 0.75 and "sentence_id" not in second
    rle = {"size": first["segmentation"]["size"], "counts": first["segmentation"]["counts"].encode()}
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)


def test_retrieval_results_top_k_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "retrieval.json"
    with RetrievalResultsWriter(path, top_k=2) as writer:
        writer.add("image", 1, [10, 11, 12], [0.9, 0.5, 0.1])
        writer.add("text", 5, torch.tensor([3, 4]), torch.tensor([0.25, 0.25]))
        with pytest.raises(ValueError, match="query_kind"):
            writer.add("audio", 1, [], [])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="best first"):
            writer.add("text", 6, [1, 2], [0.1, 0.9])
    assert json.loads(path.read_text()) == [
        {"query_kind": "image", "query_id": 1, "ranked_ids": [10, 11], "scores": [0.9, 0.5]},
        {"query_kind": "text", "query_id": 5, "ranked_ids": [3, 4], "scores": [0.25, 0.25]},
    ]


def test_context_manager_writes_nothing_on_error(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    with pytest.raises(RuntimeError, match="boom"), InstanceResultsWriter(path):
        raise RuntimeError("boom")
    assert not path.exists()


def test_outputs_are_not_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    RetrievalResultsWriter(path).close()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
