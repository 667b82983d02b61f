"""The one registry of tasks: name -> :class:`~findlit.tasks.base.Task` subclass.

findlit's own tasks register when :mod:`findlit.tasks` is imported (in the order segmentation,
grounding, retrieval, interleave). A task defined elsewhere registers the same way, with
:func:`register_task` as a class decorator, and is then usable by name in ``model.tasks`` and in a
dataset's ``task``; :func:`unregister_task` takes it back out (e.g. at the end of a test).
"""

from __future__ import annotations

from typing import TypeVar

from findlit.errors import ConfigError
from findlit.tasks.base import Task

TaskT = TypeVar("TaskT", bound=type[Task])

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: TaskT) -> TaskT:
    """Register ``cls`` under its ``name`` (a class decorator; returns ``cls``).

    Raises:
        ValueError: ``cls`` has no name, or another class is registered under it.

    """
    name = cls.name
    if not name:
        raise ValueError(f"{cls.__qualname__} has no name: set its class attribute `name`")
    known = _TASKS.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"task {name!r} is registered already ({known.__module__}.{known.__qualname__})")
    _TASKS[name] = cls
    return cls


def unregister_task(name: str) -> None:
    """Remove the task registered as ``name`` (nothing when there is none)."""
    _TASKS.pop(name, None)


def task_names() -> list[str]:
    """The registered task names, in registration order."""
    return list(_TASKS)


def task_class(name: str, key: str = "model.tasks") -> type[Task]:
    """The task class registered as ``name``.

    Args:
        name: the task's name.
        key: the config key that gave ``name``, for the message.

    Raises:
        ConfigError: ``<key>: unknown task '<name>'; known: [...]``.

    """
    cls = _TASKS.get(name)
    if cls is None:
        raise ConfigError(f"{key}: unknown task {name!r}; known: {task_names()}")
    return cls


def tasks_fed_by(format_name: str) -> list[str]:
    """The registered tasks that datasets of ``format_name`` can feed."""
    return [name for name, cls in _TASKS.items() if format_name in cls.formats]
