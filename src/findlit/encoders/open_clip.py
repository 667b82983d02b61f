"""open_clip towers as frozen encoders: ``open_clip_vision`` (a feature pyramid) and ``open_clip_text``.

Weights come from ``pretrained``: an open_clip tag (downloads, for users with a hub), a local
checkpoint file, or None for a random initialisation (tests, benchmarks). A custom architecture is
given as ``model_config`` (open_clip's model-config JSON format) and registered with open_clip
under ``model``, so the factory, the tokenizer and the checkpoint loader all see it.

Vision towers:

- ViT (open_clip's ``VisionTransformer``): patch embedding + transformer blocks, run at the image's
  own size with the position embedding interpolated (bicubic, as open_clip does when it loads a
  checkpoint at another size); the class token is dropped and the tokens of the chosen block(s)
  become a grid, normalised by the tower's final LayerNorm (``normalize``), and the parameter-free
  pyramid of :mod:`findlit.encoders.pyramid` makes res2..res5. Patch sizes that divide 32 give a
  grid at stride = patch; other patch sizes (e.g. 14) see the image resized by ``patch / 16`` so
  their grid is exactly stride 16.
- ModifiedResNet (the "RN50"-style towers) and timm trunks (ConvNeXt...): stage outputs at strides
  4, 8, 16 and 32, as they are.

Images are normalised with the model's mean/std (open_clip's preprocess config; a tag may set its
own).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F  # noqa: N812
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import Tensor, nn

from findlit.encoders.base import DTYPES, STRIDES, TextEmbeddings, TextEncoder, VisionEncoder
from findlit.encoders.pyramid import PYRAMID_ID, layerwise_feature_pyramid, simple_feature_pyramid
from findlit.encoders.registry import register
from findlit.encoders.spec import EncoderSpec
from findlit.errors import ConfigError

_REQUIRED_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _registry_name(model: str) -> str:
    # open_clip looks built-in names up with "/" replaced by "-"; "hf-hub:org/repo" names stay as they are
    return model if ":" in model else model.replace("/", "-")


def load_model_config(model_config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A model config from a dict or a JSON file, checked for open_clip's required keys.

    Args:
        model_config: a dict in open_clip's model-config format (``embed_dim``, ``vision_cfg``,
            ``text_cfg``...) or the path of such a JSON file.

    Returns:
        The config as plain JSON types (tuples become lists, as in a file).

    """
    if isinstance(model_config, (str, Path)):
        path = Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {path}")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"open_clip model config {path} is not valid JSON: {error}") from error
    else:
        # a JSON round trip makes a dict given in Python compare equal to the same config read from a file
        config = json.loads(json.dumps(dict(model_config)))
    if not isinstance(config, dict):
        raise ConfigError(f"model_config should be a JSON object, got {type(config).__name__}")
    missing = [key for key in _REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise ConfigError(f"model_config lacks the open_clip key(s) {missing}")
    return config


def register_model_config(model: str, config: Mapping[str, Any]) -> None:
    """Make ``config`` an open_clip model named ``model`` (a no-op when it is already that config).

    open_clip keeps one process-wide table of named configs, so a name that already holds another
    config is an error: silently replacing, say, ``ViT-B-16`` would change every later user of it.
    """
    name = _registry_name(model)
    existing = open_clip.get_model_config(name)
    if existing is not None:
        if existing != config:
            raise ConfigError(
                f"open_clip model {model!r} already exists with another config; "
                "give model_config another name"
            )
        return
    # open_clip registers configs from files; the table keeps them after the file is gone
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    if open_clip.get_model_config(name) != config:
        raise ConfigError(f"open_clip did not register model_config as {model!r}")


def _resolve_pretrained(model: str, pretrained: str | None) -> str | None:
    """``pretrained`` as open_clip should see it; a path that is not a file is an error naming it."""
    if pretrained is None:
        return None
    if Path(pretrained).is_file():
        return str(Path(pretrained).resolve())
    tags = open_clip.list_pretrained_tags_by_model(_registry_name(model))
    if pretrained.lower() in {tag.lower() for tag in tags}:  # open_clip matches tags case-insensitively
        return pretrained
    raise FileNotFoundError(
        f"open_clip checkpoint not found: {pretrained} (no such file, and not a pretrained tag of {model!r}; "
        f"its tags: {tags})"
    )


def create_clip(
    model: str,
    pretrained: str | None = None,
    model_config: Mapping[str, Any] | str | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """Build an open_clip model (CLIP or CustomTextCLIP) with its weights, on the CPU, in float32.

    Args:
        model: open_clip model name (built-in, or the name ``model_config`` is registered under).
        pretrained: an open_clip pretrained tag, a local checkpoint file, or None (random weights).
        model_config: a custom model config (dict or JSON path), registered under ``model`` first.
        input_size: open_clip's ``force_image_size``: the side the position embedding is made for.

    Returns:
        The model, with ``visual.preprocess_cfg`` holding its mean/std.

    """
    if model_config is not None:
        register_model_config(model, load_model_config(model_config))
    elif open_clip.get_model_config(_registry_name(model)) is None and ":" not in model:
        raise ConfigError(
            f"unknown open_clip model {model!r}; give model_config or one of open_clip.list_models()"
        )
    checkpoint = _resolve_pretrained(model, pretrained)
    try:
        return open_clip.create_model(model, pretrained=checkpoint, force_image_size=input_size)
    except Exception as error:
        if checkpoint is not None and Path(checkpoint).is_file():
            raise RuntimeError(
                f"could not load open_clip checkpoint {checkpoint} into {model!r}: {error}"
            ) from error
        raise


def _config_fingerprint(model: str) -> str | None:
    config = open_clip.get_model_config(_registry_name(model))
    if config is None:
        return None
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _check_dtype_name(compute_dtype: str) -> None:
    # FrozenEncoder checks it too, but only after the (possibly slow) model build
    if compute_dtype not in DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {compute_dtype!r}")


@register("open_clip_vision")
class OpenClipVisionEncoder(VisionEncoder):
    """An open_clip image tower as a frozen ``res2..res5`` pyramid.

    Args:
        model: open_clip model name, e.g. ``"ViT-B-16"``, ``"RN50"``, ``"convnext_base"``, or the name
            of ``model_config``.
        pretrained: an open_clip pretrained tag (downloads: for users with a hub), a local checkpoint
            file of the whole open_clip model, or None for random weights.
        model_config: a custom architecture: a dict in open_clip's model-config JSON format or the path
            of such a JSON file; registered with open_clip under ``model``.
        vit_layers: ViT towers only: which block outputs to read (0-based, negative counts from the
            end). One index feeds the whole simple pyramid; four indices feed res2, res3, res4, res5
            in that order (each resampled to its level). None: the last block.
        input_size: the side the ViT position embedding is made for (open_clip's
            ``force_image_size``; a checkpoint's embedding is resized once at load). Images of other
            sizes are still accepted, with the embedding interpolated per call. None: the config's
            ``image_size``.
        normalize: ViT towers only: apply the tower's final LayerNorm (``ln_post``) to the block
            outputs. CLIP's residual stream has a few channels orders of magnitude above the rest;
            the model's own norm puts them on the scale the pooled embedding sees.
        compute_dtype: ``float32``, ``bfloat16`` or ``float16`` (autocast); outputs are float32.

    ``forward(images: float[B,3,H,W] in 0..1) -> {"res2": float[B,C,H/4,W/4], ..., "res5":
    float[B,C,H/32,W/32]}``; ``channels`` gives C per level (the width for a ViT).

    """

    def __init__(
        self,
        model: str = "ViT-B-16",
        pretrained: str | None = None,
        model_config: dict[str, Any] | str | None = None,
        vit_layers: tuple[int, ...] | None = None,
        input_size: int | None = None,
        normalize: bool = True,
        compute_dtype: str = "float32",
    ):
        _check_dtype_name(compute_dtype)
        if input_size is not None and input_size <= 0:
            raise ConfigError(f"input_size must be positive, got {input_size}")
        clip = create_clip(model, pretrained, model_config, input_size)
        visual: Any = clip.visual
        preprocess = getattr(visual, "preprocess_cfg", {})
        del clip  # the text tower is not needed: let it go
        super().__init__(visual, compute_dtype)
        self.model_name = model
        self.mean = tuple(float(v) for v in preprocess.get("mean", _OPENAI_MEAN))
        self.std = tuple(float(v) for v in preprocess.get("std", _OPENAI_STD))
        self._config_fingerprint = _config_fingerprint(model)
        self.normalize = normalize
        self.vit_layers: tuple[int, ...] | None = None
        self._native_size: int | None = None
        # a timm trunk's intermediate indices for res2..res5
        self._timm_indices: list[int] = []
        if isinstance(visual, VisionTransformer):
            self.tower = "vit"
            self._setup_vit(visual, vit_layers)
        elif vit_layers is not None:
            raise ConfigError(f"vit_layers applies to ViT towers; {model!r} has a {type(visual).__name__}")
        elif isinstance(visual, ModifiedResNet):
            self.tower = "modified_resnet"
            layers = (visual.layer1, visual.layer2, visual.layer3, visual.layer4)
            self.channels = {
                level: int(layer[-1].bn3.num_features) for level, layer in zip(STRIDES, layers, strict=True)
            }
        elif isinstance(visual, TimmModel):
            self.tower = f"timm:{type(visual.trunk).__name__}"
            self._setup_timm(visual)
        else:
            raise ConfigError(
                f"open_clip_vision does not know the vision tower {type(visual).__name__} of {model!r}"
            )

    # --- construction -------------------------------------------------------------------------

    def _setup_vit(self, visual: VisionTransformer, vit_layers: tuple[int, ...] | None) -> None:
        depth = len(visual.transformer.resblocks)
        chosen = tuple(vit_layers) if vit_layers is not None else (depth - 1,)
        if len(chosen) not in (1, len(STRIDES)):
            raise ConfigError(f"vit_layers takes 1 or {len(STRIDES)} block indices, got {list(chosen)}")
        if any(not -depth <= index < depth for index in chosen):
            raise ConfigError(f"vit_layers {list(chosen)} out of range for a ViT of {depth} blocks")
        self.vit_layers = tuple(index % depth for index in chosen)
        width = int(visual.class_embedding.shape[-1])
        if self.normalize and tuple(visual.ln_post.normalized_shape) != (width,):
            # attentional-pool towers (CoCa) put ln_post after the pooler, at another width
            raise ConfigError(f"{self.model_name!r} has no token-wide final norm; set normalize=False")
        patch_h, patch_w = visual.patch_size
        if patch_h != patch_w:
            raise ConfigError(f"non-square patches {visual.patch_size} are not supported")
        self.patch = int(patch_h)
        # patches that do not divide 32 (e.g. 14) are run on images resized so the grid is stride 16
        self.stride = self.patch if 32 % self.patch == 0 else 16
        self._native_size = int(visual.image_size[0])
        self.channels = dict.fromkeys(STRIDES, width)

    def _setup_timm(self, visual: TimmModel) -> None:
        trunk = visual.trunk
        info = getattr(trunk, "feature_info", None)
        if not hasattr(trunk, "forward_intermediates") or not info:
            raise ConfigError(f"timm trunk {type(trunk).__name__} gives no intermediate features")
        entries = [dict(entry) for entry in info]
        by_stride: dict[int, int] = {}
        for index, entry in enumerate(entries):
            by_stride[int(entry["reduction"])] = index  # the last stage at each stride
        missing = [stride for stride in STRIDES.values() if stride not in by_stride]
        if missing:
            raise ConfigError(
                f"timm trunk {type(trunk).__name__} has no stage at stride(s) {missing}; "
                "open_clip_vision needs a hierarchical trunk (ConvNeXt, ResNet...)"
            )
        self._timm_indices = [by_stride[stride] for stride in STRIDES.values()]
        self.channels = {
            level: int(entries[index]["num_chs"])
            for level, index in zip(STRIDES, self._timm_indices, strict=True)
        }

    # --- forward ------------------------------------------------------------------------------

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """float[B,3,H,W] in 0..1 -> ``res2..res5`` (float[B,C_l,H/s,W/s])."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        pixels = (images - mean) / std
        if self.tower == "vit":
            return self._encode_vit(pixels)
        if self.tower == "modified_resnet":
            return self._encode_resnet(pixels)
        return self._encode_timm(pixels)

    def _position_embedding(self, visual: VisionTransformer, grid: tuple[int, int]) -> Tensor:
        """float[1+h*w,C]: the class position plus the patch positions interpolated to ``grid``."""
        embedding = visual.positional_embedding
        native = tuple(int(side) for side in visual.grid_size)
        if native == grid:
            return embedding
        width = embedding.shape[-1]
        patches = embedding[1:].reshape(1, native[0], native[1], width).permute(0, 3, 1, 2)
        # bicubic + antialias: what open_clip's resize_pos_embed does when it loads at another size
        patches = F.interpolate(
            patches.float(), size=grid, mode="bicubic", antialias=True, align_corners=False
        )
        patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width).to(embedding.dtype)
        return torch.cat([embedding[:1], patches], dim=0)

    def _encode_vit(self, pixels: Tensor) -> dict[str, Tensor]:
        visual = self.model
        assert isinstance(visual, VisionTransformer) and self.vit_layers is not None
        height, width = pixels.shape[-2:]
        if self.stride != self.patch:
            size = (height // 16 * self.patch, width // 16 * self.patch)
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = visual.conv1(pixels)  # [B, C, h, w]
        batch, channels, grid_h, grid_w = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1) + self._position_embedding(visual, (grid_h, grid_w)).to(x.dtype)
        x = visual.ln_pre(visual.patch_dropout(x))  # [B, 1+h*w, C]
        transformer = visual.transformer
        # open_clip before 2.24 ran its blocks sequence-first
        batch_first = getattr(transformer, "batch_first", False)
        if not batch_first:
            x = x.transpose(0, 1)
        wanted = set(self.vit_layers)
        outputs: dict[int, Tensor] = {}
        for index, block in enumerate(transformer.resblocks[: max(wanted) + 1]):
            x = block(x)
            if index in wanted:
                outputs[index] = x if batch_first else x.transpose(0, 1)
        grids = []
        for index in self.vit_layers:
            tokens = outputs[index]
            if self.normalize:
                tokens = visual.ln_post(tokens)
            tokens = tokens[:, 1:]  # drop the class token
            grids.append(tokens.transpose(1, 2).reshape(batch, channels, grid_h, grid_w))
        if len(grids) == 1:
            return simple_feature_pyramid(grids[0], self.stride)
        return layerwise_feature_pyramid(grids, self.stride)

    def _encode_resnet(self, pixels: Tensor) -> dict[str, Tensor]:
        visual = self.model
        assert isinstance(visual, ModifiedResNet)
        x = visual.stem(pixels)  # stride 4
        stages = (visual.layer1, visual.layer2, visual.layer3, visual.layer4)
        features = {}
        for level, layer in zip(STRIDES, stages, strict=True):
            x = layer(x)
            features[level] = x
        return features

    def _encode_timm(self, pixels: Tensor) -> dict[str, Tensor]:
        visual = self.model
        assert isinstance(visual, TimmModel)
        maps = visual.trunk.forward_intermediates(
            pixels, indices=self._timm_indices, intermediates_only=True, stop_early=True
        )
        features = dict(zip(STRIDES, maps, strict=True))
        for level, stride in STRIDES.items():
            expected = (pixels.shape[-2] // stride, pixels.shape[-1] // stride)
            if tuple(features[level].shape[-2:]) != expected:
                size = tuple(features[level].shape[-2:])
                raise RuntimeError(f"timm trunk gave {level} of size {size}, expected {expected}")
        return features

    # --- identity -----------------------------------------------------------------------------

    @property
    def spec(self) -> EncoderSpec:
        """Name ``open_clip/<model>``; any input size (multiple of 32) is accepted."""
        options: dict[str, Any] = {
            "tower": self.tower,
            "mean": list(self.mean),
            "std": list(self.std),
            "config": self._config_fingerprint,
        }
        if self.tower == "vit":
            options |= {
                "vit_layers": list(self.vit_layers or ()),
                "normalize": self.normalize,
                "native_size": self._native_size,
                "pyramid": PYRAMID_ID,
            }
        return EncoderSpec(
            kind="vision",
            name=f"open_clip/{self.model_name}",
            weights_digest=self.weights_digest(),
            input_size=None,
            dtype=self.compute_dtype,
            options=options,
        )


@register("open_clip_text")
class OpenClipTextEncoder(TextEncoder):
    """An open_clip text tower as a frozen per-token + sentence encoder.

    Args:
        model: open_clip model name, or the name of ``model_config``.
        pretrained: an open_clip pretrained tag, a local checkpoint file of the whole open_clip model,
            or None for random weights.
        model_config: a custom architecture (dict or JSON path), registered under ``model``.
        compute_dtype: ``float32``, ``bfloat16`` or ``float16`` (autocast); outputs are float32.

    ``forward(texts) -> TextEmbeddings(tokens: float[T,L,D], mask: bool[T,L], sentence: float[T,D])``:
    ``sentence`` is the model's own text embedding (``encode_text``, after the text projection, not
    L2-normalised); ``tokens`` are the hidden states after the final LayerNorm, passed through the
    same text projection so that tokens and sentence share D (= ``dim``, the joint embedding size).
    ``mask`` is True from the start token up to and including the end-of-text token; L is the
    longest such span in the call. Every string is tokenised to the full context length, as in
    training, so its embeddings never depend on the other strings in the call.

    """

    def __init__(
        self,
        model: str = "ViT-B-16",
        pretrained: str | None = None,
        model_config: dict[str, Any] | str | None = None,
        compute_dtype: str = "float32",
    ):
        _check_dtype_name(compute_dtype)
        clip = create_clip(model, pretrained, model_config)
        if not hasattr(clip, "forward_intermediates"):
            raise RuntimeError("open_clip_text needs open_clip_torch with forward_intermediates (>= 2.28)")
        text = getattr(clip, "text", None)
        if text is not None and not isinstance(text, TextTransformer):
            raise ConfigError(
                f"{model!r} has a {type(text).__name__} text tower; open_clip_text reads open_clip's own "
                "TextTransformer (use the hf_text encoder for Hugging Face towers)"
            )
        # the image tower is not needed: drop it (and its weights from the digest)
        clip.visual = nn.Identity()
        super().__init__(clip, compute_dtype)
        self.model_name = model
        tower = self._tower()
        self.context_length = int(tower.context_length)
        self.tokenizer = open_clip.get_tokenizer(_registry_name(model), context_length=self.context_length)
        self._eot_id: int | None = getattr(self.tokenizer, "eot_token_id", None)
        self._pad_id = int(getattr(tower, "pad_id", 0)) if text is not None else 0
        self._config_fingerprint = _config_fingerprint(model)
        projection = tower.text_projection
        if isinstance(projection, nn.Linear):
            self.dim = int(projection.out_features)
        elif projection is not None:
            self.dim = int(projection.shape[-1])
        else:
            self.dim = int(tower.ln_final.normalized_shape[0])

    def _tower(self) -> Any:
        """The module holding the text parts: CustomTextCLIP's ``text``, or CLIP itself."""
        text = getattr(self.model, "text", None)
        return text if text is not None else self.model

    def _project(self, hidden: Tensor) -> Tensor:
        """float[T,L,W] -> float[T,L,D] through the text projection (identity without one)."""
        projection = self._tower().text_projection
        if projection is None:
            return hidden
        if isinstance(projection, nn.Linear):
            return projection(hidden)
        return hidden @ projection.to(hidden.dtype)

    def _real_tokens(self, ids: Tensor) -> Tensor:
        """bool[T,context]: True from the first token up to and including the end-of-text token."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        if self._eot_id is not None:
            is_eot = ids == self._eot_id
            last = torch.where(is_eot.any(1), is_eot.int().argmax(1), ids.shape[1] - 1)
            return positions.unsqueeze(0) <= last.unsqueeze(1)
        return ids != self._pad_id

    def encode(self, texts: list[str]) -> TextEmbeddings:
        """Strings -> per-token states, mask and sentence vectors (see the class docstring)."""
        if not texts:
            tokens = torch.zeros(0, 0, self.dim, device=self.device)
            mask = torch.zeros(0, 0, dtype=torch.bool, device=self.device)
            return TextEmbeddings(tokens, mask, torch.zeros(0, self.dim, device=self.device))
        ids = self.tokenizer(texts, context_length=self.context_length).to(self.device)  # [T, context]
        mask = self._real_tokens(ids)
        clip: Any = self.model
        output = clip.forward_intermediates(
            text=ids, text_indices=1, normalize_intermediates=True, normalize=False
        )
        hidden = output["text_intermediates"][-1]  # [T, context, W], after ln_final
        length = int(mask.sum(1).max())
        tokens = self._project(hidden[:, :length])
        return TextEmbeddings(tokens=tokens, mask=mask[:, :length], sentence=output["text_features"])

    @property
    def spec(self) -> EncoderSpec:
        """Name ``open_clip/<model>``; ``input_size`` is the context length."""
        return EncoderSpec(
            kind="text",
            name=f"open_clip/{self.model_name}",
            weights_digest=self.weights_digest(),
            input_size=self.context_length,
            dtype=self.compute_dtype,
            options={"tokens": "ln_final+text_projection", "config": self._config_fingerprint},
        )
