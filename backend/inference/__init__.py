"""Inference: one trained model applied to images, with its risk rules, quality gate and explanations.

Import the submodules directly:

* :mod:`backend.inference.predictor`: ``Predictor`` (loading, forward pass, TTA, the batched path, Grad-CAM).
* :mod:`backend.inference.inputs`: ``PreparedInput``, ``prepare_input`` (decode once), ``Preprocessor``, metadata.
* :mod:`backend.inference.records`: ``Prediction``, ``RawOutputs``, ``OUTPUT_COLUMNS``, ``csv_value``.
* :mod:`backend.inference.batches`: the DataLoader dataset behind ``Predictor.iter_outputs``.
* :mod:`backend.inference.risk`: ``RiskConfig``, ``risk_index``, ``traffic_light``, ``assessed_light``,
  ``thickness_band``.
* :mod:`backend.inference.quality`: ``QualityConfig``, ``QualityFlag``, ``FeatureStats``, ``image_flags``.
* :mod:`backend.inference.explain`: ``LesionCAM``, ``cam_targets``, ``HEAD_TARGETS``, ``overlay``.
* :mod:`backend.inference.tta`: test-time augmentation; :mod:`backend.inference.onnx_engine`: ONNX Runtime.
"""
