"""``findlit.data.check`` from Python: the reports of ``data.predict`` entries (the CLI is in test_cli.py)."""

from __future__ import annotations

from pathlib import Path

from findlit.data.check import check_predict, format_reports
from findlit.data.predict_config import PredictConfig


def test_predict_entries_count_images_prompts_and_class_names(coco_sample: Path) -> None:
    entry = PredictConfig(
        name="photos", images=["val2017"], prompts=["the sky"], classes=["person"], stuff=["grass", "sky"]
    )
    [report] = check_predict([entry], coco_sample)
    assert report.ok and (report.key, report.task) == ("data.predict[0]", "predict")
    assert report.counts["images"] == 2 and report.counts["bad records"] == 0
    assert report.counts["prompts"] == 1 and report.counts["class names"] == 3
    header = format_reports([report]).splitlines()[0]
    assert header.split()[-5:] == ["prompts", "class", "names", "bad", "records"]


def test_an_entry_wrong_without_any_file_gets_that_one_problem(coco_sample: Path) -> None:
    """The DataModule refuses such an entry; built by hand, it is reported instead of raising."""
    empty = PredictConfig(name="photos", images=["val2017", "nowhere.jpg"], prompts=[])
    [report] = check_predict([empty], coco_sample)
    assert len(report.problems) == 1
    assert report.problems[0].startswith("data.predict[0].prompts: nothing to predict")
    assert report.counts["images"] == 0
