"""Segment Anything's image encoder as a frozen ``res2..res5`` pyramid (registered as ``sam``).

Input policy: SAM's own preprocessing, then back to the contract's grid. SAM's encoder was trained
on one canvas only: the image resized so its longest side is ``image_size`` (1024), normalised, and
zero-padded at the bottom and right to a square. Its absolute position embedding is learned for
that canvas, and SAM always runs there. So this adapter does the same for any ``[B,3,H,W]`` batch
(H, W multiples of 32):

1. resize so the longest side is ``image_size`` (bilinear, antialiased; SAM rounds the other side);
2. normalise with SAM's pixel mean/std (0..255 scale) and zero-pad to ``image_size`` squared;
3. run the encoder (stride 16; the neck gives ``out_chans`` = 256 channels);
4. crop the features to the tokens that cover the image, and, only when the image was resized,
   resample that crop (bilinear) to ``H/16 x W/16``;
5. build res2..res5 with the parameter-free pyramid of :mod:`findlit.encoders.pyramid`.

A batch whose longest side already is ``image_size`` (the usual large-scale-jitter pipelines at
1024) is therefore exactly SAM's features, cropped, with no resampling. Features always cost one
``image_size``-squared pass, whatever H and W are. The alternative, running at H x W with the
position embedding interpolated, would be cheaper for small images but feeds SAM position
embeddings and object scales it never saw.

``image_size`` other than 1024 builds the encoder for that canvas; an official checkpoint's
position embedding (bicubic) and global-attention relative position tables (linear, as SAM itself
interpolates them) are resized at load.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from segment_anything.modeling import ImageEncoderViT
from torch import Tensor, nn

from findlit.encoders.base import DTYPES, STRIDES, VisionEncoder
from findlit.encoders.pyramid import PYRAMID_ID, simple_feature_pyramid
from findlit.encoders.registry import register
from findlit.encoders.spec import EncoderSpec
from findlit.errors import ConfigError
from findlit.torch_files import load_torch_file

SamVariant = Literal["vit_b", "vit_l", "vit_h"]

PIXEL_MEAN = (123.675, 116.28, 103.53)
"""SAM's pixel mean on the 0..255 scale."""
PIXEL_STD = (58.395, 57.12, 57.375)
"""SAM's pixel std on the 0..255 scale."""

# The image encoders of the official checkpoints (segment_anything.build_sam).
VARIANTS: dict[str, dict[str, Any]] = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
}
_COMMON: dict[str, Any] = {
    "patch_size": 16,
    "mlp_ratio": 4.0,
    "out_chans": 256,
    "qkv_bias": True,
    "use_rel_pos": True,
    "window_size": 14,
}
# constructor arguments that are not plain config values
_NOT_OPTIONS = {"self", "norm_layer", "act_layer", "in_chans"}
POLICY = "resize-longest-pad-crop"


def encoder_arguments(
    variant: str, image_size: int, encoder_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``ImageEncoderViT`` for a variant, with overrides checked.

    Args:
        variant: ``vit_b``, ``vit_l`` or ``vit_h``.
        image_size: the side of the square canvas (``img_size``).
        encoder_options: overrides of ``ImageEncoderViT`` arguments (``depth``, ``embed_dim``,
            ``num_heads``, ``global_attn_indexes``, ``out_chans``, ``window_size``...), e.g. a tiny
            encoder for tests. ``img_size``, if given, must equal ``image_size``.

    """
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    options = dict(encoder_options or {})
    accepted = set(inspect.signature(ImageEncoderViT.__init__).parameters) - _NOT_OPTIONS
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"encoder_options has no option(s) {', '.join(f'encoder_options.{k}' for k in unknown)}; "
            f"it accepts {sorted(accepted)}"
        )
    if "img_size" in options and options.pop("img_size") != image_size:
        raise ConfigError("encoder_options.img_size differs from image_size; set image_size only")
    arguments = {**_COMMON, **VARIANTS[variant], **options, "img_size": image_size}
    arguments["global_attn_indexes"] = tuple(int(i) for i in arguments["global_attn_indexes"])
    if any(not 0 <= i < arguments["depth"] for i in arguments["global_attn_indexes"]):
        raise ConfigError(
            f"global_attn_indexes {list(arguments['global_attn_indexes'])} out of range for depth "
            f"{arguments['depth']}"
        )
    patch = arguments["patch_size"]
    if 32 % patch:
        raise ConfigError(f"patch_size must divide 32, got {patch}")
    if image_size <= 0 or image_size % 32:
        raise ConfigError(f"image_size must be a positive multiple of 32, got {image_size}")
    return arguments


def read_state_dict(checkpoint: str | Path) -> dict[str, Tensor]:
    """The image-encoder state dict in a SAM checkpoint file.

    Accepts the official full-SAM state dict (``image_encoder.*`` keys are taken, the prompt encoder
    and mask decoder ignored), the same wrapped under ``"model"`` or ``"state_dict"``, or a state
    dict of the image encoder alone.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a torch.save file, truncated, or holding code (:func:`load_torch_file`).
        RuntimeError: the file holds something other than a state dict of tensors.

    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    loaded = load_torch_file(path, what="SAM checkpoint")  # data only; one line per kind of damage
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise RuntimeError(f"SAM checkpoint {path} is not a state dict of tensors")
    prefix = "image_encoder."
    if any(key.startswith(prefix) for key in loaded):
        return {key[len(prefix) :]: value for key, value in loaded.items() if key.startswith(prefix)}
    return dict(loaded)


def fit_state_dict(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Resize position tables of a checkpoint made for another canvas to ``model``'s.

    ``pos_embed`` float[1,G,G,C] -> [1,g,g,C] (bicubic); ``*.rel_pos_h|w`` float[2G-1,c] ->
    [2g-1,c] (linear, as SAM's ``get_rel_pos`` does). Other tensors are left for
    ``load_state_dict`` to check.
    """
    target = model.state_dict()
    fitted = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        shape = target[key].shape
        if key == "pos_embed" and value.dim() == 4 and value.shape[-1] == shape[-1]:
            grid = value.permute(0, 3, 1, 2).float()
            grid = F.interpolate(
                grid, size=tuple(shape[1:3]), mode="bicubic", antialias=True, align_corners=False
            )
            fitted[key] = grid.permute(0, 2, 3, 1).to(value.dtype)
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.dim() == 2 and value.shape[1] == shape[1]:
            table = F.interpolate(value.float().t().unsqueeze(0), size=shape[0], mode="linear")
            fitted[key] = table[0].t().to(value.dtype)
    return fitted


@register("sam")
class SamVisionEncoder(VisionEncoder):
    """SAM's image encoder (ViT + neck) as a frozen ``res2..res5`` pyramid.

    Args:
        variant: ``vit_b``, ``vit_l`` or ``vit_h`` (the official encoders).
        checkpoint: a local SAM checkpoint (``.pth``): the official full-SAM state dict (its
            ``image_encoder.`` keys are used) or a state dict of the image encoder alone. None:
            random weights (tests, benchmarks).
        image_size: the side of SAM's square canvas (1024 for the official models). Images are
            resized so their longest side is ``image_size`` and padded to the square (see the
            module docstring); a multiple of 32.
        compute_dtype: ``float32``, ``bfloat16`` or ``float16`` (autocast); outputs are float32.
        encoder_options: overrides of ``segment_anything``'s ``ImageEncoderViT`` arguments
            (``depth``, ``embed_dim``, ``num_heads``, ``global_attn_indexes``, ``out_chans``,
            ``window_size``...), e.g. a tiny encoder for tests.

    ``forward(images: float[B,3,H,W] in 0..1) -> {"res2": float[B,C,H/4,W/4], ..., "res5":
    float[B,C,H/32,W/32]}`` with C = ``out_chans`` (256) at every level.

    """

    def __init__(
        self,
        variant: SamVariant = "vit_b",
        checkpoint: str | None = None,
        image_size: int = 1024,
        compute_dtype: str = "float32",
        encoder_options: dict[str, Any] | None = None,
    ):
        if compute_dtype not in DTYPES:
            raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {compute_dtype!r}")
        arguments = encoder_arguments(variant, image_size, encoder_options)
        model = ImageEncoderViT(**arguments, norm_layer=partial(nn.LayerNorm, eps=1e-6))
        if checkpoint is not None:
            state = fit_state_dict(read_state_dict(checkpoint), model)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as error:
                raise RuntimeError(
                    f"SAM checkpoint {checkpoint} does not fit the {variant} image encoder "
                    f"(encoder_options {encoder_options or {}}): {error}"
                ) from error
        super().__init__(model, compute_dtype)
        self.variant = variant
        self.image_size = image_size
        # as JSON types (tuples -> lists), so that the spec survives its own to_dict/from_dict round trip
        self.encoder_options: dict[str, Any] = json.loads(json.dumps(dict(encoder_options or {})))
        self.stride = int(arguments["patch_size"])
        self.channels = dict.fromkeys(STRIDES, int(arguments["out_chans"]))

    def canvas_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) an H x W image is resized to before padding (SAM's ResizeLongestSide)."""
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """float[B,3,H,W] in 0..1 -> ``res2..res5`` with ``out_chans`` channels (see the module docstring)."""
        height, width = images.shape[-2:]
        resized = self.canvas_shape(height, width)
        if resized != (height, width):
            images = F.interpolate(images, size=resized, mode="bilinear", align_corners=False, antialias=True)
        # 0..1 -> SAM's normalisation on the 0..255 scale; padding after it is zero, as in SAM
        mean = torch.tensor(PIXEL_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1) / 255
        std = torch.tensor(PIXEL_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1) / 255
        pixels = (images - mean) / std
        pixels = F.pad(pixels, (0, self.image_size - resized[1], 0, self.image_size - resized[0]))
        features = self.model(pixels)  # [B, C, S/16, S/16]
        rows, cols = math.ceil(resized[0] / self.stride), math.ceil(resized[1] / self.stride)
        features = features[:, :, :rows, :cols]
        target = (height // self.stride, width // self.stride)
        if (rows, cols) != target:
            features = F.interpolate(
                features, size=target, mode="bilinear", align_corners=False, antialias=True
            )
        return simple_feature_pyramid(features, self.stride)

    @property
    def spec(self) -> EncoderSpec:
        """Name ``sam/<variant>``; ``input_size`` is the canvas side the encoder always runs at."""
        return EncoderSpec(
            kind="vision",
            name=f"sam/{self.variant}",
            weights_digest=self.weights_digest(),
            input_size=self.image_size,
            dtype=self.compute_dtype,
            options={
                "policy": POLICY,
                "pyramid": PYRAMID_ID,
                "encoder_options": self.encoder_options,
                "mean": list(PIXEL_MEAN),
                "std": list(PIXEL_STD),
            },
        )
