"""Tasks: prompts, targets, matching, losses and post-processing per task."""
