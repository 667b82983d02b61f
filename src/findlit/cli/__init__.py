"""The ``findlit`` command: the dispatcher and its subcommands (knows Lightning).

- :mod:`findlit.cli.main`: the dispatcher (``findlit <subcommand> ...``) and its usage text;
- :mod:`findlit.cli.train`: ``fit``, ``validate``, ``test`` and ``predict --config`` (LightningCLI);
- :mod:`findlit.cli.predict`: ``predict`` on image files (no config);
- :mod:`findlit.cli.cache`: ``cache``, the vision feature caches of a split;
- :mod:`findlit.cli.data`: ``data synth`` and ``data check``;
- :mod:`findlit.cli.config`: the one loader of experiment YAMLs outside LightningCLI.

May import every other part of findlit; nothing in findlit imports it.
"""

from findlit.cli.main import main

__all__ = ["main"]
