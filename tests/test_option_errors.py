"""jsonargparse's error messages (as this jsonargparse writes them) read as key, problem and value."""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser

from findlit.data.datamodule import MultiTaskDataModule
from findlit.option_errors import NO_SUCH_OPTION, first_line, format_key, read_message
from findlit.tasks.segmentation import SegmentationTask

DATASET = {"name": "p", "task": "segmentation", "format": "coco_panoptic", "paths": {"image_root": "x"}}


def message_of(target: type, config: dict[str, object], nested: str | None = None) -> str:
    """The message jsonargparse raises for ``config`` against ``target``'s signature."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(target, nested)
    with pytest.raises(Exception) as caught:
        parser.parse_object({nested: config} if nested else config)
    return str(caught.value)


@pytest.mark.parametrize(
    ("config", "key", "problem", "value"),
    [
        ({"weightz": 1}, ["weightz"], NO_SUCH_OPTION, None),
        ({"weightz": {"ce": 1}}, ["weightz"], NO_SUCH_OPTION, None),
        ({"num_points": "many"}, ["num_points"], "expected int, got 'many'", "many"),
        ({"weights": {"cee": 1}}, ["weights", "cee"], NO_SUCH_OPTION, None),
        ({"weights": {"ce": "x"}}, ["weights", "ce"], "expected float, got 'x'", "x"),
    ],
)
def test_task_option_messages(
    config: dict[str, object], key: list[str], problem: str, value: str | None
) -> None:
    assert read_message(message_of(SegmentationTask, config)) == (key, problem, value)


@pytest.mark.parametrize(
    ("entry", "key", "problem"),
    [
        ({"pathz": {"image_root": "x"}}, ["data", "train", "pathz"], NO_SUCH_OPTION),
        ({"paths": {"image_rot": "x"}}, ["data", "train", "paths", "image_rot"], NO_SUCH_OPTION),
        ({"batch_size": "many"}, ["data", "train", "batch_size"], "expected int, got 'many'"),
    ],
)
def test_a_list_entry_is_read_through_the_union_dump(
    entry: dict[str, object], key: list[str], problem: str
) -> None:
    """The list is named, not its entry: the caller finds the index (cli.config.with_list_index)."""
    dataset = {k: v for k, v in DATASET.items() if not (k == "paths" and ("pathz" in entry))} | entry
    message = message_of(MultiTaskDataModule, {"train": [dataset]}, "data")
    assert "Union" in message
    read = read_message(message)
    assert read is not None and read[:2] == (key, problem)


def test_lightning_cli_forms() -> None:
    assert read_message("Subcommand 'fit' does not accept option 'model.lrr'") == (
        ["model", "lrr"],
        NO_SUCH_OPTION,
        None,
    )
    assert read_message("Group 'model' does not accept option 'interface.hidden_dimm'") == (
        ["model", "interface", "hidden_dimm"],
        NO_SUCH_OPTION,
        None,
    )
    assert read_message("something else") is None
    assert first_line("something else\n  detail") == "something else"


def test_format_key() -> None:
    assert format_key(["data", "train", 0, "pathz"]) == "data.train[0].pathz"
    assert format_key(["model"]) == "model" and format_key([]) == ""
