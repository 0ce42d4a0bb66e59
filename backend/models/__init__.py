"""Networks: backbone registry, DermaResNet-SE with GeM, metadata fusion, heads and LesionNet.

Import the submodules directly (this package imports nothing, so configs load without torch):

* :mod:`backend.models.config`: ``ModelConfig``.
* :mod:`backend.models.registry`: ``create_backbone``, ``register_backbone``, ``list_backbones``,
  ``load_backbone_weights``, the ``Backbone`` interface.
* :mod:`backend.models.lesion_net`: ``build_model``, ``LesionNet``, ``LesionOutput``, ``SingleHeadWrapper``.
* :mod:`backend.models.heads`: ``ThicknessScaler`` and the fusion/head layers.
"""
