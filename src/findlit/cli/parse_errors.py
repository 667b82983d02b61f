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

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from findlit.cli.config import config_files, key_source, load_config, with_list_index
from findlit.errors import ConfigError
from findlit.option_errors import first_line, format_key, read_message


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
    read = read_message(message)
    files = config_files(args)
    if read is None:
        # jsonargparse says "Problems parsing config" or "Unexpected config" without the file
        return ConfigError(unreadable_config(files) or first_line(message))
    key, problem, value = read
    try:
        config: Any = load_config(files) if files else {}
    except ConfigError:
        config = {}
    key = with_list_index(key, config, value)
    where = key_source(key, files, args)
    return ConfigError(f"{format_key(key)}: {problem}{f' ({where})' if where else ''}")


def unreadable_config(files: Sequence[str]) -> str | None:
    """What is wrong with the first ``--config`` file that is no YAML mapping, naming it; else None."""
    for path in files:
        try:
            content = yaml.safe_load(Path(path).read_text())
        except OSError as error:
            return f"{path}: cannot read the config file ({error.strerror})"
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or "not YAML"
            return f"{path}: not valid YAML{where}: {problem}"
        if content is not None and not isinstance(content, dict):
            return f"{path}: a config file must be a mapping of sections, got a YAML {type(content).__name__}"
    return None
