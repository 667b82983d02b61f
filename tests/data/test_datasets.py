from pathlib import Path

import torch

from findlit.data.config import DatasetConfig, DatasetPaths, build_dataset
from findlit.data.transforms import TransformConfig

ANN = "annotations/"
CONFIGS = {
    "panoptic": DatasetConfig(
        "pan",
        "segmentation",
        "coco_panoptic",
        DatasetPaths(
            panoptic_json=ANN + "panoptic_val2017.json",
            panoptic_root="panoptic_val2017",
            image_root="val2017",
        ),
    ),
    "instances": DatasetConfig(
        "ins",
        "segmentation",
        "coco_instances",
        DatasetPaths(instances_json=ANN + "panoptic_detection_format_val2017.json", image_root="val2017"),
    ),
    "captions": DatasetConfig(
        "cap",
        "retrieval",
        "coco_captions",
        DatasetPaths(captions_json=ANN + "captions_val2017.json", image_root="val2017"),
    ),
    "refs": DatasetConfig(
        "ref",
        "grounding",
        "refcoco",
        DatasetPaths(
            refs=ANN + "refs(umd).p",
            instances_json=ANN + "panoptic_detection_format_val2017.json",
            image_root="val2017",
        ),
    ),
    "entities": DatasetConfig(
        "ent",
        "interleave",
        "find_entity",
        DatasetPaths(
            entity_json=ANN + "entity_val2017.json",
            panoptic_json=ANN + "panoptic_val2017.json",
            panoptic_root="panoptic_val2017",
            image_root="val2017",
        ),
    ),
}


def build(name: str, root: Path, train: bool = False, **transforms):
    config = CONFIGS[name]
    if transforms:
        config = DatasetConfig(
            config.name, config.task, config.format, config.paths, transforms=TransformConfig(**transforms)
        )
    return build_dataset(config, "data.val[0]", train=train, root=root)


def test_panoptic_segmentation_sample(coco_sample: Path) -> None:
    dataset = build("panoptic", coco_sample, image_size=640)
    sample = dataset[0]
    assert sample["task"] == "segmentation" and sample["dataset"] == "pan"
    assert sample["image_id"] == 142238 and sample["orig_size"] == (427, 640)
    assert sample["image"].shape == (3, 427, 640) and sample["image"].dtype == torch.uint8
    masks = sample["masks"]
    assert masks.shape == (17, 427, 640) and masks.dtype == torch.bool
    assert sample["labels"].shape == (17,)
    names = [dataset.class_names[k] for k in sample["labels"].tolist()]
    assert "sports ball" in names and "person" in names
    assert sample["is_thing"].tolist() == [dataset.thing_classes[k] for k in sample["labels"].tolist()]
    assert sample["ignore_mask"].any()
    assert len(dataset.class_names) == 133


def test_instances_segmentation_keeps_crowd_as_ignore(coco_sample: Path) -> None:
    sample = build("instances", coco_sample, image_size=640)[1]
    assert sample["masks"].shape[0] == 30  # 32 annotations, 2 crowd
    assert sample["ignore_mask"].any()


def test_retrieval_draws_one_caption_in_training(coco_sample: Path) -> None:
    evaluation = build("captions", coco_sample)
    assert len(evaluation[0]["captions"]) == 3
    training = build("captions", coco_sample, train=True, image_size=256)
    drawn = {training[(0, seed)]["captions"][0] for seed in range(20)}
    # training: every caption, in an order drawn from the sample's seed (the first is a random draw)
    assert sorted(training[(0, 0)]["captions"]) == sorted(evaluation[0]["captions"])
    assert training[(0, 3)]["captions"] == training[(0, 3)]["captions"]
    assert drawn <= set(evaluation[0]["captions"]) and len(drawn) > 1


def test_grounding_sentences_point_at_their_masks(coco_sample: Path) -> None:
    dataset = build("refs", coco_sample, image_size=640)
    records = {record.image.id: position for position, record in enumerate(dataset.records)}
    sample = dataset[records[142238]]
    assert "the rugby ball in the air" in sample["sentences"]
    target = sample["sentence_targets"][sample["sentences"].index("the rugby ball in the air")]
    ball = sample["masks"][target]
    # the ball is small and high in the image
    ys = ball.nonzero()[:, 0]
    assert 0 < ball.sum() < 2000 and ys.float().mean() < 200
    assert len(sample["sentences"]) == len(sample["sentence_targets"])


def test_interleave_entities(coco_sample: Path) -> None:
    dataset = build("entities", coco_sample, image_size=640)
    sample = dataset[0]
    entity = sample["entities"][0]
    assert [entity["sentence"][s:e] for s, e in entity["spans"]] == [
        "A rugby ball",
        "the grass",
        "trees",
        "the sky",
    ]
    assert sample["masks"].shape[0] == 4
    assert entity["references"][1] == (439180, 10025880)
    names = [dataset.class_names[k] for k in sample["labels"][entity["targets"]].tolist()]
    assert names[0] == "sports ball" and names[3] == "sky-other-merged"


def test_interleave_reference_images_in_evaluation(coco_sample: Path) -> None:
    dataset = build("entities", coco_sample, image_size=320)
    sample = dataset[0]
    references = sample["reference_images"]
    assert len(references) == 4  # one per phrase, in phrase order
    assert [ref is None for ref in references] == [True, False, True, True]
    grass = references[1]
    assert grass is not None
    # image 439180 (640 x 360 on disk) resized as the sample's own image (longest edge 320)
    assert grass["image"].dtype == torch.uint8 and tuple(grass["image"].shape) == (3, 180, 320)
    assert grass["mask"].shape == (180, 320) and grass["mask"].dtype == torch.bool
    assert 0.05 < grass["mask"].float().mean() < 0.95  # the grass of the other image, not all of it
    # training samples carry none: training draws visual entities on their own segments (FIND)
    assert "reference_images" not in build("entities", coco_sample, train=True, image_size=320)[(0, 3)]


def test_training_sample_is_deterministic_per_seed(coco_sample: Path) -> None:
    dataset = build("panoptic", coco_sample, train=True, image_size=256)
    a, b, c = dataset[(0, 7)], dataset[(0, 7)], dataset[(0, 8)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    # the seed stays in the sample (the losses seed its random points with it); evaluation: the index
    assert (a["seed"], c["seed"], dataset[1]["seed"]) == (7, 8, 1)
    assert not (a["image"].shape == c["image"].shape and torch.equal(a["image"], c["image"]))


def test_segments_cropped_away_are_dropped(coco_sample: Path) -> None:
    dataset = build("panoptic", coco_sample, train=True, image_size=128, min_scale=2.0, max_scale=2.0)
    counts = set()
    for seed in range(6):
        sample = dataset[(0, seed)]
        assert sample["masks"].flatten(1).any(1).all()
        assert sample["labels"].shape[0] == sample["is_thing"].shape[0] == sample["masks"].shape[0]
        counts.add(sample["masks"].shape[0])
    assert max(counts) < 17  # a 128 px crop of a 2x zoom cannot hold every segment
