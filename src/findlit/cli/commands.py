"""The names of the LightningCLI subcommands, read by the dispatcher and by the LightningCLI runner.

Kept apart from both so that the dispatcher knows them without importing Lightning.
"""

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
"""The LightningCLI subcommands (see :mod:`findlit.cli.train`)."""
