"""``findlit data check``: read and decode every record of every configured dataset.

It counts what is there and lists every problem with its file and record, before a long job finds them.
The ``data.predict`` entries have no records: their image files are listed and decoded as
``findlit predict`` reads them, and their prompts and class names counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from findlit.data.config import FORMATS, DatasetConfig, read_records
from findlit.data.errors import BadRecords
from findlit.data.predict_config import PredictConfig, check_predict_config, find_images
from findlit.data.predict_dataset import PREDICT_TASK, read_upright_image
from findlit.data.sample import Sample
from findlit.errors import ConfigError, DataError

COUNTED = ("images", "segments", "captions", "refs", "sentences", "entities")
"""The columns of every dataset's report."""

PREDICT_COUNTED = ("prompts", "class names")
"""The columns that ``data.predict`` entries add (class names: things and stuff)."""


@dataclass
class CheckReport:
    """What one dataset holds and what is wrong with it."""

    key: str
    name: str
    task: str
    format: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def check_dataset(config: DatasetConfig, key: str, root: str | Path | None = None) -> CheckReport:
    """Read ``config``'s files, decode every image and mask, and count records and problems."""
    report = CheckReport(key=key, name=config.name, task=config.task, format=config.format)
    bad_records = BadRecords("skip", dataset=config.name)
    try:
        data = read_records(config, key, root, bad_records)
    except (DataError, ConfigError) as error:
        report.problems.append(str(error))
        return report
    dataset = FORMATS[config.format].dataset(
        config.name, data, None, task=config.task, key=key, on_bad_record="skip"
    )
    generator = torch.Generator().manual_seed(0)
    for record in data.records:
        try:
            sample = dataset.decode(record, generator)
        except DataError as error:
            bad_records.report(error.with_key(key))
            continue
        _count(report.counts, sample, record)
    report.counts["bad records"] = len(bad_records.problems)
    report.problems.extend(str(problem) for problem in bad_records.problems)
    return report


def _count(counts: dict[str, int], sample: Sample, record: object) -> None:
    counts["images"] += 1
    if "masks" in sample:
        counts["segments"] += int(sample["masks"].shape[0])
    counts["captions"] += len(sample.get("captions", []))
    counts["refs"] += len(getattr(record, "refs", ()))
    counts["sentences"] += len(sample.get("sentences", []))
    counts["entities"] += sum(len(entity["spans"]) for entity in sample.get("entities", []))


def check_stages(stages: dict[str, list[DatasetConfig]], root: str | Path | None = None) -> list[CheckReport]:
    """Check every dataset of every stage; keys are ``data.<stage>[i]``."""
    return [
        check_dataset(config, f"data.{stage}[{index}]", root)
        for stage, configs in stages.items()
        for index, config in enumerate(configs)
    ]


def check_predict_entry(config: PredictConfig, key: str, root: str | Path | None = None) -> CheckReport:
    """Find an entry's image files, decode each one as ``findlit predict`` does, count its request.

    Every missing file or folder, folder without images, shared file stem and unreadable image is a
    problem naming ``<key>.images[...]`` or the file; images counts those that decode. An entry
    that is wrong without reading a file (an empty request...) gets that one problem.
    """
    report = CheckReport(key=key, name=config.name, task=PREDICT_TASK, format="images")
    report.counts |= {"prompts": len(config.prompts), "class names": len(config.classes) + len(config.stuff)}
    try:
        # the DataModule refuses these when it is built; a caller from Python may have built none
        check_predict_config(config, key)
    except ConfigError as error:
        report.problems.append(str(error))
        return report  # e.g. images as one string: its entries are not file names
    files, problems = find_images(config, key, root)
    report.problems.extend(problems)
    unreadable = 0
    for file in files:
        try:
            read_upright_image(file, f"{key}.images")
        except DataError as error:
            report.problems.append(str(error))
            unreadable += 1
            continue
        report.counts["images"] += 1
    report.counts["bad records"] = unreadable
    return report


def check_predict(configs: Sequence[PredictConfig], root: str | Path | None = None) -> list[CheckReport]:
    """Check every ``data.predict`` entry; keys are ``data.predict[i]``."""
    return [
        check_predict_entry(config, f"data.predict[{index}]", root) for index, config in enumerate(configs)
    ]


def format_reports(reports: Iterable[CheckReport]) -> str:
    """A plain-text table of counts per dataset followed by every problem.

    The columns are :data:`COUNTED`, then those of :data:`PREDICT_COUNTED` that a report has, then
    bad records (for a ``data.predict`` entry: its unreadable images).
    """
    reports = list(reports)
    extra = [name for name in PREDICT_COUNTED if any(name in report.counts for report in reports)]
    columns = [*COUNTED, *extra, "bad records"]
    # the label column fits the longest "<key> <name>" (never truncated: names are identifiers)
    width = max([28, *(len(f"{report.key} {report.name}") for report in reports)])
    header = f"{'dataset':<{width}} {'task':<13} " + " ".join(f"{c:>11}" for c in columns)
    lines = [header, "-" * len(header)]
    for report in reports:
        label = f"{report.key} {report.name}"
        values = " ".join(f"{report.counts.get(c, 0):>11}" for c in columns)
        lines.append(f"{label:<{width}} {report.task:<13} {values}")
    problems = [(report, problem) for report in reports for problem in report.problems]
    if problems:
        lines.append("")
        lines.append(f"{len(problems)} problem(s):")
        lines.extend(f"  {report.key} ({report.name}): {problem}" for report, problem in problems)
    else:
        lines.append("")
        lines.append("no problems found")
    return "\n".join(lines)
