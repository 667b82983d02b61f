from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor
from torch.nn import functional as nnf

from findlit.data.sample import EntityPrompt, Sample
from findlit.data.transforms import (
    Compose,
    LargeScaleJitter,
    RandomHorizontalFlip,
    Resize,
    Transform,
    TransformConfig,
    build_transforms,
    swap_left_right,
    swap_left_right_spans,
)
from findlit.errors import ConfigError

# (top, left, bottom, right, channel): each square is painted 255 in one channel of the image and
# is one mask; the ignore region is painted in the last channel.
SQUARES = [(10, 15, 50, 70, 0), (55, 90, 95, 140, 1)]
IGNORE = (0, 100, 20, 150, 2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_sample(height: int = 100, width: int = 150, with_masks: bool = True) -> Sample:
    """An image of black background with coloured squares; each square is also a mask."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    masks = torch.zeros(len(SQUARES), height, width, dtype=torch.bool)
    for k, (top, left, bottom, right, channel) in enumerate(SQUARES):
        image[channel, top:bottom, left:right] = 255
        masks[k, top:bottom, left:right] = True
    top, left, bottom, right, channel = IGNORE
    image[channel, top:bottom, left:right] = 255
    ignore = torch.zeros(height, width, dtype=torch.bool)
    ignore[top:bottom, left:right] = True
    sample: Sample = {
        "task": "segmentation",
        "dataset": "toy",
        "image_id": 7,
        "image": image,
        "orig_size": (height, width),
        "labels": torch.tensor([3, 5]),
        "is_thing": torch.tensor([True, False]),
        "ignore_mask": ignore,
    }
    if with_masks:
        sample["masks"] = masks
    return sample


def assert_aligned(image: Tensor, mask: Tensor, channel: int, tol: int = 1) -> None:
    """Mask pixels are exactly where the channel is bright, except within ``tol`` px of the mask's edge."""
    assert image.shape[-2:] == mask.shape[-2:]
    bright = image[channel] > 127
    m = mask.float()[None, None]
    k = 2 * tol + 1
    dilated = nnf.max_pool2d(m, k, stride=1, padding=tol)[0, 0].bool()
    eroded = ~nnf.max_pool2d(1 - m, k, stride=1, padding=tol)[0, 0].bool()
    border = dilated & ~eroded
    wrong = (bright ^ mask) & ~border
    assert int(wrong.sum()) == 0, f"{int(wrong.sum())} misaligned pixels in channel {channel}"


def assert_sample_aligned(sample: Sample) -> None:
    for k, (*_, channel) in enumerate(SQUARES):
        assert_aligned(sample["image"], sample["masks"][k], channel)
    assert_aligned(sample["image"], sample["ignore_mask"], IGNORE[4])


def assert_valid(sample: Sample, n_masks: int = len(SQUARES)) -> tuple[int, int]:
    image = sample["image"]
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    size = tuple(image.shape[-2:])
    if "masks" in sample:
        assert sample["masks"].dtype == torch.bool
        assert tuple(sample["masks"].shape) == (n_masks, *size)
    if "ignore_mask" in sample:
        assert sample["ignore_mask"].dtype == torch.bool
        assert tuple(sample["ignore_mask"].shape) == size
    return int(size[0]), int(size[1])


def assert_same(a: Sample, b: Sample) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]  # type: ignore[literal-required]
        if isinstance(va, Tensor):
            assert torch.equal(va, vb), key
        else:
            assert va == vb, key


# ------------------------------------------------------------------------------------------
# Resize
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shortest", "longest", "expected"),
    [
        (None, 300, (200, 300)),  # up
        (None, 75, (50, 75)),  # down
        (200, None, (200, 300)),
        (200, 250, (167, 250)),  # longest caps
        (50, 1000, (50, 75)),
    ],
)
def test_resize_sizes_and_alignment(
    shortest: int | None, longest: int | None, expected: tuple[int, int]
) -> None:
    sample = make_sample()
    out = Resize(shortest, longest)(sample, gen(0))
    assert assert_valid(out) == expected
    assert_sample_aligned(out)
    assert out["orig_size"] == (100, 150)
    assert torch.equal(out["labels"], sample["labels"])


def test_resize_same_size_is_identity() -> None:
    sample = make_sample()
    out = Resize(None, 150)(sample, gen(0))
    assert out is not sample
    assert_same(out, sample)


def test_resize_validates_arguments() -> None:
    with pytest.raises(ValueError, match="shortest_edge or longest_edge"):
        Resize(None, None)
    with pytest.raises(ValueError, match="longest_edge"):
        Resize(None, 0)
    with pytest.raises(ValueError, match="shortest_edge"):
        Resize(-1, None)


def test_resize_masks_follow_pixel_centres() -> None:
    # At a 3x downscale, nearest must take each block's centre pixel to match the antialiased image;
    # corner-aligned nearest ("nearest" mode) misaligns whole rows/columns. Only corners may tie.
    sample = make_sample(height=99, width=150)
    out = Resize(33, None)(sample, gen(0))
    assert assert_valid(out) == (33, 50)
    for k, (*_, channel) in enumerate(SQUARES):
        assert int((out["masks"][k] ^ (out["image"][channel] > 127)).sum()) <= 4
    assert int((out["ignore_mask"] ^ (out["image"][IGNORE[4]] > 127)).sum()) <= 4


# ------------------------------------------------------------------------------------------
# Large-scale jitter
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_lsj_shapes_and_alignment(seed: int) -> None:
    sample = make_sample()
    out = LargeScaleJitter(image_size=128, min_scale=0.3, max_scale=2.5)(sample, gen(seed))
    h, w = assert_valid(out)
    assert h <= 128 and w <= 128
    assert_sample_aligned(out)
    assert out["orig_size"] == (100, 150)


def test_lsj_fixed_scale_size() -> None:
    sample = make_sample()
    # scale 0.5: longest side 150 -> 64, so 100 x 150 -> 43 x 64, no crop needed.
    small = LargeScaleJitter(image_size=128, min_scale=0.5, max_scale=0.5)(sample, gen(0))
    assert assert_valid(small) == (43, 64)
    # scale 2: 100 x 150 -> 171 x 256, cropped to 128 x 128.
    big = LargeScaleJitter(image_size=128, min_scale=2.0, max_scale=2.0)(sample, gen(0))
    assert assert_valid(big) == (128, 128)


def test_lsj_crop_is_a_window_of_the_resized_sample() -> None:
    sample = make_sample()
    lsj = LargeScaleJitter(image_size=64, min_scale=1.5, max_scale=1.5)
    full = Resize(None, 96)(sample, gen(0))  # same scale, no crop: 64 x 96
    found = set()
    for seed in range(20):
        out = lsj(sample, gen(seed))
        assert assert_valid(out) == (64, 64)
        # the crop's masks equal a window of the uncropped masks: find its left offset
        offsets = [
            left
            for left in range(0, 96 - 64 + 1)
            if torch.equal(full["masks"][:, :, left : left + 64], out["masks"])
            and torch.equal(full["image"][:, :, left : left + 64], out["image"])
        ]
        assert offsets, f"seed {seed}: crop is not a window of the resized sample"
        found.add(offsets[0])
    assert len(found) > 3  # offsets vary across seeds


def test_lsj_is_deterministic_per_generator_and_varies_across_seeds() -> None:
    sample = make_sample()
    lsj = LargeScaleJitter(image_size=128)
    assert_same(lsj(sample, gen(3)), lsj(sample, gen(3)))
    sizes = {tuple(lsj(sample, gen(seed))["image"].shape) for seed in range(10)}
    assert len(sizes) > 3


def test_lsj_does_not_use_global_rng() -> None:
    sample = make_sample()
    lsj = LargeScaleJitter(image_size=128)
    torch.manual_seed(0)
    a = lsj(sample, gen(5))
    torch.manual_seed(1)
    b = lsj(sample, gen(5))
    assert_same(a, b)
    state = torch.get_rng_state()
    lsj(sample, gen(6))
    assert torch.equal(state, torch.get_rng_state())


def test_lsj_keeps_masks_that_are_cropped_away() -> None:
    sample = make_sample()
    out = LargeScaleJitter(image_size=16, min_scale=2.0, max_scale=2.0)(sample, gen(0))
    assert assert_valid(out) == (16, 16)
    assert out["masks"].shape[0] == len(SQUARES)


def test_lsj_validates_arguments() -> None:
    with pytest.raises(ValueError, match="image_size"):
        LargeScaleJitter(image_size=0)
    with pytest.raises(ValueError, match="min_scale"):
        LargeScaleJitter(min_scale=0.0)
    with pytest.raises(ValueError, match="max_scale"):
        LargeScaleJitter(min_scale=1.0, max_scale=0.5)


# ------------------------------------------------------------------------------------------
# Flip: geometry
# ------------------------------------------------------------------------------------------


def test_flip_geometry() -> None:
    sample = make_sample()
    out = RandomHorizontalFlip(p=1.0)(sample, gen(0))
    assert assert_valid(out) == (100, 150)
    assert torch.equal(out["image"], sample["image"].flip(-1))
    assert torch.equal(out["masks"], sample["masks"].flip(-1))
    assert torch.equal(out["ignore_mask"], sample["ignore_mask"].flip(-1))
    assert_sample_aligned(out)


def test_flip_never_with_p0() -> None:
    sample = make_sample()
    sample["captions"] = ["a dog on the left"]
    out = RandomHorizontalFlip(p=0.0)(sample, gen(0))
    assert_same(out, sample)


def test_flip_is_deterministic_and_random() -> None:
    sample = make_sample()
    flip = RandomHorizontalFlip()
    flipped = []
    for seed in range(20):
        a, b = flip(sample, gen(seed)), flip(sample, gen(seed))
        assert_same(a, b)
        flipped.append(not torch.equal(a["image"], sample["image"]))
    assert 0 < sum(flipped) < 20


def test_flip_validates_p() -> None:
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(p=1.5)


# ------------------------------------------------------------------------------------------
# Flip: texts
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the dog on the left", "the dog on the right"),
        ("the right cat", "the left cat"),
        ("Left of the tree", "Right of the tree"),
        ("Right.", "Left."),
        ("LEFT and RIGHT", "RIGHT and LEFT"),
        ("the leftmost car", "the rightmost car"),
        ("Rightmost person", "Leftmost person"),
        ("his left-hand glove", "his right-hand glove"),
        ("a right-hand turn", "a left-hand turn"),
        ("walking leftward", "walking rightward"),
        ("a bright light", "a bright light"),
        ("leftover pizza", "leftover pizza"),
        ("an upright piano, rightly so", "an upright piano, rightly so"),
        ("left, right, left.", "right, left, right."),
        ('"left"', '"right"'),
        ("", ""),
        ("nothing to swap", "nothing to swap"),
    ],
)
def test_swap_left_right(text: str, expected: str) -> None:
    assert swap_left_right(text) == expected
    # swapping twice is the identity
    assert swap_left_right(swap_left_right(text)) == text


def phrase_spans(sentence: str, phrases: list[str]) -> list[tuple[int, int]]:
    spans = []
    for phrase in phrases:
        start = sentence.index(phrase)
        spans.append((start, start + len(phrase)))
    return spans


def test_swap_spans_stay_exact() -> None:
    sentence = "The left dog sits right of the rightmost cat near a bright lamp on the left-hand side."
    phrases = ["The left dog", "right", "the rightmost cat", "a bright lamp", "the left-hand side"]
    expected = ["The right dog", "left", "the leftmost cat", "a bright lamp", "the right-hand side"]
    new, spans = swap_left_right_spans(sentence, phrase_spans(sentence, phrases))
    assert new == "The right dog sits left of the leftmost cat near a bright lamp on the right-hand side."
    assert [new[s:e] for s, e in spans] == expected


def test_swap_spans_without_edits_and_edge_inside_word() -> None:
    assert swap_left_right_spans("a red car", [(2, 5)]) == ("a red car", [(2, 5)])
    # a span edge inside a swapped word moves to the word's edge
    new, spans = swap_left_right_spans("go left now", [(4, 6), (3, 7)])
    assert new == "go right now"
    assert [new[s:e] for s, e in spans] == ["right", "right"]


def test_flip_swaps_all_text_fields_and_entity_spans() -> None:
    sentence = "the left zebra next to the right giraffe"
    entity: EntityPrompt = {
        "sentence": sentence,
        "spans": phrase_spans(sentence, ["the left zebra", "the right giraffe"]),
        "targets": [0, 1],
        "references": [None, (4, 9)],
    }
    sample = make_sample()
    sample["captions"] = ["A dog on the LEFT", "a bright day"]
    sample["sentences"] = ["leftmost person", "person on the right"]
    sample["entities"] = [entity]
    out = RandomHorizontalFlip(p=1.0)(sample, gen(0))
    assert out["captions"] == ["A dog on the RIGHT", "a bright day"]
    assert out["sentences"] == ["rightmost person", "person on the left"]
    (new,) = out["entities"]
    assert new["sentence"] == "the right zebra next to the left giraffe"
    assert [new["sentence"][s:e] for s, e in new["spans"]] == ["the right zebra", "the left giraffe"]
    assert new["targets"] == [0, 1] and new["references"] == [None, (4, 9)]
    # the input is untouched
    assert sample["entities"][0]["sentence"] == sentence
    assert sample["captions"][0] == "A dog on the LEFT"


def test_flip_without_swap_keeps_texts() -> None:
    sample = make_sample()
    sample["captions"] = ["a dog on the left"]
    out = RandomHorizontalFlip(p=1.0, swap_left_right=False)(sample, gen(0))
    assert out["captions"] == ["a dog on the left"]
    assert torch.equal(out["image"], sample["image"].flip(-1))


# ------------------------------------------------------------------------------------------
# Edge cases shared by all transforms
# ------------------------------------------------------------------------------------------

ALL_TRANSFORMS: list[Transform] = [
    Resize(None, 64),
    Resize(80, 100),
    LargeScaleJitter(image_size=64),
    RandomHorizontalFlip(p=1.0),
    Compose([RandomHorizontalFlip(), LargeScaleJitter(image_size=64)]),
]


@pytest.mark.parametrize("transform", ALL_TRANSFORMS, ids=repr)
def test_zero_masks(transform: Transform) -> None:
    sample = make_sample()
    sample["masks"] = torch.zeros(0, 100, 150, dtype=torch.bool)
    out = transform(sample, gen(0))
    h, w = assert_valid(out, n_masks=0)
    assert out["masks"].shape == (0, h, w)


@pytest.mark.parametrize("transform", ALL_TRANSFORMS, ids=repr)
@pytest.mark.parametrize("drop", [("masks",), ("ignore_mask",), ("masks", "ignore_mask")])
def test_missing_fields(transform: Transform, drop: tuple[str, ...]) -> None:
    sample = make_sample()
    for key in drop:
        del sample[key]  # type: ignore[misc]
    out = transform(sample, gen(0))
    assert_valid(out)
    # large-scale jitter adds the frame its crops are padded to
    added = {"frame"} if "LargeScaleJitter" in repr(transform) else set()
    assert set(out) == set(sample) | added


@pytest.mark.parametrize("transform", ALL_TRANSFORMS, ids=repr)
def test_masks_without_image(transform: Transform) -> None:
    sample = make_sample()
    del sample["image"]
    out = transform(sample, gen(0))
    assert out["masks"].shape[-2:] == out["ignore_mask"].shape
    assert "image" not in out


@pytest.mark.parametrize("transform", ALL_TRANSFORMS, ids=repr)
def test_text_only_sample(transform: Transform) -> None:
    sample: Sample = {"task": "retrieval", "image_id": 1, "captions": ["a cat"]}
    out = transform(sample, gen(0))
    assert out == sample and out is not sample


@pytest.mark.parametrize("transform", ALL_TRANSFORMS, ids=repr)
def test_input_is_not_modified(transform: Transform) -> None:
    sample = make_sample()
    sample["sentences"] = ["the left one"]
    before = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in sample.items()}
    out = transform(sample, gen(0))
    assert out is not sample
    assert_same(sample, before)  # type: ignore[arg-type]
    assert sample["sentences"] == ["the left one"]


def test_mismatched_sizes_raise() -> None:
    sample = make_sample()
    sample["masks"] = torch.zeros(1, 10, 10, dtype=torch.bool)
    with pytest.raises(ValueError, match="differ in size"):
        Resize(None, 64)(sample, gen(0))


# ------------------------------------------------------------------------------------------
# Compose, config and build_transforms
# ------------------------------------------------------------------------------------------


def test_compose_is_deterministic_and_a_transform() -> None:
    sample = make_sample()
    pipeline = Compose([RandomHorizontalFlip(), LargeScaleJitter(image_size=96)])
    assert isinstance(pipeline, Transform)
    assert len(pipeline) == 2
    assert_same(pipeline(sample, gen(11)), pipeline(sample, gen(11)))
    outs = [pipeline(sample, gen(seed)) for seed in range(6)]
    for out in outs:
        assert_sample_aligned(out)
    assert len({tuple(o["image"].shape) for o in outs}) > 1
    assert_same(Compose([])(sample, gen(0)), sample)


def test_config_defaults() -> None:
    cfg = TransformConfig()
    assert (cfg.image_size, cfg.min_scale, cfg.max_scale) == (1024, 0.1, 2.0)
    assert cfg.lsj and cfg.flip and cfg.swap_left_right
    assert cfg.eval_shortest_edge is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image_size": 0}, "transforms.image_size"),
        ({"min_scale": 0.0}, "transforms.min_scale"),
        ({"min_scale": -1.0}, "transforms.min_scale"),
        ({"min_scale": 1.0, "max_scale": 0.5}, "transforms.max_scale"),
        ({"eval_shortest_edge": 0}, "transforms.eval_shortest_edge"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(field)) as info:
        TransformConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)


def test_build_train_transforms() -> None:
    cfg = TransformConfig(image_size=64)
    pipeline = build_transforms(cfg, train=True)
    assert [type(t) for t in pipeline.transforms] == [RandomHorizontalFlip, LargeScaleJitter]
    out = pipeline(make_sample(), gen(0))
    h, w = assert_valid(out)
    assert h <= 64 and w <= 64

    no_aug = build_transforms(TransformConfig(image_size=64, lsj=False, flip=False), train=True)
    assert [type(t) for t in no_aug.transforms] == [Resize]
    assert assert_valid(no_aug(make_sample(), gen(0))) == (43, 64)

    no_swap = build_transforms(TransformConfig(swap_left_right=False), train=True)
    flip = no_swap.transforms[0]
    assert isinstance(flip, RandomHorizontalFlip) and not flip.swap_left_right


def test_build_eval_transforms() -> None:
    sample = make_sample()
    out = build_transforms(TransformConfig(image_size=300), train=False)(sample, gen(0))
    assert assert_valid(out) == (200, 300)
    out = build_transforms(TransformConfig(image_size=250, eval_shortest_edge=200), train=False)(
        sample, gen(0)
    )
    assert assert_valid(out) == (167, 250)
    out = build_transforms(TransformConfig(image_size=1000, eval_shortest_edge=50), train=False)(
        sample, gen(0)
    )
    assert assert_valid(out) == (50, 75)
    # evaluation is deterministic whatever the generator
    pipeline = build_transforms(TransformConfig(image_size=128), train=False)
    assert_same(pipeline(sample, gen(0)), pipeline(sample, gen(1)))


def test_config_is_a_jsonargparse_schema() -> None:
    import jsonargparse

    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--transforms", type=TransformConfig, default=TransformConfig())
    cfg = parser.parse_args(["--transforms.image_size=512", "--transforms.eval_shortest_edge=400"])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    assert instantiate(cfg).transforms == TransformConfig(image_size=512, eval_shortest_edge=400)
    assert "smallest LSJ scale" in parser.format_help()  # field docs reach --help
    with pytest.raises(ValueError, match=re.escape("transforms.min_scale")):
        instantiate(parser.parse_args(["--transforms.min_scale=0"]))
