"""Benchmark 1: forward+backward of the FIND interface's decoder vs transformers' Mask2Former decoder.

    .venv/bin/python scripts/bench/interface_vs_peer.py [--quick] [--widths 256 512] [--repeats 5]

What is compared (decoder to decoder, same inputs, random weights, fp32, dropout 0):

- inputs, shared by both: 3 feature levels of width D at strides 32, 16, 8 and mask features of
  width D at stride 4 for a batch of 2 images at 512 px, leaf tensors with ``requires_grad`` (so
  both backward passes also produce the gradients a pixel decoder would receive);
- theirs: ``Mask2FormerTransformerModule`` (100 queries, 9 masked-attention layers, 8 heads, FFN
  2048, its mask predictor before and after every layer, sine positions and level embeddings) plus
  the class head ``Linear(D, 134)`` of ``Mask2FormerForUniversalSegmentation`` on all 10
  intermediate states;
- ours, ``FINDInterface`` (same sizes) with its pixel decoder replaced by a stub returning the
  shared inputs (positions precomputed once), computing at every layer the semantic projection of
  every embedding and, like theirs, class logits over the ``--classes`` names plus no object:

  - ``ours_sentences`` (the goal's row; APE's sentence-level class embeddings, what
    ``configs/demo.yaml`` uses): 100 object proposals and the image query in the decoder; the class
    embeddings are the names' pooled text vectors (width 384) through the interface's language and
    semantic projections, outside the decoder;
  - ``ours_queries`` (FIND's class queries, reported): the decoder also carries one class query per
    name with its prompt tokens (1..4 each), and the class logits are against those queries.

Loss: the plain sum of the means of every output (mask logits, class logits, embeddings) of every
layer, so the criterion is not timed. Steps alternate ours_sentences, ours_queries, theirs after
warm-up. Ratio: median(ours_sentences) / median(theirs) per width (goal <= 1.0 at every width);
median(ours_queries) / median(theirs) is reported beside it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from _common import alternate, finish, paired_ratios, profile, spread, summary
from torch import Tensor, nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerTransformerModule

from findlit.interface import FINDInterface, InterfacePrompts, PromptTokens
from findlit.interface.pixel_decoder import PixelDecoderOutput, PositionEmbeddingSine

TEXT_DIM = 384
NUM_LABELS = 133  # COCO panoptic; the class head has NUM_LABELS + 1 outputs (no object)
LEVEL_STRIDES = (32, 16, 8)


class FixedPixelDecoder(nn.Module):
    """Stands in for the pixel decoder: returns the same (shared) decoder inputs every call."""

    def __init__(self, levels: list[Tensor], mask_features: Tensor, hidden: int):
        super().__init__()
        self.levels = levels
        self.mask_features = mask_features
        position = PositionEmbeddingSine(hidden // 2)
        self.positions = [position(level.detach()) for level in levels]
        self.level_embed = nn.Embedding(len(levels), hidden)

    def forward(self, features: object, padding_mask: Tensor | None = None) -> PixelDecoderOutput:
        # the benchmark's images fill their frame: no padding mask is ever passed
        return PixelDecoderOutput(
            mask_features=self.mask_features,
            levels=self.levels,
            positions=self.positions,
            level_embeddings=self.level_embed.weight,
        )


def decoder_inputs(hidden: int, size: int, batch: int, seed: int = 0) -> tuple[list[Tensor], Tensor]:
    """3 levels float[B,D,h,w] (strides 32, 16, 8) and mask features float[B,D,H/4,W/4], leaves."""
    generator = torch.Generator().manual_seed(seed)
    levels = [
        torch.randn(batch, hidden, size // s, size // s, generator=generator).requires_grad_()
        for s in LEVEL_STRIDES
    ]
    mask_features = torch.randn(batch, hidden, size // 4, size // 4, generator=generator).requires_grad_()
    return levels, mask_features


def segmentation_prompts(classes: int, max_tokens: int = 4, seed: int = 0) -> InterfacePrompts:
    """100 object proposals, the image query and ``classes`` class-name prompts (1..max_tokens tokens)."""
    learned: dict[str, int | Tensor] = {"proposals.vision.object": 100, "queries.vision.image": 1}
    if not classes:
        return InterfacePrompts(learned=learned)
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_tokens + 1, (classes,), generator=generator)
    mask = torch.arange(max_tokens)[None] < lengths[:, None]
    tokens = torch.randn(classes, max_tokens, TEXT_DIM, generator=generator) * mask[..., None]
    return InterfacePrompts(
        learned=learned,
        tokens={"tokens.language.class": PromptTokens(tokens, mask)},
        per_prompt={"queries.language.class": "tokens.language.class"},
    )


def build_ours(hidden: int, levels: list[Tensor], mask_features: Tensor) -> FINDInterface:
    torch.manual_seed(0)
    # in_channels only shape the (replaced) pixel decoder
    interface = FINDInterface(
        dict.fromkeys(("res2", "res3", "res4", "res5"), hidden),
        text_dim=TEXT_DIM,
        hidden_dim=hidden,
        num_layers=9,
        num_heads=8,
        ffn_dim=2048,
        num_proposals=100,
    )
    interface.pixel_decoder = FixedPixelDecoder(levels, mask_features, hidden)  # type: ignore[assignment]
    return interface


def ours_step(
    interface: FINDInterface, classes: int, sentences: bool, inputs: list[Tensor]
) -> Callable[[], None]:
    """One forward+backward of the interface with ``classes`` names, as sentences or as class queries."""
    prompts = segmentation_prompts(0 if sentences else classes)
    vectors = torch.randn(classes, TEXT_DIM, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        output = interface({}, prompts)
        no_object = interface.no_object()
        loss = sum(
            value.mean()
            for layer in output.layers
            for entry in layer.values()
            for key, value in entry.items()
            if key != "valid"
        )
        for i, layer in enumerate(output.layers):
            if sentences:
                embeddings = interface.embed_sentences(vectors)  # as SegmentationTask: once per layer
            else:
                embeddings = layer["queries.language.class"]["embeddings"]
            logits = output.class_logits("proposals.vision.object", embeddings, i, no_object)
            loss = loss + logits.mean()
        loss.backward()  # type: ignore[union-attr]
        interface.zero_grad(set_to_none=True)
        for tensor in inputs:
            tensor.grad = None

    return step


def build_theirs(hidden: int) -> tuple[Mask2FormerTransformerModule, nn.Linear]:
    torch.manual_seed(0)
    config = Mask2FormerConfig(
        hidden_dim=hidden,
        mask_feature_size=hidden,
        feature_size=hidden,
        num_queries=100,
        decoder_layers=10,  # transformers counts the initial prediction: 9 layers
        num_attention_heads=8,
        dim_feedforward=2048,
        dropout=0.0,
        pre_norm=False,
        enforce_input_projection=False,
        num_labels=NUM_LABELS,
    )
    return Mask2FormerTransformerModule(in_features=hidden, config=config), nn.Linear(hidden, NUM_LABELS + 1)


def theirs_step(
    module: Mask2FormerTransformerModule, head: nn.Linear, levels: list[Tensor], mask_features: Tensor
) -> Callable[[], None]:
    inputs = [*levels, mask_features]

    def step() -> None:
        output = module(levels, mask_features)
        loss = sum(mask.mean() for mask in output.masks_queries_logits) + sum(
            head(state.transpose(0, 1)).mean() for state in output.intermediate_hidden_states
        )
        loss.backward()
        module.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        for tensor in inputs:
            tensor.grad = None

    return step


def build_case(hidden: int, size: int, batch: int, classes: int) -> dict[str, Any]:
    """The three step callables of one width and the modules behind them."""
    levels, mask_features = decoder_inputs(hidden, size, batch)
    inputs = [*levels, mask_features]
    ours = build_ours(hidden, levels, mask_features)
    theirs, head = build_theirs(hidden)
    return {
        "steps": {
            "ours_sentences": ours_step(ours, classes, True, inputs),
            "ours_queries": ours_step(ours, classes, False, inputs),
            "theirs": theirs_step(theirs, head, levels, mask_features),
        },
        "parameters": {
            "ours": sum(p.numel() for p in ours.parameters()),
            "theirs": sum(p.numel() for p in theirs.parameters()) + sum(p.numel() for p in head.parameters()),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long sanity run (128 px, 1 repeat)")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=NUM_LABELS)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of each step")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats, args.widths, args.classes = 128, 1, [64], 20
    torch.set_grad_enabled(True)
    widths: dict[str, Any] = {}
    ratios: dict[str, tuple[float, str, bool]] = {}
    spreads: dict[str, tuple[float, float]] = {}
    for hidden in args.widths:
        case = build_case(hidden, args.size, args.batch, args.classes)
        times = alternate(case["steps"], args.repeats, args.warmup)
        medians = {name: summary(values) for name, values in times.items()}
        theirs = medians["theirs"]["median_s"]
        queries = medians["ours_queries"]["median_s"] / theirs
        ratio = medians["ours_sentences"]["median_s"] / theirs
        widths[str(hidden)] = {"times": medians, "parameters": case["parameters"]}
        ratios[f"class_queries_vs_mask2former_d{hidden}"] = (round(queries, 4), "reported", queries <= 1.0)
        ratios[f"interface_vs_mask2former_d{hidden}"] = (round(ratio, 4), "<= 1.0", ratio <= 1.0)
        spreads[f"class_queries_vs_mask2former_d{hidden}"] = spread(
            paired_ratios(times["ours_queries"], times["theirs"])
        )
        spreads[f"interface_vs_mask2former_d{hidden}"] = spread(
            paired_ratios(times["ours_sentences"], times["theirs"])
        )
        if args.profile:
            widths[str(hidden)]["profile"] = {
                name: profile(step, f"{name}, hidden {hidden}") for name, step in case["steps"].items()
            }
        print(
            f"hidden {hidden}: ours (sentences) {medians['ours_sentences']['median_s']:.3f} s, ours (class "
            f"queries) {medians['ours_queries']['median_s']:.3f} s, Mask2Former "
            f"{medians['theirs']['median_s']:.3f} s (median of {args.repeats})",
            flush=True,
        )
    finish(
        "interface_vs_peer",
        {
            "settings": {
                "size": args.size,
                "batch": args.batch,
                "classes": args.classes,
                "layers": 9,
                "queries": 100,
                "repeats": args.repeats,
                "strides": [*LEVEL_STRIDES, 4],
                "quick": args.quick,
            },
            "widths": widths,
        },
        ratios,
        spreads,
    )


if __name__ == "__main__":
    main()
