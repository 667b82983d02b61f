"""Old module names of findlit, still importable: saved configs and scripts name them.

Until the package was laid out as ``cli/``, ``training/`` and ``inference/``, its modules sat at the
top (``findlit.slurm_requeue``, ``findlit.module``...). A saved ``config.yaml`` may name one (e.g.
``class_path: findlit.slurm_requeue.DeferredRequeue``), so importing an old name gives the module at
its new place (``findlit.inference.batch_prediction`` later moved on to ``findlit.tasks.requests``,
so that training need not import inference), the same module object (classes stay identical),
with a ``FutureWarning`` naming the new place. :func:`install` is called when ``findlit`` is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

MOVED: dict[str, str] = {
    "findlit.lightning_cli": "findlit.cli.train",
    "findlit.predict_cli": "findlit.cli.predict",
    "findlit.cache_cli": "findlit.cli.cache",
    "findlit.module": "findlit.training.module",
    "findlit.checkpoint_io": "findlit.training.checkpoint_io",
    "findlit.rng_states": "findlit.training.rng_states",
    "findlit.slurm_requeue": "findlit.training.slurm_requeue",
    "findlit.batch_prediction": "findlit.tasks.requests",
    "findlit.inference.batch_prediction": "findlit.tasks.requests",
    "findlit.predictor": "findlit.inference.predictor",
}
"""Old module name -> its module now."""


class _MovedModuleLoader(importlib.abc.Loader):
    """Loads an old name as the module at its new place (no second copy of the module)."""

    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new_name}; use the new name (the old one may go)",
            FutureWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new_name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module ran when it was imported."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """A spec whose loader returns the moved module, for an old name; None for any other."""
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new_name))


def install() -> None:
    """Put one :class:`MovedModuleFinder` at the end of ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
