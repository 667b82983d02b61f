"""findlit: train and evaluate FIND interfaces over frozen foundation models."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from findlit.predictor import Predictor

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``findlit.Predictor``, imported on first use (it pulls in torch and Lightning)."""
    if name == "Predictor":
        from findlit.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'findlit' has no attribute {name!r}")


__all__ = ["Predictor", "__version__"]
