"""jsonargparse's error messages read as the key they name and what is wrong with it.

jsonargparse checks configs against signatures (the ``findlit`` subcommands' parser, the ``data``
section of ``data check`` and ``cache``, each task's options) and says what is wrong in messages
of a few forms, nested for nested keys and, for a list of dataclasses, wrapped in a dump of the
Union's subtypes. :func:`read_message` takes them apart, so each caller can name the whole key
in one line: ``model.task_options.segmentation.weightz: no such option``.
"""

from __future__ import annotations

import re

KeyPath = list[str | int]
"""A config key as its parts: ``["data", "train", 0, "paths"]`` is ``data.train[0].paths``."""

NO_SUCH_OPTION = "no such option"

_NOT_ACCEPTED = re.compile(r"^(?:Group|Subcommand) '([^']*)' does not accept option '([^']*)'")
_OPTION_NOT_ACCEPTED = re.compile(r"^Option '([^']*)' is not accepted")
_PARSER_KEY = re.compile(r'^Parser key "([^"]*)":[ \t]*\n?(.*)', re.DOTALL)
_CLASS_PROBLEM = re.compile(r"^- Problem with given class_path '[^']*':\s*\n(.*)", re.DOTALL)
_EXPECTED = re.compile(r"^Expected a <class '([^']*)'>\. Got value: (.*)$", re.DOTALL)
_UNION = "Does not validate against any of the Union subtypes"
_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def format_key(key: KeyPath) -> str:
    """``["data", "train", 0, "pathz"]`` -> ``data.train[0].pathz``."""
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def read_message(message: str) -> tuple[KeyPath, str, str | None] | None:
    """(key, problem, offending value) of a jsonargparse error message; None for another form.

    The key is relative to the parser that raised it; the value is the text jsonargparse shows
    for a value of the wrong type (None for an unknown option). jsonargparse names a list (e.g.
    ``data.train``), not its entry: the caller finds the index in the config if it needs it.
    """
    message = message.strip()
    match = _NOT_ACCEPTED.match(message)
    if match:
        group, option = match.groups()
        scope = [] if group in _SUBCOMMANDS else _split(group)
        return [*scope, *_split(option)], NO_SUCH_OPTION, None
    match = _OPTION_NOT_ACCEPTED.match(message)
    if match:
        # jsonargparse flattens the mapping under an unknown key into dotted options: its first part
        return [_split(match.group(1))[0]], NO_SUCH_OPTION, None
    match = _EXPECTED.match(message)
    if match:
        value = match.group(2).strip()
        return [], f"expected {match.group(1)}, got {value!r}", value
    match = _PARSER_KEY.match(message)
    if not match:
        return None
    key, inner = _split(match.group(1)), _dedent(match.group(2))
    if inner.startswith(_UNION):
        cause = _union_cause(inner)
        if cause is None:
            return key, "does not match its type", None
        inner = cause
    nested = read_message(inner)
    if nested is None:
        return key, inner.splitlines()[0] if inner else "invalid value", None
    relative, problem, value = nested
    return [*key, *relative], problem, value


def first_line(message: str) -> str:
    """The first line of a message of no known form (the rest is jsonargparse's detail)."""
    lines = message.strip().splitlines()
    return lines[0] if lines else "invalid arguments"


def _union_cause(message: str) -> str | None:
    """The error of the Union subtype that is not None (a list of dataclasses, a dataclass...)."""
    errors = message.split("\nErrors:\n", 1)
    if len(errors) < 2:
        return None
    body = errors[1].split("\nGiven value type:", 1)[0]
    items: list[list[str]] = []
    bullet = None  # the indent of this list's bullets: deeper ones belong to a nested message
    for line in body.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("- ") and bullet in (None, len(line) - len(stripped)):
            bullet = len(line) - len(stripped)
            items.append([])
        if items:
            items[-1].append(line)
    for item in items:
        text = _dedent("\n".join(item))
        if not text or "Expected a <class 'NoneType'>" in text:
            continue
        problem = _CLASS_PROBLEM.match(text)
        if problem:
            return _dedent(problem.group(1))
        return text.removeprefix("- ").strip()
    return None


def _split(dotted: str) -> KeyPath:
    return [part for part in dotted.split(".") if part]


def _dedent(text: str) -> str:
    lines = text.splitlines()
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents, default=0)
    return "\n".join(line[cut:] for line in lines).strip()
