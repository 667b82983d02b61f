"""Tasks: one class per task, registered by name in :mod:`findlit.tasks.registry`.

A task holds its prompts, losses, predictions, metrics, result writer, overlays and the ``predict``
requests it answers.

- :mod:`findlit.tasks.base`: the :class:`~findlit.tasks.base.Task` contract;
- :mod:`findlit.tasks.registry`: name -> task class (``register_task``, ``task_class``, ``task_names``);
- one module per task (:mod:`~findlit.tasks.segmentation`, :mod:`~findlit.tasks.grounding`,
  :mod:`~findlit.tasks.retrieval`, :mod:`~findlit.tasks.interleave`, :mod:`~findlit.tasks.interactive`),
  imported here so that they register;
- :mod:`findlit.tasks.requests`: a ``predict`` request -> the tasks that answer it -> one
  prediction per image (behind ``FINDModule.predict_step`` and ``Predictor``).

May import interface, losses, metrics, outputs, encoders, data and the top-level helpers (errors);
not training, inference or cli. Knows no Lightning.
"""

# isort: off
# imported to register, in this order: the default ``model.tasks`` (and so hyperparameters) follow it
from findlit.tasks import segmentation, grounding, retrieval, interleave, interactive  # noqa: F401
# isort: on
