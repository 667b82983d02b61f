"""Training: the LightningModule and what a run needs around it (knows Lightning).

- :mod:`findlit.training.module`: :class:`~findlit.training.module.FINDModule`, frozen encoders,
  the FIND interface and the registered tasks, routed by ``batch["task"]``;
- :mod:`findlit.training.optimization`: FIND's AdamW parameter groups and learning-rate schedule;
- :mod:`findlit.training.checkpoint_io`: atomic, ``weights_only`` checkpoint files;
- :mod:`findlit.training.rng_states`: generator states saved in checkpoints, restored on resume;
- :mod:`findlit.training.slurm_requeue`: SLURM preemption (checkpoint, requeue, resume).

May import tasks, interface, losses, metrics, outputs, encoders, data and errors; not cli or inference.
"""
