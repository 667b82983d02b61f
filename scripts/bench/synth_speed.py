"""Time the generation of the embedded default dataset (2000 train + 200 val at 256 px by default).

Usage:
    python scripts/bench/synth_speed.py [--train 2000] [--val 200] [--size 256] [--workers 1 2] [--keep DIR]

The generator spawns its worker processes, so this script (like any caller) keeps its work under
``if __name__ == "__main__"``.

Generates into a temporary folder (or ``--keep DIR``), prints one line per worker count with the
wall time, and checks that every worker count wrote byte-identical annotation files.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from findlit.data.synthetic import generate


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted((folder / "annotations").iterdir()):
        sha.update(path.name.encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", type=Path, default=None, help="generate here and keep it (last count wins)")
    args = parser.parse_args()

    digests: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            out = args.keep if args.keep is not None else Path(tmp) / f"w{workers}"
            start = time.perf_counter()
            summary = generate(out, args.train, args.val, args.size, args.seed, workers=workers)
            seconds = time.perf_counter() - start
            digests.add(_digest(out))
            images = sum(s.images for s in summary.splits.values())
            print(
                f"workers={workers}: {seconds:.1f} s for {images} images at {args.size} px "
                f"({1000 * seconds / images:.1f} ms/image), annotations sha256 {_digest(out)}"
            )
    print("identical annotations across worker counts:", len(digests) == 1)


if __name__ == "__main__":
    main()
