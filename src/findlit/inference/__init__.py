"""Inference: a trained checkpoint applied to images and prompts.

- :mod:`findlit.inference.predictor`: :class:`~findlit.inference.predictor.Predictor`, SAM-like: load a
  checkpoint, then predict on image files.

A request becomes predictions in :mod:`findlit.tasks.requests` (each task answers what it serves),
which :class:`~findlit.inference.predictor.Predictor` and ``FINDModule.predict_step`` both run; it
moved there from ``findlit.inference.batch_prediction`` so that training need not import inference.

May import training (a Predictor loads a FINDModule checkpoint) and everything below it; not cli.
"""
