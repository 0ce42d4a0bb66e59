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


def cam_targets(target: str | int | None, n: int, predicted: Any = None) -> tuple[str, list[Any] | None]:
    """The head to explain and one pytorch-grad-cam target per image for a target name.

    Args:
        target: A diagnosis name or index, a name of :data:`HEAD_TARGETS` (``thickness``: the
            regression output; ``malignant``: log-odds of P(malignant)), or None (each image's
            predicted class).
        n: Images explained.
        predicted: With ``target`` None, each image's predicted class index (e.g. the suggested
            diagnosis of a calibrated bundle); None lets pytorch-grad-cam take each image's top logit.

    Raises:
        ConfigError: An unknown name or an index out of range.
    """
    if target is None:
        if predicted is None:
            return CAM_HEADS[0], None
        return CAM_HEADS[0], [ClassTarget(int(k)) for k in predicted]
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


#: Heat below this is fully transparent in :func:`overlay`: the skin stays visible, with no tint.
CAM_TRANSPARENT_BELOW = 0.2
#: Colour stops of the attention map (heat -> RGB): yellow, orange, red. No blue, so low values
#: never tint the lesion, and the map reads the same in the legend strip.
CAM_COLOUR_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (255, 235, 59)), (0.5, (255, 145, 0)), (1.0, (213, 0, 0)),
)
#: Grey the area outside the model's view is blended towards, and how strongly.
UNSEEN_GREY, UNSEEN_STRENGTH = 128, 0.7


def seen_box(image_shape: tuple[int, ...], preprocessing: dict[str, Any] | int) -> tuple[int, int, int, int]:
    """The part of an image the network sees through the eval transform, as ``(top, bottom, left, right)``.

    The eval transform (``backend.data.transforms.build_eval_transform``) resizes the short side to
    ``img_size`` and centre-crops a square; this maps that crop back to the original pixels (the
    same geometry as :func:`heatmap_to_image`).

    Args:
        image_shape: ``(H, W[, 3])`` of the original image.
        preprocessing: The model's preprocessing description (its ``img_size``) or the size itself.
    """
    size = int(preprocessing["img_size"] if isinstance(preprocessing, dict) else preprocessing)
    h, w = int(image_shape[0]), int(image_shape[1])
    scale = size / min(h, w)
    rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
    y0, x0 = (rh - size) // 2, (rw - size) // 2
    top, left = round(y0 / scale), round(x0 / scale)
    bottom, right = min(h, round((y0 + size) / scale)), min(w, round((x0 + size) / scale))
    return top, bottom, left, right


def seen_mask(image_shape: tuple[int, ...], preprocessing: dict[str, Any] | int) -> np.ndarray:
    """``(H, W)`` bool mask, True where the network sees the image (inside its centre crop; see :func:`seen_box`)."""
    top, bottom, left, right = seen_box(image_shape, preprocessing)
    mask = np.zeros((int(image_shape[0]), int(image_shape[1])), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def cam_colours(heat: np.ndarray) -> np.ndarray:
    """RGB float colours of heat values in ``[0, 1]`` (:data:`CAM_COLOUR_STOPS`), shape ``heat.shape + (3,)``."""
    xs = [x for x, _ in CAM_COLOUR_STOPS]
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    return np.stack([np.interp(heat, xs, [c[i] for _, c in CAM_COLOUR_STOPS]) for i in range(3)], axis=-1)


def cam_alpha(heat: np.ndarray, threshold: float = CAM_TRANSPARENT_BELOW) -> np.ndarray:
    """Opacity of each heat value: 0 up to ``threshold``, then growing linearly to 1 at heat 1."""
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    return np.clip((heat - threshold) / max(1.0 - threshold, 1e-6), 0.0, 1.0)


def legend_strip(width: int = 256, height: int = 14, background: int = 235) -> np.ndarray:
    """The colour legend of :func:`overlay`: heat 0 (left) to 1 (right), as it blends over a light grey.

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return overlay(np.full((height, width, 3), background, np.uint8), ramp, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4, seen: np.ndarray | None = None) -> np.ndarray:
    """Paint a heatmap over an RGB image, transparent where the heat is low, and grey what the model did not see.

    Each pixel is blended towards its colour (:func:`cam_colours`) by ``opacity * cam_alpha(heat)``:
    below :data:`CAM_TRANSPARENT_BELOW` the image is unchanged, so the skin stays visible and is
    never tinted. Where ``seen`` is False (outside the model's centre crop, :func:`seen_mask`) the
    image is washed towards grey, so nobody reads the border as "no attention".

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        heatmap: ``(h, w)`` values in ``[0, 1]``; resized to the image when sizes differ.
        opacity: Strongest blend (at heat 1): 0 returns the image unchanged (apart from the grey border).
        seen: Optional ``(H, W)`` bool mask of what the model saw.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ConfigError: On an opacity outside ``[0, 1]`` or a malformed image/heatmap/mask.
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
    if seen is not None and np.shape(seen) != image.shape[:2]:
        raise ConfigError(f"seen mask must have the image's shape {image.shape[:2]}, got {np.shape(seen)}")
    out = image.astype(np.float32)
    if opacity > 0:
        if heat.shape != image.shape[:2]:
            heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        alpha = (float(opacity) * cam_alpha(heat))[..., None]
        out = (1.0 - alpha) * out + alpha * cam_colours(heat)
    if seen is not None:
        unseen = ~np.asarray(seen, dtype=bool)
        out[unseen] = (1.0 - UNSEEN_STRENGTH) * out[unseen] + UNSEEN_STRENGTH * UNSEEN_GREY
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (for overlays written to disk or served by the app)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
