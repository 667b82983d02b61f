"""model.interface is FINDInterface's signature as a dataclass; task options are checked per task."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, cast

import pytest

from findlit.errors import ConfigError
from findlit.interface.find import FINDInterface
from findlit.interface.prototype import Prototype
from findlit.losses import LossWeights
from findlit.training.model_options import (
    FROM_ENCODERS,
    InterfaceOptions,
    interface_hparams,
    interface_kwargs,
    task_classes,
    task_kwargs,
    task_options_problem,
)


def test_interface_options_are_the_interface_signature() -> None:
    """One source of truth: every FINDInterface argument but the encoders' is an option, same default."""
    parameters = inspect.signature(FINDInterface.__init__).parameters
    expected = {name: p.default for name, p in parameters.items() if name not in ("self", *FROM_ENCODERS)}
    fields = {field.name: field.default for field in dataclasses.fields(cast(Any, InterfaceOptions))}
    assert fields == expected
    assert "mask_pooling" in fields and "image_pooling" in fields
    assert InterfaceOptions.__doc__ == FINDInterface.__doc__  # the help of each option


def test_interface_kwargs_from_the_dataclass_a_dict_or_none() -> None:
    options = InterfaceOptions(hidden_dim=32, mask_pooling=True)
    kwargs = interface_kwargs(options)
    assert kwargs["hidden_dim"] == 32 and kwargs["mask_pooling"] is True and kwargs["num_layers"] == 9
    assert interface_kwargs({"hidden_dim": 32}) == {"hidden_dim": 32}  # a checkpoint's hparams
    assert interface_kwargs(None) == {}
    with pytest.raises(ConfigError, match=r"^model\.interface\.hidden_dimm: no such option"):
        interface_kwargs({"hidden_dimm": 32})


def test_a_prototype_round_trips_through_plain_hparams() -> None:
    from findlit.interface.find import default_prototype

    prototype = default_prototype()
    plain = interface_hparams({"prototype": prototype, "hidden_dim": 8})
    assert isinstance(plain["prototype"], dict) and plain["hidden_dim"] == 8
    again = interface_kwargs(plain)["prototype"]
    assert isinstance(again, Prototype) and again == prototype


def test_task_options_are_checked_against_each_task_class() -> None:
    tasks = list(task_classes())
    assert task_options_problem({"segmentation": {"num_points": 64}}, tasks) is None
    assert task_options_problem({"segmentation": {"weightz": 1}}, tasks) == (
        ["model", "task_options", "segmentation", "weightz"],
        "no such option",
    )
    assert task_options_problem({"grounding": {"num_points": "x"}}, tasks) == (
        ["model", "task_options", "grounding", "num_points"],
        "expected int, got 'x'",
    )
    key, problem = task_options_problem({"retrieval": {}}, ["segmentation"]) or ([], "")
    assert key == ["model", "task_options", "retrieval"] and "not in model.tasks" in problem
    key, problem = task_options_problem({"segmentation": 3}, tasks) or ([], "")
    assert key == ["model", "task_options", "segmentation"] and "expected a mapping" in problem


def test_task_kwargs_build_what_was_given() -> None:
    kwargs = task_kwargs("segmentation", {"weights": {"ce": 1.0}, "num_points": 64})
    assert kwargs == {"weights": LossWeights(ce=1.0), "num_points": 64}  # no defaults added
    with pytest.raises(
        ConfigError, match=r"^model\.task_options\.segmentation\.weights\.cee: no such option"
    ):
        task_kwargs("segmentation", {"weights": {"cee": 1.0}})
