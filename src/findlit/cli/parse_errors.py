"""Parse errors of the LightningCLI subcommands as one-line config errors naming the key and its file.

jsonargparse ends a failed parse by printing the whole usage (about 80 lines for ``findlit fit``)
and a message that, for a key inside a list entry (``data.train[0].pathz``), is a ten-line dump of
Union subtypes without the entry's index. :class:`FindArgumentParser` (LightningCLI's
``parser_class``) raises a :class:`~findlit.errors.ConfigError` instead, whose message
(:func:`config_error`) names the full key, with the list index, and the config file that set it
(or the command line), e.g.::

    findlit: config error: data.train[0].pathz: no such option (in configs/my_experiment.yaml)

Only the parser's final error is changed: jsonargparse's nested parsers (``exit_on_error=False``),
whose errors it catches and combines, keep raising ``ArgumentError``; ``--help`` and
``--print_config`` still exit as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from findlit.cli.config import (
    MISSING,
    KeyPath,
    config_files,
    format_key,
    key_source,
    load_config,
    value_at,
)
from findlit.errors import ConfigError

_NOT_ACCEPTED = re.compile(r"^(?:Group|Subcommand) '([^']*)' does not accept option '([^']*)'")
_OPTION_NOT_ACCEPTED = re.compile(r"^Option '([^']*)' is not accepted")
_PARSER_KEY = re.compile(r'^Parser key "([^"]*)":[ \t]*\n?(.*)', re.DOTALL)
_CLASS_PROBLEM = re.compile(r"^- Problem with given class_path '[^']*':\s*\n(.*)", re.DOTALL)
_EXPECTED = re.compile(r"^Expected a <class '([^']*)'>\. Got value: (.*)$", re.DOTALL)
_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class FindArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose parse errors are :class:`~findlit.errors.ConfigError` s."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Raise a ConfigError naming the key and its config file (nested parsers: as before)."""
        if not self.exit_on_error:  # a nested parse, whose error jsonargparse catches and combines
            super().error(message, ex)
        raise config_error(message, list(getattr(self, "args", None) or []))


def config_error(message: str, args: Sequence[str]) -> ConfigError:
    """A one-line ConfigError from jsonargparse's ``message``, for the command line ``args``.

    The key is made whole (``data.train`` + the failing entry's index + the option inside it) and
    followed by where it was set: the last ``--config`` file that has it, or the command line.
    Messages of no known form keep their first line.
    """
    files = config_files(args)
    parsed = _parse(message.strip())
    if parsed is None:
        return ConfigError(message.strip().splitlines()[0] if message.strip() else "invalid arguments")
    key, problem, bad_value = parsed
    key = _with_list_index(key, files, bad_value)
    where = key_source(key, files, args)
    suffix = f" ({where})" if where else ""
    return ConfigError(f"{format_key(key)}: {problem}{suffix}")


def _parse(message: str) -> tuple[KeyPath, str, Any] | None:
    """(key, problem, the offending value or None) of a jsonargparse message, or None."""
    match = _NOT_ACCEPTED.match(message)
    if match:
        group, option = match.groups()
        scope = [] if group in _SUBCOMMANDS else _split(group)
        return [*scope, *_split(option)], "no such option", None
    match = _PARSER_KEY.match(message)
    if not match:
        match = _OPTION_NOT_ACCEPTED.match(message)
        if match:
            # jsonargparse flattens an unknown mapping into dotted options: its first part is the key
            return [_split(match.group(1))[0]], "no such option", None
        expected = _EXPECTED.match(message)
        if expected:
            return [], f"expected {expected.group(1)}, got {expected.group(2).strip()!r}", expected.group(2)
        return None
    key, inner = _split(match.group(1)), _dedent(match.group(2))
    if inner.startswith("Does not validate against any of the Union subtypes"):
        cause = _union_cause(inner)
        if cause is None:
            return key, "does not match its type", None
        inner = cause
    nested = _parse(inner)
    if nested is None:
        return key, inner.splitlines()[0] if inner else "invalid value", None
    relative, problem, bad_value = nested
    return [*key, *relative], problem, bad_value


def _union_cause(message: str) -> str | None:
    """The error of the Union subtype that is not None (a list of dataclasses, a dataclass...)."""
    errors = message.split("\nErrors:\n", 1)
    if len(errors) < 2:
        return None
    body = errors[1].split("\nGiven value type:", 1)[0]
    for item in re.split(r"\n(?=  - )", "\n" + body):
        text = _dedent(item.strip("\n"))
        if not text or "Expected a <class 'NoneType'>" in text:
            continue
        problem = _CLASS_PROBLEM.match(text)
        if problem:
            return _dedent(problem.group(1))
        return text.removeprefix("- ").strip()
    return None


def _with_list_index(key: KeyPath, files: Sequence[str], bad_value: Any) -> KeyPath:
    """``key`` with the index of the failing entry after its first list (``data.train`` -> ``[0]``).

    jsonargparse names the list and the option inside the failing entry, not the entry: the entry
    is the first of the merged config's list that has that option (for an unknown option) or that
    holds the offending value there (for a wrong type).
    """
    try:
        config: Any = load_config(files) if files else {}
    except ConfigError:
        return key
    for position in range(1, len(key)):
        value = value_at(config, key[:position])
        if not isinstance(value, list):
            continue
        rest = key[position:]
        for index, entry in enumerate(value):
            found = value_at(entry, rest)
            if found is MISSING:
                continue
            if bad_value is None or str(found) == str(bad_value).strip():
                return [*key[:position], index, *rest]
        return key
    return key


def _split(dotted: str) -> KeyPath:
    return [part for part in dotted.split(".") if part]


def _dedent(text: str) -> str:
    lines = text.splitlines()
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents, default=0)
    return "\n".join(line[cut:] for line in lines).strip()
