"""Point sampling on mask logits: bilinear reads at normalised coordinates, Mask2Former's importance sampling.

Losses and matching costs on masks are computed on a few thousand points instead of every pixel
(Mask2Former, PointRend). Coordinates are normalised to [0, 1] of the padded batch frame, with
``coords[..., 0]`` along the width (x) and ``coords[..., 1]`` along the height (y), so the same
coordinates address predictions at stride 4 and targets at full resolution.

Where the random points come from (:data:`Generators`): the global generator, one generator for
a whole batch, or one per image. Training gives every image its own generators, seeded by the
image's sample seed (:func:`image_generators`): an image's points then do not depend on which
other images share its batch or its rank, so N processes draw the points that one process with
the N-fold batch draws. The pixels they address are the same only if the image's padded frame is:
large-scale jitter crops carry their frame (the crop square, which collate pads to), but other
images of varying sizes in one batch are padded to the largest, so they are framed, and thus
sampled and encoded, differently in different batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from findlit.data.sampler import mix_seed

DEFAULT_NUM_POINTS = 112 * 112
"""Points per mask (12544), Mask2Former's and FIND's ``TRAIN_NUM_POINTS``."""


Generators = torch.Generator | Sequence[torch.Generator] | None
"""The source of random points of a batch: None (the global generator), one generator shared by
the batch's images (drawn from in image order), or one generator per image."""


def image_generators(seeds: Sequence[int], stream: int, device: torch.device) -> list[torch.Generator]:
    """One generator per image on ``device``, seeded by the image's seed mixed with ``stream``.

    Args:
        seeds: per image a non-negative seed, e.g. the batch's ``sample_seeds`` (the sampler's
            per-sample seed, which also drives the image's augmentation; mixing keeps the two
            streams apart).
        stream: separates draws of one image that must differ, e.g. the decoder layer.
        device: where the points are drawn (a CUDA generator draws on the GPU).

    Returns:
        ``len(seeds)`` generators.

    """
    return [torch.Generator(device=device).manual_seed(mix_seed(int(seed), stream)) for seed in seeds]


def generator_of(generators: Generators, image: int) -> torch.Generator | None:
    """The generator that draws the points of image ``image`` of the batch (see :data:`Generators`)."""
    if generators is None or isinstance(generators, torch.Generator):
        return generators
    return generators[image]


def check_generators(generators: Generators, batch_size: int) -> None:
    """Raise if ``generators`` is a per-image sequence whose length is not ``batch_size``."""
    if generators is None or isinstance(generators, torch.Generator):
        return
    if len(generators) != batch_size:
        raise ValueError(f"{len(generators)} generators for a batch of {batch_size} images")


@dataclass(frozen=True)
class PointSampling:
    """How many points the mask losses read per matched mask, and how they are chosen.

    Args:
        num_points: points per mask.
        oversample_ratio: candidates drawn per point before the most uncertain are kept (>= 1).
        importance_sample_ratio: fraction of the points taken from the most uncertain candidates;
            the rest are uniform random.

    """

    num_points: int = DEFAULT_NUM_POINTS
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of ``inputs`` at normalised coordinates (``grid_sample``, ``align_corners=False``).

    Args:
        inputs: float[N, C, H, W] (bool or integer inputs are read as float32).
        coords: float[N, P, 2] in [0, 1]; (x, y) of the frame; points outside read 0.

    Returns:
        float[N, C, P] in the dtype of ``inputs``.

    """
    if inputs.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"point_sample wants inputs [N,C,H,W] and coords [N,P,2]; got {tuple(inputs.shape)} "
            f"and {tuple(coords.shape)}"
        )
    if not inputs.is_floating_point():
        inputs = inputs.float()
    # grid_sample wants input and grid in one dtype (autocast may hand us bf16 logits)
    grid = (2.0 * coords - 1.0).to(inputs.dtype).unsqueeze(2)
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


@torch.no_grad()
def uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mask2Former's importance sampling: points where the logit is closest to 0, plus uniform ones.

    Draws ``num_points * oversample_ratio`` uniform candidates, keeps the
    ``importance_sample_ratio * num_points`` with the smallest ``|logit|`` and fills the rest with
    fresh uniform points. No gradient flows through the choice.

    Args:
        logits: float[N, 1, H, W] mask logits (class-agnostic).
        num_points: P, points per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].
        generator: a generator on ``logits.device``, for reproducible points.

    Returns:
        float32[N, P, 2] coordinates in [0, 1].

    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"uncertain_points wants logits [N,1,H,W]; got {tuple(logits.shape)}")
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"need oversample_ratio >= 1 and importance_sample_ratio in [0, 1]; "
            f"got {oversample_ratio} and {importance_sample_ratio}"
        )
    n, device = logits.shape[0], logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = torch.rand(n, num_candidates, 2, generator=generator, device=device)
    certainty = point_sample(logits.float(), candidates)[:, 0].abs()  # [N, candidates]
    keep = certainty.topk(num_uncertain, dim=1, largest=False).indices
    chosen = torch.gather(candidates, 1, keep.unsqueeze(-1).expand(-1, -1, 2))
    uniform = torch.rand(n, num_points - num_uncertain, 2, generator=generator, device=device)
    return torch.cat([chosen, uniform], dim=1)
