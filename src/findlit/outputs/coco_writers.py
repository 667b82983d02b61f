"""Writers of predictions in the formats official tools score.

- :class:`PanopticWriter`: COCO panoptic results (one PNG per image, id = R + 256·G + 256²·B, plus a
  JSON with ``annotations`` and ``categories``), readable by panopticapi and by
  :func:`findlit.data.formats.read_coco_panoptic`.
- :class:`InstanceResultsWriter`: COCO detection results with compressed RLE masks, for
  ``COCO.loadRes`` + ``COCOeval(iouType="segm")``.
- :class:`GroundingResultsWriter` and :class:`RetrievalResultsWriter`: JSON lists per query.

Every file is written by findlit's one atomic writer (:mod:`findlit.atomic_files`: a temporary
file in its folder, fsync, ``os.replace``), so a crash never leaves a half-written file under the
final name, and no writer replaces existing output unless asked to with ``overwrite=True``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor

from findlit.atomic_files import atomic_write, write_json_atomic
from findlit.data.records import Category

# The largest id three 8-bit channels can hold.
_MAX_SEGMENT_ID = 256**3 - 1


def as_mask_array(masks: Tensor | np.ndarray, ndim: int) -> np.ndarray:
    """Masks as a boolean numpy array with ``ndim`` dimensions (2: one mask [H,W]; 3: [N,H,W])."""
    array = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if array.ndim != ndim:
        raise ValueError(f"expected masks with {ndim} dimensions, got shape {tuple(array.shape)}")
    return array.astype(bool, copy=False)


def encode_masks(masks: Tensor | np.ndarray) -> list[dict[str, Any]]:
    """Compressed COCO RLE of each mask, with ``counts`` as ``str`` so it serialises to JSON.

    Args:
        masks: bool[N,H,W].

    Returns:
        N dicts ``{"size": [H, W], "counts": str}``.

    """
    array = as_mask_array(masks, 3)
    if array.shape[0] == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(array.transpose(1, 2, 0).astype(np.uint8)))
    return [
        {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded
    ]


def _rle_bbox(rle: dict[str, Any]) -> list[float]:
    """[x, y, w, h] of an RLE as pycocotools computes it (the box COCOeval compares)."""
    coco_rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return [float(v) for v in mask_utils.toBbox(coco_rle)]


def _as_list(values: Tensor | np.ndarray | Sequence[Any]) -> list[Any]:
    if isinstance(values, Tensor):
        return values.detach().cpu().tolist()
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def _refuse_existing_file(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")


_Writer = TypeVar("_Writer", bound="_WriteOnce")


class _WriteOnce:
    """A writer that accumulates, then writes once on :meth:`close`.

    Used as a context manager, it writes only when the block ends without an exception.
    Subclasses set ``_target`` (named in messages) and implement :meth:`_write`.
    """

    _target: Path
    closed: bool = False

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"writer of {self._target} is closed")

    def _write(self) -> Path:
        raise NotImplementedError

    def close(self) -> Path:
        """Write what was accumulated; returns the path written."""
        if self.closed:
            raise RuntimeError(f"writer of {self._target} is already closed")
        written = self._write()
        self.closed = True
        return written

    def __enter__(self: _Writer) -> _Writer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None and not self.closed:
            self.close()


class _JsonListWriter(_WriteOnce):
    """Accumulates JSON entries and writes them as one list on :meth:`close`."""

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = self._target = Path(path)
        _refuse_existing_file(self.path, overwrite)
        self.entries: list[dict[str, Any]] = []

    def _append(self, entry: dict[str, Any]) -> None:
        self._check_open()
        self.entries.append(entry)

    def _write(self) -> Path:
        write_json_atomic(self.path, self.entries)
        return self.path


class InstanceResultsWriter(_JsonListWriter):
    """COCO instance segmentation results: a JSON list loadable with ``COCO.loadRes``.

    Each entry is ``{image_id, category_id, segmentation: {size, counts: str}, score, bbox}``, the
    box being the mask's box as pycocotools computes it.
    """

    def add(
        self,
        image_id: int,
        masks: Tensor | np.ndarray,
        category_ids: Tensor | np.ndarray | Sequence[int],
        scores: Tensor | np.ndarray | Sequence[float],
    ) -> None:
        """Add the N predictions of one image.

        Args:
            image_id: COCO image id.
            masks: bool[N,H,W] at the image's original size.
            category_ids: N dataset category ids (not contiguous indices).
            scores: N confidences.

        """
        rles = encode_masks(masks)
        categories = _as_list(category_ids)
        confidences = _as_list(scores)
        if not len(rles) == len(categories) == len(confidences):
            raise ValueError(
                f"{len(rles)} masks, {len(categories)} category ids and {len(confidences)} scores differ"
            )
        for rle, category_id, score in zip(rles, categories, confidences, strict=True):
            self._append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_id),
                    "segmentation": rle,
                    "score": float(score),
                    "bbox": _rle_bbox(rle),
                }
            )


class GroundingResultsWriter(_JsonListWriter):
    """Referring segmentation results: one entry per referring sentence.

    Each entry is ``{image_id, ref_id, sentence, segmentation: {size, counts: str}, score}``, plus
    ``sentence_id`` when given (RefCOCO refs hold several sentences each).
    """

    def add(
        self,
        image_id: int,
        ref_id: int,
        sentence: str,
        mask: Tensor | np.ndarray,
        score: float,
        *,
        sentence_id: int | None = None,
    ) -> None:
        """Add the predicted mask of one sentence.

        Args:
            image_id: COCO image id.
            ref_id: id of the referring expression.
            sentence: the sentence as given to the model.
            mask: bool[H,W] at the image's original size.
            score: confidence of the mask.
            sentence_id: id of the sentence within the ref, if any.

        """
        rle = encode_masks(as_mask_array(mask, 2)[None])[0]
        entry: dict[str, Any] = {
            "image_id": int(image_id),
            "ref_id": int(ref_id),
            "sentence": sentence,
            "segmentation": rle,
            "score": float(score),
        }
        if sentence_id is not None:
            entry["sentence_id"] = int(sentence_id)
        self._append(entry)


class RetrievalResultsWriter(_JsonListWriter):
    """Retrieval results: the ranked gallery of each query, best first, cut to ``top_k``.

    Each entry is ``{query_kind: "image" | "text", query_id, ranked_ids, scores}``; an image query
    ranks caption ids (text retrieval) and a text query ranks image ids (image retrieval).
    """

    def __init__(self, path: str | Path, *, top_k: int | None = None, overwrite: bool = False) -> None:
        super().__init__(path, overwrite=overwrite)
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}")
        self.top_k = top_k

    def add(
        self,
        query_kind: Literal["image", "text"],
        query_id: int,
        ranked_ids: Sequence[int] | Tensor | np.ndarray,
        scores: Sequence[float] | Tensor | np.ndarray,
    ) -> None:
        """Add the ranking of one query.

        Args:
            query_kind: ``"image"`` or ``"text"``.
            query_id: image id or caption id of the query.
            ranked_ids: gallery ids, best first.
            scores: their similarities, non-increasing.

        """
        if query_kind not in ("image", "text"):
            raise ValueError(f"query_kind must be 'image' or 'text', got {query_kind!r}")
        ids = [int(i) for i in _as_list(ranked_ids)]
        values = [float(s) for s in _as_list(scores)]
        if len(ids) != len(values):
            raise ValueError(f"{len(ids)} ranked ids but {len(values)} scores")
        if any(later > earlier for earlier, later in itertools.pairwise(values)):
            raise ValueError(f"scores of query {query_id} are not ranked best first")
        if self.top_k is not None:
            ids, values = ids[: self.top_k], values[: self.top_k]
        self._append(
            {"query_kind": query_kind, "query_id": int(query_id), "ranked_ids": ids, "scores": values}
        )


def _category_dict(category: Category | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(category, Category):
        return {
            "id": category.id,
            "name": category.name,
            "isthing": int(category.isthing),
            "supercategory": category.supercategory,
        }
    return dict(category)


def _mask_bbox(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of a non-empty bool[H,W] mask, inclusive of its last row and column."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    x, y = int(columns[0]), int(rows[0])
    return [x, y, int(columns[-1]) - x + 1, int(rows[-1]) - y + 1]


class PanopticWriter(_WriteOnce):
    """COCO panoptic predictions: ``<folder>/panoptic/<stem>.png`` and ``<folder>/panoptic_predictions.json``.

    The JSON has ``annotations`` (``image_id``, ``file_name`` of the PNG, ``segments_info`` with
    ``id, category_id, area, bbox, iscrowd`` and ``score`` when given), ``categories`` and
    ``images`` (so the file also reads as a dataset with :func:`read_coco_panoptic`).

    Args:
        folder: output folder; refused when it exists and is not empty, unless ``overwrite``.
        categories: the vocabulary, as :class:`Category` objects or COCO category dicts (a mapping
            id -> category, such as ``Dataset.categories``, is accepted too).
        overwrite: write into a non-empty folder, replacing files of the same names (other files
            are left alone).

    """

    json_name = "panoptic_predictions.json"
    png_folder = "panoptic"

    def __init__(
        self,
        folder: str | Path,
        categories: Iterable[Category | Mapping[str, Any]] | Mapping[int, Category],
        *,
        overwrite: bool = False,
    ) -> None:
        self.folder = self._target = Path(folder)
        if self.folder.exists():
            if not self.folder.is_dir():
                raise NotADirectoryError(f"{self.folder} exists and is not a folder")
            if any(self.folder.iterdir()) and not overwrite:
                raise FileExistsError(f"{self.folder} is not empty; pass overwrite=True to write into it")
        values = categories.values() if isinstance(categories, Mapping) else categories
        self.categories = [_category_dict(category) for category in values]
        self._known = {int(category["id"]) for category in self.categories}
        self.annotations: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self._png_names: set[str] = set()

    @property
    def json_path(self) -> Path:
        """Where :meth:`close` writes the JSON."""
        return self.folder / self.json_name

    @property
    def png_root(self) -> Path:
        """Folder of the PNGs (the ``panoptic_root`` of a reader)."""
        return self.folder / self.png_folder

    def add(
        self,
        image_id: int,
        file_name: str,
        segment_ids: Tensor | np.ndarray,
        segments: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        """Write the PNG of one image and keep its ``segments_info``.

        Args:
            image_id: COCO image id.
            file_name: the image's file name; the PNG is named by its stem.
            segment_ids: int64[H,W] segment id per pixel, 0 = void.
            segments: ``{id, category_id, score?, isthing?}`` per segment. Segments with no pixel
                are dropped (panopticapi refuses them); a pixel id missing here is an error.

        Returns:
            The annotation added to the JSON.

        """
        self._check_open()
        ids = (
            segment_ids.detach().cpu().numpy() if isinstance(segment_ids, Tensor) else np.asarray(segment_ids)
        )
        if ids.ndim != 2:
            raise ValueError(f"segment_ids must be [H,W], got shape {tuple(ids.shape)}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() > _MAX_SEGMENT_ID):
            raise ValueError(f"segment ids must lie in 0..{_MAX_SEGMENT_ID}")
        png_name = f"{Path(file_name).stem}.png"
        if png_name in self._png_names:
            raise ValueError(f"{png_name} was already written by this writer (image_id={image_id})")

        segments_info = self._segments_info(image_id, ids, segments)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)
        self.png_root.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.png_root / png_name) as file:
            Image.fromarray(rgb, mode="RGB").save(file, format="PNG")

        self._png_names.add(png_name)
        height, width = ids.shape
        self.images.append({"id": int(image_id), "file_name": file_name, "height": height, "width": width})
        annotation = {"image_id": int(image_id), "file_name": png_name, "segments_info": segments_info}
        self.annotations.append(annotation)
        return annotation

    def _segments_info(
        self, image_id: int, ids: np.ndarray, segments: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        listed: dict[int, Mapping[str, Any]] = {}
        for segment in segments:
            segment_id = int(segment["id"])
            if segment_id == 0:
                raise ValueError(f"image_id={image_id}: segment id 0 is void and cannot be listed")
            if segment_id in listed:
                raise ValueError(f"image_id={image_id}: segment id {segment_id} is listed twice")
            category_id = int(segment["category_id"])
            if self._known and category_id not in self._known:
                raise ValueError(
                    f"image_id={image_id}: category_id {category_id} is not among the categories"
                )
            listed[segment_id] = segment
        present, areas = np.unique(ids, return_counts=True)
        unlisted = sorted(int(i) for i in present if i != 0 and int(i) not in listed)
        if unlisted:
            raise ValueError(f"image_id={image_id}: segment id(s) {unlisted[:5]} in the map are not listed")
        area_of = dict(zip(present.tolist(), areas.tolist(), strict=True))
        info: list[dict[str, Any]] = []
        for segment_id, segment in listed.items():
            area = int(area_of.get(segment_id, 0))
            if area == 0:
                continue
            entry: dict[str, Any] = {
                "id": segment_id,
                "category_id": int(segment["category_id"]),
                "area": area,
                "bbox": _mask_bbox(ids == segment_id),
                "iscrowd": 0,
            }
            if segment.get("score") is not None:
                entry["score"] = float(segment["score"])
            info.append(entry)
        return info

    def _write(self) -> Path:
        document = {"annotations": self.annotations, "categories": self.categories, "images": self.images}
        write_json_atomic(self.json_path, document)
        return self.json_path
