"""The output folder: its marker file, and the protection of folders the generator did not write.

A folder is generated into only if it is missing, empty, or carries the marker of a previous run;
then exactly the files the generator owns are replaced and anything else in it survives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from findlit.data.synthetic.vocabulary import SPLITS
from findlit.errors import OutputError

MARKER_NAME = ".findlit-synth.json"
# The marker names the generator; a folder whose marker names anything else is never cleared.
GENERATOR_TAG = "findlit.data.synthetic"
FORMAT_VERSION = 1


class ForeignFolderError(OutputError, FileExistsError):
    """``--out`` names a file, or a folder with files the generator did not write: nothing is written."""


def _generated_paths(out: Path) -> list[Path]:
    """Everything the generator owns inside ``out`` (and nothing else, so user files survive)."""
    paths = [out / d for s in SPLITS for d in (s, f"panoptic_{s}")]
    names = ["dataset_coco.json", "refs(synth).p"] + [
        f"{kind}_{s}.json"
        for s in SPLITS
        for kind in ("panoptic", "instances", "captions", "refs", "refs_absent", "entity")
    ]
    return paths + [out / "annotations" / n for n in names] + [out / MARKER_NAME]


def _is_generated(out: Path) -> bool:
    marker = out / MARKER_NAME
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("generator") == GENERATOR_TAG
    except (OSError, ValueError, AttributeError):
        return False


def prepare_out_folder(out: Path, params: dict[str, Any]) -> None:
    """Create ``out`` or clear a previous generation in it; refuse a folder the user filled."""
    if out.exists() and not out.is_dir():
        raise ForeignFolderError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not _is_generated(out):
            raise ForeignFolderError(
                f"{out} is not empty and was not written by the synthetic data generator "
                f"(no {MARKER_NAME}); choose an empty or new folder"
            )
        for path in _generated_paths(out):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    for sub in ("annotations", *SPLITS, *(f"panoptic_{s}" for s in SPLITS)):
        (out / sub).mkdir(parents=True, exist_ok=True)
    # The marker goes first: an interrupted run leaves a folder that may be generated into again.
    (out / MARKER_NAME).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
