"""The public entry point :func:`generate`: validate, prepare the folder, run the images, write the files.

Images are built in this process or in spawned worker processes (never forked: the caller may hold
threads); results come back in image order, so the output does not depend on ``workers``.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from findlit.data.synthetic.annotation_files import write_annotation_files
from findlit.data.synthetic.image_job import ImageJob, ImageResult, build_image
from findlit.data.synthetic.output_folder import FORMAT_VERSION, GENERATOR_TAG, prepare_out_folder
from findlit.data.synthetic.summary import SynthSummary
from findlit.data.synthetic.vocabulary import SPLITS, VAL_ID_OFFSET


def _run_jobs(jobs: Sequence[ImageJob], workers: int) -> Iterator[ImageResult]:
    """Results in job order, in this process or in ``workers`` spawned processes."""
    if workers <= 1 or len(jobs) < 2:
        yield from map(build_image, jobs)
        return
    # spawn, not fork: the caller may hold threads (torch, a DataLoader) that fork would copy half-way.
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(64, len(jobs) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(build_image, jobs, chunksize=chunk)


def check_arguments(counts: dict[str, int], size: int, seed: int, workers: int) -> None:
    """Raise ValueError for image counts, size, seed or workers the generator cannot use."""
    if min(counts.values()) < 0 or sum(counts.values()) == 0:
        raise ValueError(f"need at least one image: {', '.join(f'{s}={n}' for s, n in counts.items())}")
    if max(counts.values()) >= VAL_ID_OFFSET:
        raise ValueError(f"at most {VAL_ID_OFFSET - 1} images per split")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")


def generate(
    out: Path, train: int, val: int, size: int = 256, seed: int = 0, workers: int = 1, test: int = 0
) -> SynthSummary:
    """Write the synthetic dataset (``train`` + ``val`` + ``test`` square images of ``size`` px) into ``out``.

    The test split is for reporting: images no choice (of checkpoint or configuration) is made on.

    The same ``seed`` gives byte-identical files for any ``workers``. ``out`` must be missing, empty,
    or a previous output of this function (recognised by its marker file, and then replaced);
    otherwise :class:`~findlit.data.synthetic.output_folder.ForeignFolderError` (an output error and
    a :class:`FileExistsError`) is raised and nothing is written.

    Returns:
        The output folder, per-split counts and the wall time in seconds.

    """
    counts = {"train": train, "val": val, "test": test}
    check_arguments(counts, size, seed, workers)
    start = time.perf_counter()
    out = Path(out)
    params = {
        "generator": GENERATOR_TAG,
        "format_version": FORMAT_VERSION,
        "train": train,
        "val": val,
        "test": test,
        "size": size,
        "seed": seed,
    }
    prepare_out_folder(out, params)
    jobs = [ImageJob(str(out), split, i, size, seed) for split in SPLITS for i in range(counts[split])]
    results_by_split: dict[str, list[ImageResult]] = {split: [] for split in SPLITS}
    for result in _run_jobs(jobs, min(workers, os.cpu_count() or 1) if workers > 1 else 1):
        results_by_split[result.split].append(result)
    splits = write_annotation_files(out, results_by_split, seed)
    return SynthSummary(out=out, splits=splits, seconds=time.perf_counter() - start)
