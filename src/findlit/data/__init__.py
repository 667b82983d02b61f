"""The data layer: COCO-format readers, the synthetic generator, datasets, transforms and the DataModule."""
