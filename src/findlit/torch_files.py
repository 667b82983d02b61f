"""Read a ``torch.save`` file as data only, with a one-line error for each way it can be unusable.

Every checkpoint findlit reads (``--ckpt_path``, :class:`~findlit.inference.predictor.Predictor`,
an encoder's weights file) goes through :func:`load_torch_file`. It loads with ``weights_only=True``,
so a file cannot run code, and turns what torch, ``zipfile`` and ``pickle`` raise into a
:class:`~findlit.errors.CheckpointError` that names the file and says what it is instead:

- no such file, a folder, unreadable;
- empty, or not a ``torch.save`` file at all (text, JSON, an image...): ``torch.save`` writes a zip
  archive (or, with the legacy format, a pickle stream), and the first bytes say which;
- truncated or damaged: a zip archive without its end (a copy cut short), a member that fails its
  check, a pickle stream that ends early;
- a zip archive that is not a ``torch.save`` file (no ``data.pkl``);
- holding Python objects other than tensors and plain data (a class, a function to call): refused,
  naming the object torch stopped at. torch's own message advises retrying with
  ``weights_only=False``, which for a file from elsewhere is the advice to run its code; it is not
  repeated.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from findlit.errors import CheckpointError

ZIP_MAGIC = b"PK\x03\x04"
"""First bytes of a zip archive, the format ``torch.save`` writes by default."""

PICKLE_PROTOCOL_MARK = 0x80
"""First byte of a pickle stream of protocol 2 or later (torch's legacy format starts with one)."""

_UNSUPPORTED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")
"""How torch names the object it refused (the wording differs between torch versions)."""


class UnsafeTorchFileError(CheckpointError, pickle.UnpicklingError):
    """The file holds pickled objects that are not plain data: loading it could run code."""


class DamagedTorchFileError(CheckpointError):
    """The file is or was a ``torch.save`` file but cannot be read whole (truncated, corrupt)."""


class NotATorchFileError(CheckpointError):
    """The file is not a ``torch.save`` file at all (empty, text, JSON, another archive...)."""


def load_torch_file(
    path: str | os.PathLike[str],
    what: str = "checkpoint",
    mmap: bool = False,
    map_location: Any = "cpu",
) -> Any:
    """``torch.load(path, weights_only=True)``, or a one-line error naming ``path``.

    Args:
        path: the file.
        what: how the message names the file, e.g. ``"checkpoint"`` or ``"model.vision_encoder
            weights"``.
        mmap: map the tensors' storage instead of reading it (zip-format files only; others are
            read whole), for a caller that needs only the small entries of a large file.
        map_location: as ``torch.load``'s (default: every tensor on the CPU).

    Raises:
        CheckpointError: no such file or unreadable; :class:`NotATorchFileError`,
            :class:`DamagedTorchFileError` or :class:`UnsafeTorchFileError` as the module doc says.

    """
    name = f"{what} {os.fspath(path)}"
    head = _first_bytes(Path(path), name)
    is_zip = head.startswith(ZIP_MAGIC)
    if not is_zip and (not head or head[0] != PICKLE_PROTOCOL_MARK):
        raise NotATorchFileError(f"{name}: not a torch.save file ({_looks_like(head)})")
    if is_zip and not zipfile.is_zipfile(path):
        raise DamagedTorchFileError(
            f"{name}: truncated or damaged: a zip archive without its end (a copy or download cut short?)"
        )
    if is_zip and not _holds_torch_pickle(Path(path)):
        raise NotATorchFileError(f"{name}: a zip archive, but not a torch.save file (no data.pkl)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as error:
        text = str(error)
        found = _UNSUPPORTED_GLOBAL.search(text)
        if found is not None or "Weights only load failed" in text:
            stopped_at = f" (torch stopped at {found.group(1)})" if found else ""
            raise UnsafeTorchFileError(
                f"{name}: refused: it holds pickled Python objects other than tensors and plain "
                f"data{stopped_at}, and loading it could run code"
            ) from None
        raise DamagedTorchFileError(f"{name}: damaged: {_first_line(error)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise DamagedTorchFileError(f"{name}: truncated or damaged: {_first_line(error)}") from None


def _first_bytes(path: Path, name: str) -> bytes:
    """The file's first bytes, or a CheckpointError saying why they cannot be read."""
    if path.is_dir():
        raise CheckpointError(f"{name}: is a folder, not a file")
    try:
        with path.open("rb") as file:
            return file.read(8)
    except FileNotFoundError:
        raise CheckpointError(f"{name}: no such file") from None
    except OSError as error:
        raise CheckpointError(f"{name}: cannot read it: {error.strerror or error}") from None


def _holds_torch_pickle(path: Path) -> bool:
    """Whether a zip archive has the ``<folder>/data.pkl`` member that ``torch.save`` writes."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return True  # not ours to judge here: torch.load reports the damage


def _looks_like(head: bytes) -> str:
    """What a file that is not a torch.save file seems to be, from its first bytes."""
    if not head:
        return "the file is empty"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "it looks like JSON"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")):
        return "it is an image"
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return "it is a text file"
    return "neither a zip archive nor a pickle stream"


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (torch's run to a page)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
