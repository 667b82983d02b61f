"""``findlit cache``: fill the vision feature caches of one split of an experiment.

For every dataset of the split whose config sets ``features:``, the vision encoder of
``model.vision_encoder`` (or ``model.init_args.vision_encoder``) encodes every image at the
dataset's evaluation preprocessing into that folder. A rerun resumes: shards that are done and
valid are kept. Under ``srun`` or ``torchrun`` each process fills its own shards (rank from
``RANK``/``WORLD_SIZE`` or ``SLURM_PROCID``/``SLURM_NTASKS``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from findlit.data.errors import BadRecords
from findlit.errors import ConfigError, DataError

VISION_ENCODER_KEYS = ("model.vision_encoder", "model.init_args.vision_encoder")


def cache_parser() -> ArgumentParser:
    """The parser of ``findlit cache``."""
    parser = ArgumentParser(
        prog="findlit cache",
        description="Compute the vision features of every image of the datasets of a split that set "
        "`features:`, into memory-mapped shards; resumes an interrupted run.",
    )
    parser.add_argument(
        "--config",
        type=str,
        action="append",
        required=True,
        help="experiment YAML (repeatable, merged in order)",
    )
    parser.add_argument(
        "--split", type=str, required=True, choices=["train", "val", "test"], help="data split"
    )
    parser.add_argument(
        "--dataset", type=str, action="append", default=None, help="only this dataset name (repeatable)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per encoder call")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="images per shard (default: the existing cache's, else 256)",
    )
    parser.add_argument(
        "--dtype",
        type=str,
        default=None,
        help="float16 or float32 (default: the existing cache's, else float16)",
    )
    parser.add_argument("--device", type=str, default="cpu", help="cpu, cuda or cuda:<index>")
    parser.add_argument("--workers", type=int, default=0, help="image decoding worker processes")
    return parser


def rank_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's or SLURM's variables; (0, 1, 0) without them."""
    env = os.environ if environ is None else environ
    for rank_key, world_key, local_key in (
        ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ):
        if rank_key in env and world_key in env:
            try:
                rank, world_size, local = (
                    int(env[rank_key]),
                    int(env[world_key]),
                    int(env.get(local_key, "0")),
                )
            except ValueError:
                raise ConfigError(f"{rank_key}/{world_key} must be integers, got {env[rank_key]!r}") from None
            if not 0 <= rank < world_size:
                raise ConfigError(f"{rank_key}={rank} is not in [0, {world_key}={world_size})")
            return rank, world_size, local
    return 0, 1, 0


def vision_encoder_config(config: Mapping[str, Any]) -> tuple[Any, str]:
    """The :class:`~findlit.encoders.registry.EncoderConfig` of the experiment's vision encoder, and its key.

    Raises:
        ConfigError: naming ``model.vision_encoder`` when it is missing or not ``{name, options}``.

    """
    from findlit.encoders.registry import EncoderConfig

    model = config.get("model")
    section: Any = None
    key = VISION_ENCODER_KEYS[0]
    if isinstance(model, Mapping):
        if "vision_encoder" in model:
            section = model["vision_encoder"]
        elif isinstance(model.get("init_args"), Mapping) and "vision_encoder" in model["init_args"]:
            section, key = model["init_args"]["vision_encoder"], VISION_ENCODER_KEYS[1]
    if section is None:
        raise ConfigError(
            f"{VISION_ENCODER_KEYS[0]} is required to compute features: set it to "
            "{name: <encoder>, options: {...}} (e.g. name: timm)"
        )
    if not isinstance(section, Mapping) or "name" not in section:
        raise ConfigError(f"{key} must be a mapping {{name: <encoder>, options: {{...}}}}, got {section!r}")
    unknown = sorted(set(section) - {"name", "options"})
    if unknown:
        raise ConfigError(
            f"{key}: unknown key(s) {', '.join(f'{key}.{u}' for u in unknown)}; use name and options"
        )
    options = section.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{key}.options must be a mapping, got {options!r}")
    return EncoderConfig(str(section["name"]), dict(options)), key


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def run_cache(args: Namespace) -> int:
    """Fill the caches of ``args.split``; print a line per shard and a summary per dataset."""
    from findlit.cli.config import build_datamodule, load_config
    from findlit.data.config import feature_cache, read_records
    from findlit.data.feature_cache import ShardResult
    from findlit.encoders.base import VisionEncoder

    config = load_config(args.config)
    data = config.get("data")
    if isinstance(data, Mapping) and "init_args" in data:
        data = data["init_args"]
    if not isinstance(data, dict):
        raise ConfigError(f"no 'data' section in {', '.join(args.config)}")
    datamodule = build_datamodule(data)
    encoder_config, encoder_key = vision_encoder_config(config)
    chosen = [
        (index, dataset)
        for index, dataset in enumerate(datamodule.configs[args.split])
        if dataset.features is not None and (args.dataset is None or dataset.name in args.dataset)
    ]
    if args.dataset is not None:
        unknown = sorted(set(args.dataset) - {d.name for d in datamodule.configs[args.split]})
        if unknown:
            raise ConfigError(f"--dataset: no dataset named {unknown} in data.{args.split}")
    if not chosen:
        raise ConfigError(
            f"no dataset of data.{args.split} sets `features:` (the folder of its feature cache)"
        )
    rank, world_size, local_rank = rank_from_environment()
    device = args.device
    if device == "cuda" and world_size > 1:
        device = f"cuda:{local_rank}"
    encoder = encoder_config.build(key=encoder_key)
    if not isinstance(encoder, VisionEncoder):
        raise ConfigError(f"{encoder_key}: {encoder_config.name!r} is not a vision encoder")
    prefix = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
    print(f"{prefix}encoder {encoder.spec.name} ({encoder.spec.weights_digest[:12]}) on {device}")
    for index, dataset in chosen:
        key = f"data.{args.split}[{index}]"
        bad_records = BadRecords(datamodule.on_bad_record, dataset=dataset.name)
        records = read_records(dataset, key, datamodule.root, bad_records)
        bad_records.warn_summary()
        store = feature_cache(dataset, key, records, datamodule.root, datamodule.size_divisibility)
        print(f"{prefix}{key} {dataset.name}: {len(store.images)} images -> {store.folder}")

        def show(result: ShardResult, name: str = dataset.name) -> None:
            if result.status == "reused":
                return
            bad = f", {result.bad_images} bad" if result.bad_images else ""
            note = f" ({result.note})" if result.note else ""
            print(
                f"{prefix}  {name} shard {result.shard}: {result.images} images{bad}, "
                f"{_megabytes(result.nbytes)} in {result.seconds:.1f} s{note}",
                flush=True,
            )

        report = store.fill(
            encoder,
            rank=rank,
            world_size=world_size,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            dtype=args.dtype,
            device=device,
            num_workers=args.workers,
            on_bad_image=datamodule.on_bad_record,
            progress=show,
        )
        computed, reused = report.computed, report.reused
        images = sum(r.images for r in computed)
        state = "complete" if report.complete else f"{len(store.missing_shards())} shards left to other ranks"
        print(
            f"{prefix}{dataset.name}: {report.shards} shards; computed {len(computed)} ({images} images, "
            f"{_megabytes(report.nbytes)}), reused {len(reused)}, in {report.seconds:.1f} s; cache {state}"
        )
    return 0


def main(argv: Sequence[str]) -> int:
    """``findlit cache ...``; exit 2 on a config or stale-cache error, 1 on a data error."""
    from findlit.data.feature_cache import FeatureCacheError

    args = cache_parser().parse_args(list(argv))
    started = time.perf_counter()
    try:
        code = run_cache(args)
    except (ConfigError, FeatureCacheError) as error:
        print(
            f"findlit: {'config' if isinstance(error, ConfigError) else 'cache'} error: {error}",
            file=sys.stderr,
        )
        return 2
    except DataError as error:
        print(f"findlit: data error: {error}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - started:.1f} s")
    return code
