import json
from pathlib import Path

from findlit.data.formats import read_coco_captions, read_karpathy


def test_coco_captions_grouped_per_image(coco_sample: Path) -> None:
    data = read_coco_captions(coco_sample / "annotations" / "captions_val2017.json", coco_sample / "val2017")
    captions = {r.image.id: r.captions for r in data.records}
    assert set(captions) == {142238, 439180}
    assert all(len(texts) == 3 for texts in captions.values())
    assert captions[439180][1] == "Riders on horseback parade past a red truck on a grassy field."
    assert data.records[0].image.path.is_file()


def test_karpathy_split_file(tmp_path: Path, coco_sample: Path) -> None:
    document = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "val2017",
                "filename": "000000142238.jpg",
                "split": "test",
                "cocoid": 142238,
                "imgid": 0,
                "sentids": [0, 1],
                "sentences": [
                    {"raw": "Rugby players. ", "tokens": ["rugby"]},
                    {"raw": "A lineout.", "tokens": ["a"]},
                ],
            },
            {
                "filepath": "val2017",
                "filename": "000000439180.jpg",
                "split": "restval",
                "cocoid": 439180,
                "imgid": 1,
                "sentids": [2],
                "sentences": [{"raw": "Riders on horses.", "tokens": ["riders"]}],
            },
        ],
    }
    split_file = tmp_path / "dataset_coco.json"
    split_file.write_text(json.dumps(document))
    every = read_karpathy(split_file, coco_sample)
    assert [r.split for r in every.records] == ["test", "restval"]
    test = read_karpathy(split_file, coco_sample, split="test")
    assert [r.image.id for r in test.records] == [142238]
    assert test.records[0].captions == ("Rugby players.", "A lineout.")
    assert test.records[0].image.path == coco_sample / "val2017" / "000000142238.jpg"
    assert test.records[0].image.path.is_file()
    train = read_karpathy(split_file, coco_sample, split=["train", "restval"])
    assert [r.image.id for r in train.records] == [439180]
