"""Grad-CAM for LesionNet through pytorch-grad-cam: targets, a context-managed CAM and an overlay.

pytorch-grad-cam pairs each target with one row of the model's output, so the CAM must see one
head as one 2-D tensor: :class:`LesionCAM` wraps the network in
:class:`~backend.models.lesion_net.SingleHeadWrapper` (``diagnosis`` logits ``(B, 8)`` or
``thickness`` ``(B, 1)``), and :class:`ClassTarget` / :class:`ThicknessTarget` pick the score to
explain. The CAM layer and, for ViTs, the token-to-map reshape come from the backbone
(:attr:`Backbone.cam_layer`, :attr:`Backbone.reshape_transform`), so every registered backbone works.

Hooks are always released: :class:`LesionCAM` is a context manager that removes pytorch-grad-cam's
hooks and its own on exit, even when the CAM raises, and drops the retained autograd graph, so
hundreds of consecutive explanations do not grow memory.

Speed: Grad-CAM only needs the gradient of the score with respect to the CAM layer's output,
which does not depend on anything before that layer. With ``fast=True`` (default) the parameters
are frozen and a forward hook restarts the autograd graph at the CAM layer's output, so the
forward pass up to that layer builds no graph and the backward pass covers only the layers after
it (for a CNN: the last stage's output, pooling and heads) instead of the whole network. The
heatmap is the same as with a full backward pass.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from backend.data.schema import DIAGNOSES
from backend.errors import ConfigError
from backend.models.lesion_net import SingleHeadWrapper

#: Heads Grad-CAM can explain: the network's own (:attr:`SingleHeadWrapper.HEADS`), the diagnosis logits first.
CAM_HEADS: tuple[str, ...] = SingleHeadWrapper.HEADS
#: Grad-CAM targets that name a whole head (``thickness``, ``malignant``) rather than a diagnosis.
HEAD_TARGETS: tuple[str, ...] = CAM_HEADS[1:]


class ClassTarget:
    """Grad-CAM target: the logit of diagnosis ``index`` (works on one row or on ``(B, K)``)."""

    def __init__(self, index: int) -> None:
        self.index = int(index)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score to explain."""
        return model_output[..., self.index]


class ThicknessTarget:
    """Grad-CAM target: the (normalised) thickness regression output, column 0 of the thickness head."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score to explain."""
        return model_output[..., 0]


def _restart_graph(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: let autograd start at this layer's output (see the module docstring)."""
    return output.detach().requires_grad_(True)


class LesionCAM:
    """Grad-CAM on one head of a LesionNet, as a context manager that always releases its hooks.

    Example::

        with LesionCAM(net, head="diagnosis") as cam:
            heatmaps = cam(images, [ClassTarget(0)] * len(images))   # (B, H, W) in [0, 1]

    Args:
        net: The network (eval mode is set; the network is not copied).
        head: ``diagnosis`` (``B, 8`` logits), ``thickness`` (``B, 1``) or ``malignant`` (``B, 1`` log-odds).
        meta: Encoded metadata for the images explained, ``(B, meta_dim)``, or None.
        fast: Restart the autograd graph at the CAM layer (same heatmap, much less work).
    """

    def __init__(self, net: torch.nn.Module, head: str = "diagnosis", meta: torch.Tensor | None = None,
                 fast: bool = True) -> None:
        if head not in CAM_HEADS:
            raise ConfigError(f"Grad-CAM head must be one of {list(CAM_HEADS)}, got {head!r}")
        self.net, self.head, self.meta, self.fast = net, head, meta, fast
        self.outputs: torch.Tensor | None = None
        self._cam: Any = None
        self._hook: Any = None
        self._grad_state: list[tuple[torch.nn.Parameter, bool]] = []

    def __enter__(self) -> LesionCAM:
        from pytorch_grad_cam import GradCAM


        backbone = self.net.backbone
        layer = backbone.cam_layer
        wrapper = SingleHeadWrapper(self.net, head=self.head, meta=self.meta)
        try:
            self._grad_state = [(p, p.requires_grad) for p in self.net.parameters()]
            for param, _ in self._grad_state:
                param.requires_grad_(not self.fast)  # the slow path needs a graph through every layer
            if self.fast:
                self._hook = layer.register_forward_hook(_restart_graph, prepend=True)
            self._cam = GradCAM(model=wrapper, target_layers=[layer], reshape_transform=backbone.reshape_transform)
        except BaseException:
            self._release()
            raise
        return self

    def __call__(self, images: torch.Tensor, targets: list[Any] | None = None) -> np.ndarray:
        """Heatmaps ``(B, H, W)`` in ``[0, 1]`` at the input resolution.

        Args:
            images: Preprocessed batch ``(B, 3, H, W)`` (not an inference-mode tensor).
            targets: One target per image (:class:`ClassTarget`, :class:`ThicknessTarget`), or
                None for the highest-scoring column of the head (the predicted class).
        """
        if self._cam is None:
            raise RuntimeError("LesionCAM must be used inside a with-block")
        if targets is not None and len(targets) != images.shape[0]:
            raise ValueError(f"{len(targets)} targets for {images.shape[0]} images")
        if self.meta is not None and self.meta.shape[0] != images.shape[0]:
            raise ValueError(f"metadata has {self.meta.shape[0]} rows for {images.shape[0]} images")
        try:
            with torch.enable_grad():
                heatmaps = self._cam(input_tensor=images, targets=targets)
            self.outputs = self._cam.outputs.detach()
        finally:
            self._cam.outputs = None  # drops the retained graph
            self._cam.activations_and_grads.clear()
        return np.clip(np.nan_to_num(heatmaps, nan=0.0), 0.0, 1.0).astype(np.float32)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._release()

    def _release(self) -> None:
        if self._cam is not None:
            self._cam.activations_and_grads.release()
            self._cam.outputs = None
            self._cam = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for param, flag in self._grad_state:
            param.requires_grad_(flag)
        self._grad_state = []


def cam_targets(target: str | int | None, n: int) -> tuple[str, list[Any] | None]:
    """The head to explain and one pytorch-grad-cam target per image for a target name.

    Args:
        target: A diagnosis name or index, a name of :data:`HEAD_TARGETS` (``thickness``: the
            regression output; ``malignant``: log-odds of P(malignant)), or None (each image's
            predicted class).
        n: Images explained.

    Raises:
        ConfigError: An unknown name or an index out of range.
    """
    if target is None:
        return CAM_HEADS[0], None
    if isinstance(target, str) and target in HEAD_TARGETS:
        return target, [ThicknessTarget() for _ in range(n)]
    if isinstance(target, str):
        if target not in DIAGNOSES:
            raise ConfigError(f"unknown Grad-CAM target {target!r}; expected one of "
                              f"{[*DIAGNOSES, *HEAD_TARGETS]} or None (predicted class)")
        target = DIAGNOSES.index(target)
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < len(DIAGNOSES):
        raise ConfigError(f"Grad-CAM class index must be in 0..{len(DIAGNOSES) - 1}, got {target!r}")
    return CAM_HEADS[0], [ClassTarget(int(target)) for _ in range(n)]


def heatmap_to_image(cam: np.ndarray, image_shape: tuple[int, ...], img_size: int) -> np.ndarray:
    """Map a heatmap of the network input back onto the image it was computed from.

    The eval transform resizes the short side to ``img_size`` and centre-crops a square; the
    heatmap is placed where that crop came from (zero on the borders the network did not see)
    and resized to the image's ``(H, W)``.

    Args:
        cam: ``(img_size, img_size)`` heatmap.
        image_shape: Shape of the original image (``H, W[, 3]``).
        img_size: The network input side.

    Returns:
        ``(H, W)`` float32 heatmap in ``[0, 1]``.
    """
    import cv2

    h, w = int(image_shape[0]), int(image_shape[1])
    scale = img_size / min(h, w)
    rh, rw = max(img_size, round(h * scale)), max(img_size, round(w * scale))
    canvas = np.zeros((rh, rw), dtype=np.float32)
    y0, x0 = (rh - img_size) // 2, (rw - img_size) // 2
    canvas[y0 : y0 + img_size, x0 : x0 + img_size] = cv2.resize(cam.astype(np.float32), (img_size, img_size))
    out = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """Blend a heatmap (JET colours) over an RGB image: ``(1 - opacity) * image + opacity * colours``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        heatmap: ``(h, w)`` values in ``[0, 1]``; resized to the image when sizes differ.
        opacity: 0 returns the image unchanged, 1 only the heatmap colours.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ConfigError: On an opacity outside ``[0, 1]`` or a malformed image/heatmap.
    """
    import cv2

    if not 0.0 <= float(opacity) <= 1.0:
        raise ConfigError(f"overlay opacity must be in [0, 1], got {opacity}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"overlay needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ConfigError(f"heatmap must be 2-D, got shape {heat.shape}")
    if opacity == 0:
        return image.copy()
    if heat.shape != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.uint8(np.clip(heat, 0.0, 1.0) * 255), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)
    blended = (1.0 - opacity) * image.astype(np.float32) + opacity * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (for overlays written to disk or served by the app)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
