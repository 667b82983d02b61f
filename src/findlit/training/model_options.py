"""The typed options of the ``model`` section: the interface's and each task's.

``model.interface`` is an :data:`InterfaceOptions`: a frozen dataclass generated from the signature
of :class:`~findlit.interface.find.FINDInterface` (its fields, types, defaults and docstring, less
``in_channels`` and ``text_dim``, which the encoders give), so the two cannot drift apart. Being a
dataclass in ``FINDModule``'s signature, jsonargparse checks every key and type of it when the
config is parsed, and ``findlit fit --help`` / ``--print_config`` list every option.

``model.task_options.<task>`` holds the keyword arguments of that task's class; the tasks are an
open set (a name -> class lookup, :func:`task_classes`), so they are checked against each class's
signature after parsing, before anything is built (:func:`task_options_problem`), by the CLI and
by ``FINDModule`` itself (:func:`task_kwargs`).

Checkpoints keep both as plain dicts (they load with ``weights_only=True``), and a dict is accepted
wherever an :data:`InterfaceOptions` is (``FINDModule.load_from_checkpoint``, Python callers).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from jsonargparse import ArgumentParser

from findlit.errors import ConfigError
from findlit.interface.find import FINDInterface
from findlit.interface.prototype import Prototype
from findlit.option_errors import NO_SUCH_OPTION, KeyPath, first_line, format_key, read_message

if TYPE_CHECKING:
    from findlit.tasks.base import Task
from findlit.tasks.registry import task_class, task_names

INTERFACE_KEY = "model.interface"
TASK_OPTIONS_KEY = "model.task_options"
FROM_ENCODERS = ("in_channels", "text_dim")
"""FINDInterface arguments that the module takes from its encoders, not from the config."""


def options_dataclass(name: str, function: Callable[..., Any], skip: Sequence[str] = ()) -> type:
    """A frozen dataclass of ``function``'s parameters (less ``self`` and ``skip``), with its docstring.

    Each field has the parameter's type hint and default; ``function`` is a class (its ``__init__``
    is read) or a function. The docstring is the class's, whose ``Args:`` jsonargparse shows as
    each field's help.
    """
    init = cast(Any, function).__init__ if isinstance(function, type) else function
    hints = typing.get_type_hints(init)
    fields: list[tuple[str, Any, Any]] = []
    for parameter in inspect.signature(init).parameters.values():
        if parameter.name == "self" or parameter.name in skip:
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"{function.__qualname__}: *{parameter.name} cannot be a config option")
        if parameter.default is parameter.empty:
            fields.append((parameter.name, hints[parameter.name], dataclasses.field()))
        else:
            fields.append(
                (parameter.name, hints[parameter.name], dataclasses.field(default=parameter.default))
            )
    options = dataclasses.make_dataclass(name, fields, frozen=True)
    options.__module__ = __name__
    options.__doc__ = function.__doc__
    return options


if TYPE_CHECKING:

    class InterfaceOptions:
        """What mypy sees of the generated dataclass: FINDInterface's keyword arguments."""

        def __init__(self, **options: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

else:
    InterfaceOptions = options_dataclass("InterfaceOptions", FINDInterface, skip=FROM_ENCODERS)
    """``model.interface``: the keyword arguments of FINDInterface but ``in_channels`` and ``text_dim``."""


def interface_fields() -> list[str]:
    """The option names of ``model.interface``, in signature order."""
    return [field.name for field in dataclasses.fields(cast(Any, InterfaceOptions))]


def interface_kwargs(options: InterfaceOptions | Mapping[str, Any] | None) -> dict[str, Any]:
    """FINDInterface's keyword arguments from ``model.interface`` (a dataclass, a dict or None).

    A dict (a checkpoint's hyperparameters, a Python caller) holds some of the fields; its
    ``prototype`` may be the plain form :func:`interface_hparams` stores.

    Raises:
        ConfigError: a key that is not an option, naming ``model.interface.<key>``.

    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        return {name: getattr(options, name) for name in interface_fields()}
    unknown = sorted(set(options) - set(interface_fields()))
    if unknown:
        raise ConfigError(
            f"{INTERFACE_KEY}.{unknown[0]}: {NO_SUCH_OPTION}; the options are {', '.join(interface_fields())}"
        )
    kwargs = dict(options)
    prototype = kwargs.get("prototype")
    if isinstance(prototype, Mapping):
        kwargs["prototype"] = Prototype.from_dict(
            prototype.get("types", prototype), f"{INTERFACE_KEY}.prototype"
        )
    return kwargs


def interface_hparams(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``model.interface`` as plain data for a checkpoint (a Prototype as its dict form)."""
    return {
        name: dataclasses.asdict(value) if isinstance(value, Prototype) else value
        for name, value in kwargs.items()
    }


def task_classes() -> Mapping[str, type[Task]]:
    """Task name -> task class: the tasks a ``model`` section may name.

    The task registry (:mod:`findlit.tasks.registry`), in registration order.
    """
    return {name: task_class(name) for name in task_names()}


def task_options_problem(
    task_options: Mapping[str, Any] | None, tasks: Sequence[str]
) -> tuple[KeyPath, str] | None:
    """What is wrong with ``model.task_options`` for ``model.tasks``, as (key, problem), or None.

    Each task's options must be keyword arguments of its class's ``__init__``, of their types.
    The tasks themselves come first: each must be a known one.
    """
    unknown = sorted(set(tasks) - set(task_classes()))
    if unknown:
        return ["model", "tasks"], f"unknown task(s) {unknown}; choose from {list(task_classes())}"
    for name, options in (task_options or {}).items():
        key: KeyPath = ["model", "task_options", str(name)]
        if name not in tasks:
            return key, f"options for a task that is not in model.tasks {list(tasks)}"
        try:
            _parse_task_options(task_classes()[name], options)
        except _OptionError as problem:
            return [*key, *problem.key], problem.problem
    return None


def task_kwargs(task: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments of task ``task``'s class from its options (``weights`` as LossWeights...).

    Raises:
        ConfigError: an option the class does not take, or a value of the wrong type, naming
            ``model.task_options.<task>.<option>``.

    """
    try:
        return _parse_task_options(task_classes()[task], options or {})
    except _OptionError as problem:
        raise ConfigError(
            f"{format_key(['model', 'task_options', task, *problem.key])}: {problem.problem}"
        ) from None


class _OptionError(Exception):
    def __init__(self, key: KeyPath, problem: str):
        super().__init__(problem)
        self.key, self.problem = key, problem


def _parse_task_options(task: type[Task], options: Any) -> dict[str, Any]:
    """``options`` checked against ``task.__init__`` and built (dataclass fields as their classes)."""
    if not isinstance(options, Mapping):
        raise _OptionError([], f"expected a mapping of {task.__name__}'s options, got {options!r}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(task)
    try:
        parsed = parser.instantiate(parser.parse_object(dict(options)))
    except Exception as error:  # jsonargparse's ArgumentError, whose message names the key
        read = read_message(str(error))
        if read is None:
            raise _OptionError([], first_line(str(error))) from None
        raise _OptionError(read[0], read[1]) from None
    # only what was given: the module fills other defaults (num_proposals: the interface's)
    return {name: parsed[name] for name in options}
