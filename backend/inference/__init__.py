"""Inference: one trained model applied to images, with its risk rules, quality gate and explanations.

Import the submodules directly:

* :mod:`backend.inference.predictor`: ``Predictor``, ``Prediction``, ``RawOutputs``.
* :mod:`backend.inference.risk`: ``RiskConfig``, ``risk_index``, ``traffic_light``, ``thickness_band``.
* :mod:`backend.inference.quality`: ``QualityConfig``, ``QualityFlag``, ``FeatureStats``, ``image_flags``.
* :mod:`backend.inference.explain`: ``LesionCAM``, ``ClassTarget``, ``ThicknessTarget``, ``overlay``.
* :mod:`backend.inference.tta`: test-time augmentation; :mod:`backend.inference.onnx_engine`: ONNX Runtime.
"""
