"""Tasks: prompts, targets, matching, losses and post-processing per task.

May import interface, losses, metrics, outputs, encoders, data and the top-level helpers (errors);
not training, inference or cli.
"""
