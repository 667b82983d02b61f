import pytest
import torch

from findlit.data.collate import collate_samples
from findlit.data.sample import Sample
from findlit.data.transforms import LargeScaleJitter


def sample(height: int, width: int, segments: int) -> Sample:
    return Sample(
        task="segmentation",
        dataset="d",
        image_id=height,
        image=torch.full((3, height, width), 7, dtype=torch.uint8),
        orig_size=(height, width),
        masks=torch.ones(segments, height, width, dtype=torch.bool),
        labels=torch.arange(segments),
        ignore_mask=torch.zeros(height, width, dtype=torch.bool),
    )


@pytest.mark.parametrize("batch_size", [1, 3])
def test_pads_to_a_multiple_of_32_with_a_padding_mask(batch_size: int) -> None:
    samples = [sample(50 + 10 * i, 70 - 5 * i, segments=i) for i in range(batch_size)]
    batch = collate_samples(samples)
    height = max(s["image"].shape[1] for s in samples)
    width = max(s["image"].shape[2] for s in samples)
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    assert batch["images"].shape == (batch_size, 3, *padded)
    assert batch["padding_mask"].shape == (batch_size, *padded)
    for row, s in enumerate(samples):
        h, w = s["image"].shape[1:]
        assert batch["image_sizes"][row] == (h, w)
        assert (batch["images"][row, :, :h, :w] == 7).all() and (batch["images"][row, :, h:] == 0).all()
        assert not batch["padding_mask"][row, :h, :w].any()
        assert batch["padding_mask"][row].sum() == padded[0] * padded[1] - h * w
        target = batch["targets"][row]
        assert target["masks"].shape == (row, *padded)
        assert target["masks"][:, :h, :w].all() and not target["masks"][:, h:, :].any()
        assert target["ignore_mask"][h:, :].all() and not target["ignore_mask"][:h, :w].any()
        assert "image" not in target
    assert batch["task"] == "segmentation" and batch["image_ids"] == [s["image_id"] for s in samples]


def test_large_scale_jitter_crops_are_padded_to_their_frame_whatever_their_batch_mates() -> None:
    generator = torch.Generator().manual_seed(0)
    lsj = LargeScaleJitter(image_size=128, min_scale=0.3, max_scale=0.6)  # every crop < 128 px
    crops = [lsj(sample(200, 160, segments=2), generator) for _ in range(3)]
    assert all(crop["frame"] == (128, 128) and max(crop["image"].shape[1:]) < 128 for crop in crops)
    together = collate_samples(crops)
    assert together["images"].shape[-2:] == (128, 128)
    for row, crop in enumerate(crops):
        alone = collate_samples([crop])  # as on a rank that got this crop alone
        assert torch.equal(alone["images"][0], together["images"][row])
        assert torch.equal(alone["padding_mask"][0], together["padding_mask"][row])
        assert torch.equal(alone["targets"][0]["masks"], together["targets"][row]["masks"])
    # without a frame, a lone small image is padded only to the next multiple of 32
    assert collate_samples([sample(40, 50, segments=1)])["images"].shape[-2:] == (64, 64)


def test_refuses_mixed_tasks() -> None:
    other = sample(32, 32, 1)
    other["task"] = "grounding"
    with pytest.raises(ValueError, match="one task"):
        collate_samples([sample(32, 32, 1), other])


def test_sample_seeds_are_kept_in_order_and_only_when_every_sample_has_one() -> None:
    samples = [sample(32, 32, 1), sample(40, 20, 2), sample(20, 40, 0)]
    for s, seed in zip(samples, (2**63 - 1, 0, 12345), strict=True):
        s["seed"] = seed
    batch = collate_samples(samples)
    assert batch["sample_seeds"] == [2**63 - 1, 0, 12345]
    assert all("seed" not in target for target in batch["targets"])
    del samples[1]["seed"]
    assert "sample_seeds" not in collate_samples(samples)
