"""Inference: a trained checkpoint applied to images and prompts.

- :mod:`findlit.inference.batch_prediction`: a batch and a request -> one prediction per image
  (behind :class:`~findlit.inference.predictor.Predictor` and ``FINDModule.predict_step``);
- :mod:`findlit.inference.predictor`: :class:`~findlit.inference.predictor.Predictor`, SAM-like: load a
  checkpoint, then predict on image files.

May import training (a Predictor loads a FINDModule checkpoint) and everything below it; not cli.
"""
