import pickle
from pathlib import Path

import pytest

from findlit.data.formats import read_refcoco
from findlit.data.formats.refcoco import load_refs_pickle
from findlit.errors import DataError


def read(sample: Path, refs: str, **kwargs):
    annotations = sample / "annotations"
    return read_refcoco(
        annotations / refs,
        annotations / "panoptic_detection_format_val2017.json",
        sample / "val2017",
        **kwargs,
    )


@pytest.mark.parametrize("refs", ["refs(umd).p", "refs_val2017.json"])
def test_refs_join_instances_by_ann_id(coco_sample: Path, refs: str) -> None:
    data = read(coco_sample, refs)
    by_id = {ref.ref_id: (record.image.id, ref) for record in data.records for ref in record.refs}
    assert len(by_id) == 6
    image_id, ball = by_id[0]
    assert image_id == 142238
    assert ball.sentences == ("the rugby ball in the air", "the white ball above the players")
    assert ball.annotation is not None and ball.annotation.id == 14
    assert ball.annotation.category_id == ball.category_id == 37
    assert data.categories[37].name == "sports ball"


def test_pickle_and_json_give_the_same_records(coco_sample: Path) -> None:
    assert read(coco_sample, "refs(umd).p").records == read(coco_sample, "refs_val2017.json").records


def test_split_filter(coco_sample: Path) -> None:
    assert read(coco_sample, "refs(umd).p", split="val").records
    assert read(coco_sample, "refs(umd).p", split="testB").records == ()


def test_restricted_unpickler_admits_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "plain.p"
    payload = [{"a": [1, 2.5, "x", None, True, (1, 2)], "b": {"c": "text", "d": -3}}]
    path.write_bytes(pickle.dumps(payload, protocol=2))
    assert load_refs_pickle(path) == payload


class _Sneaky:
    def __reduce__(self):
        return (print, ("ran code",))


def test_restricted_unpickler_refuses_callables(tmp_path: Path) -> None:
    path = tmp_path / "evil.p"
    path.write_bytes(pickle.dumps([_Sneaky()]))
    with pytest.raises(DataError, match=r"refusing to unpickle builtins\.print") as error:
        load_refs_pickle(path)
    assert str(path) in str(error.value)
