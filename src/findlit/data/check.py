"""``findlit data check``: read and decode every record of every configured dataset.

It counts what is there and lists every problem with its file and record, before a long job finds them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from findlit.data.config import TASK_DATASETS, DatasetConfig, read_records
from findlit.data.errors import BadRecords, ConfigError, DataError
from findlit.data.sample import Sample

COUNTED = ("images", "segments", "captions", "refs", "sentences", "entities")


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
    dataset = TASK_DATASETS[(config.task, config.format)](
        config.name, data, None, key=key, on_bad_record="skip"
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


def format_reports(reports: Iterable[CheckReport]) -> str:
    """A plain-text table of counts per dataset followed by every problem."""
    reports = list(reports)
    columns = [*COUNTED, "bad records"]
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
