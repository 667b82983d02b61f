"""Parameters of the default FIND interface and its forward+backward time per batch on this machine.

Generic segmentation: 2 images at 256x256 (features shaped like tf_efficientnet_lite0's), 100 object
proposals, the image query and 80 class names of up to 8 tokens (MiniLM width 384); the loss is a
plain sum of the outputs, so the time is the interface's, not the criterion's. With ``--padded``,
the first image is only the top-left 3/4 x 3/4 of the frame (zero features, a padding mask beyond),
so the interface takes its masked path.
Usage: python scripts/bench/interface_step.py [--repeats 5] [--size 256] [--batch 2] [--padded]
"""

import argparse
import statistics
import time

import torch

from findlit.interface import FINDInterface, InterfacePrompts, PromptTokens

CHANNELS = {"res2": 24, "res3": 40, "res4": 112, "res5": 320}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--padded", action="store_true", help="pad the first image (masked path)")
    args = parser.parse_args()
    torch.manual_seed(0)
    interface = FINDInterface(CHANNELS, text_dim=384)
    parameters = sum(p.numel() for p in interface.parameters())
    pixel = sum(p.numel() for p in interface.pixel_decoder.parameters())
    features = {
        level: torch.randn(args.batch, c, args.size // STRIDES[level], args.size // STRIDES[level])
        for level, c in CHANNELS.items()
    }
    padding_mask = None
    if args.padded:
        own = args.size * 3 // 4 // 32 * 32
        padding_mask = torch.zeros(args.batch, args.size, args.size, dtype=torch.bool)
        padding_mask[0] = True
        padding_mask[0, :own, :own] = False
        for level, value in features.items():
            s = STRIDES[level]
            value[0, :, own // s :] = 0
            value[0, :, :, own // s :] = 0
    mask = torch.arange(8)[None] < torch.randint(2, 9, (args.classes,))[:, None]
    prompts = InterfacePrompts(
        learned={"proposals.vision.object": 100, "queries.vision.image": 1},
        tokens={
            "tokens.language.class": PromptTokens(torch.randn(args.classes, 8, 384) * mask[..., None], mask)
        },
        per_prompt={"queries.language.class": "tokens.language.class"},
    )

    def step() -> float:
        started = time.perf_counter()
        output = interface(features, prompts, padding_mask)
        loss = sum(
            value.float().mean()
            for layer in output.layers
            for entry in layer.values()
            for key, value in entry.items()
            if key != "valid"
        )
        loss.backward()  # type: ignore[union-attr]
        interface.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step()  # warm-up
    times = [step() for _ in range(args.repeats)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"parameters: {parameters:,} (pixel decoder {pixel:,})")
    print(
        f"forward+backward, batch {args.batch} at {args.size}x{args.size}, 100 proposals, "
        f"{args.classes} classes{', first image padded' if args.padded else ''}: "
        f"median {statistics.median(times):.3f} s, min {min(times):.3f} s over {args.repeats}"
    )


if __name__ == "__main__":
    main()
