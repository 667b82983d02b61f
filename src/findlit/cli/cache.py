"""``findlit cache``: fill the vision feature caches of one split of an experiment.

For every dataset of the split whose config sets ``features:``, the vision encoder of
``model.vision_encoder`` (or ``model.init_args.vision_encoder``) encodes every image at the
dataset's evaluation preprocessing into that folder. A rerun resumes: shards that are done and
valid are kept. Under ``srun`` or ``torchrun`` each process fills its own shards (rank from
``RANK``/``WORLD_SIZE`` or ``SLURM_PROCID``/``SLURM_NTASKS``).

Exit codes (:mod:`findlit.cli.report`): 0 when every image was encoded; 1 when records or images
were skipped as bad (``data.on_bad_record: skip``; ``findlit data check`` lists them); 2 on a
config, data or stale-cache error, reported by the dispatcher.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jsonargparse import ArgumentParser, Namespace

from findlit.cli.config import build_datamodule, config_section, load_config
from findlit.cli.report import PROBLEMS_FOUND, SUCCESS
from findlit.data.errors import BadRecords
from findlit.errors import ConfigError

if TYPE_CHECKING:
    from findlit.data.config import DatasetConfig
    from findlit.data.feature_cache import FillReport, ShardResult
    from findlit.encoders.base import VisionEncoder


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
        ConfigError: naming ``model.vision_encoder`` (``model.init_args.vision_encoder`` in the class
            form) when it is missing or not ``{name, options}``.

    """
    from findlit.encoders.registry import EncoderConfig

    model = config_section(config, "model") if "model" in config else None
    section = None if model is None else model.get("vision_encoder")
    if model is None or section is None:
        raise ConfigError(
            "model.vision_encoder is required to compute features: set it to "
            "{name: <encoder>, options: {...}} (e.g. name: timm)"
        )
    key = f"{model.key}.vision_encoder"
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


def chosen_datasets(
    configs: Sequence[DatasetConfig], split: str, names: Sequence[str] | None
) -> list[tuple[int, DatasetConfig]]:
    """(index in ``data.<split>``, config) of the datasets to cache.

    Those that set ``features:``, among ``names`` when given.

    Raises:
        ConfigError: a name that is no dataset of the split, or no dataset to cache.

    """
    if names is not None:
        unknown = sorted(set(names) - {dataset.name for dataset in configs})
        if unknown:
            raise ConfigError(f"--dataset: no dataset named {unknown} in data.{split}")
    chosen = [
        (index, dataset)
        for index, dataset in enumerate(configs)
        if dataset.features is not None and (names is None or dataset.name in names)
    ]
    if not chosen:
        raise ConfigError(f"no dataset of data.{split} sets `features:` (the folder of its feature cache)")
    return chosen


def cache_device(requested: str, world_size: int, local_rank: int) -> str:
    """The device to encode on: ``cuda`` is each process's own GPU when several processes run."""
    if requested == "cuda" and world_size > 1:
        return f"cuda:{local_rank}"
    return requested


@dataclass(frozen=True)
class Reporter:
    """The lines ``findlit cache`` prints, prefixed with the rank when several processes run."""

    rank: int
    world_size: int

    @property
    def prefix(self) -> str:
        """``[rank r/W] `` under several processes, else nothing."""
        return f"[rank {self.rank}/{self.world_size}] " if self.world_size > 1 else ""

    def encoder(self, encoder: VisionEncoder, device: str) -> None:
        """The encoder, its weights digest and the device."""
        print(f"{self.prefix}encoder {encoder.spec.name} ({encoder.spec.weights_digest[:12]}) on {device}")

    def dataset(self, key: str, name: str, images: int, folder: Any) -> None:
        """A dataset about to be filled."""
        print(f"{self.prefix}{key} {name}: {images} images -> {folder}")

    def shard(self, name: str, result: ShardResult) -> None:
        """A shard computed (reused ones are only counted in the summary)."""
        if result.status == "reused":
            return
        bad = f", {result.bad_images} bad" if result.bad_images else ""
        note = f" ({result.note})" if result.note else ""
        print(
            f"{self.prefix}  {name} shard {result.shard}: {result.images} images{bad}, "
            f"{_megabytes(result.nbytes)} in {result.seconds:.1f} s{note}",
            flush=True,
        )

    def summary(self, name: str, report: FillReport, missing_shards: int) -> None:
        """What this process computed and reused of a dataset, and whether its cache is complete."""
        computed = report.computed
        images = sum(result.images for result in computed)
        state = "complete" if report.complete else f"{missing_shards} shards left to other ranks"
        print(
            f"{self.prefix}{name}: {report.shards} shards; computed {len(computed)} ({images} images, "
            f"{_megabytes(report.nbytes)}), reused {len(report.reused)}, in {report.seconds:.1f} s; "
            f"cache {state}"
        )

    def skipped(self, name: str, records: int, images: int) -> None:
        """Bad records and images left out under ``on_bad_record: skip`` (the exit code is then 1)."""
        print(
            f"{self.prefix}{name}: skipped {records} bad record(s) and {images} bad image(s) "
            "(data.on_bad_record: skip); `findlit data check` lists them"
        )


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def run_cache(args: Namespace) -> int:
    """Fill the caches of ``args.split``; print a line per shard and a summary per dataset.

    Returns:
        :data:`~findlit.cli.report.SUCCESS`, or :data:`~findlit.cli.report.PROBLEMS_FOUND` when bad
        records or images were skipped.

    """
    from findlit.data.config import feature_cache, read_records
    from findlit.encoders.base import VisionEncoder

    config = load_config(args.config)
    datamodule = build_datamodule(config_section(config, "data", args.config).values, args.config)
    encoder_config, encoder_key = vision_encoder_config(config)
    chosen = chosen_datasets(datamodule.configs[args.split], args.split, args.dataset)
    rank, world_size, local_rank = rank_from_environment()
    device = cache_device(args.device, world_size, local_rank)
    encoder = encoder_config.build(key=encoder_key)
    if not isinstance(encoder, VisionEncoder):
        raise ConfigError(f"{encoder_key}: {encoder_config.name!r} is not a vision encoder")
    reporter = Reporter(rank, world_size)
    reporter.encoder(encoder, device)
    code = SUCCESS
    for index, dataset in chosen:
        key = f"data.{args.split}[{index}]"
        bad_records = BadRecords(datamodule.on_bad_record, dataset=dataset.name)
        records = read_records(dataset, key, datamodule.root, bad_records)
        bad_records.warn_summary()
        store = feature_cache(dataset, key, records, datamodule.root, datamodule.size_divisibility)
        reporter.dataset(key, dataset.name, len(store.images), store.folder)
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
            progress=functools.partial(reporter.shard, dataset.name),
        )
        reporter.summary(dataset.name, report, len(store.missing_shards()))
        bad_images = sum(result.bad_images for result in report.computed)
        if bad_records.problems or bad_images:
            reporter.skipped(dataset.name, len(bad_records.problems), bad_images)
            code = PROBLEMS_FOUND
    return code


def main(argv: Sequence[str]) -> int:
    """``findlit cache ...``; its errors propagate to the dispatcher's reporter (exit code 2)."""
    args = cache_parser().parse_args(list(argv))
    started = time.perf_counter()
    code = run_cache(args)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return code
