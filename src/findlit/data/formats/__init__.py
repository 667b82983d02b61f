"""Readers of the annotation formats FIND trains on; each returns plain per-image records."""

from findlit.data.formats.captions import read_coco_captions, read_karpathy
from findlit.data.formats.entity import read_find_entity
from findlit.data.formats.instances import read_coco_instances
from findlit.data.formats.panoptic import read_coco_panoptic
from findlit.data.formats.refcoco import read_refcoco

__all__ = [
    "read_coco_captions",
    "read_coco_instances",
    "read_coco_panoptic",
    "read_find_entity",
    "read_karpathy",
    "read_refcoco",
]
