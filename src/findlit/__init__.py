"""findlit: train and evaluate FIND interfaces over frozen foundation models."""

from typing import TYPE_CHECKING

from findlit import moved_modules

if TYPE_CHECKING:
    from findlit.inference.predictor import Predictor

moved_modules.install()

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``findlit.Predictor``, imported on first use (it pulls in torch and Lightning)."""
    if name == "Predictor":
        from findlit.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'findlit' has no attribute {name!r}")


__all__ = ["Predictor", "__version__"]
