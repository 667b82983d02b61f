"""The data layer: COCO-format readers, the synthetic generator, datasets, transforms and the DataModule.

- :mod:`~findlit.data.formats`: readers of COCO panoptic, instances, captions, Karpathy, RefCOCO and
  FIND-Bench entities, each returning plain per-image records (:mod:`~findlit.data.records`);
- :mod:`~findlit.data.synthetic`: the generator of the embedded default dataset (real COCO formats);
- datasets (one per task), samples, pixel decoding, transforms, collate (the batch contract),
  samplers, dataset configs, ``data check``, and the image files of ``predict``;
- :mod:`~findlit.data.feature_cache`: memory-mapped features of a frozen vision encoder;
- :mod:`~findlit.data.datamodule`: the multi-task DataModule, the only module here that knows Lightning.

May import encoders (encoder specs, strides and channels: the feature cache and the DataModule key
on them) and the top-level helpers (errors); nothing above (interface, losses, metrics, outputs,
tasks, training, inference, cli). encoders never import data.
"""
