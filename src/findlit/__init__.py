"""findlit: train and evaluate FIND interfaces over frozen foundation models."""

__version__ = "0.1.0"
