"""The training loop's metrics: torchmetrics collections with the definitions of :mod:`backend.metrics.classification`.

The Lightning module updates these every validation/test step; torchmetrics gathers the states
across DDP ranks before computing. Where a torchmetrics class computes something else than the
shared definition, a subclass here corrects it:

* :class:`BalancedAccuracy`: ``MulticlassRecall(average="macro")`` counts a class that is predicted
  but absent from the target as recall 0; the shared definition (sklearn, ISIC scorer) leaves it out.
* :class:`DefinedAUROC`: a class without positives or negatives has NaN AUROC (torchmetrics: 0),
  and the macro AUROC averages the defined classes.

Macro F1 already agrees: torchmetrics drops classes with ``tp + fp + fn == 0``, which leaves the
classes present in the truth or the predictions, as sklearn's default does.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torchmetrics import MeanAbsoluteError, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.utilities.data import dim_zero_cat

from backend.data.schema import DIAGNOSES


class BalancedAccuracy(MulticlassConfusionMatrix):
    """Mean recall over the classes present in the target (:func:`backend.metrics.classification.balanced_accuracy`)."""

    def compute(self) -> torch.Tensor:
        """The balanced accuracy of the accumulated confusion matrix (NaN when it is empty)."""
        cm = self.confmat.double()
        support = cm.sum(dim=1)
        present = support > 0
        if not bool(present.any()):
            return torch.tensor(float("nan"), device=cm.device)
        recall = cm.diagonal()[present] / support[present]
        return recall.mean().float()


class DefinedAUROC(MulticlassAUROC):
    """One-vs-rest AUROC that is NaN (not 0) for a class lacking positives or negatives.

    With ``macro=True`` it returns the mean over the defined classes
    (:func:`backend.metrics.classification.macro_auroc`); otherwise the per-class vector
    (:func:`backend.metrics.classification.class_auroc` of each class).
    """

    def __init__(self, num_classes: int, macro: bool, **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, average="none", thresholds=None, **kwargs)
        self.macro = macro

    def compute(self) -> torch.Tensor:
        """Per-class AUROC, or their mean over the defined classes."""
        target = dim_zero_cat(self.target).long()
        counts = torch.bincount(target[target >= 0], minlength=self.num_classes)
        defined = (counts > 0) & (counts < target.numel())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*samples in targets.*")
            per_class = super().compute()
        per_class = torch.where(defined, per_class, torch.full_like(per_class, float("nan")))
        if not self.macro:
            return per_class
        if not bool(defined.any()):
            return torch.tensor(float("nan"), device=per_class.device)
        return per_class[defined].mean()


def build_classification_metrics(num_classes: int = len(DIAGNOSES)) -> MetricCollection:
    """Per-epoch diagnosis metrics for Lightning: update with ``(probs (N, C), target (N,))``.

    Targets equal to ``-1`` are ignored, so a batch may be passed whole. Keys (clone with a prefix
    such as ``val/``): ``accuracy``, ``balanced_accuracy``, ``f1_macro``, ``f1_weighted``,
    ``auroc_macro`` (scalars); ``precision``, ``recall``, ``f1``, ``auroc`` (per-class vectors in
    head order; undefined AUROC is NaN) and ``confusion_matrix`` (rows = truth, counts).

    Args:
        num_classes: Number of diagnosis classes (the model head size).

    Returns:
        A fresh, un-prefixed collection.
    """
    common = {"num_classes": num_classes, "ignore_index": -1}
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(average="micro", **common),
            "balanced_accuracy": BalancedAccuracy(**common),
            "f1_macro": MulticlassF1Score(average="macro", **common),
            "f1_weighted": MulticlassF1Score(average="weighted", **common),
            "precision": MulticlassPrecision(average="none", **common),
            "recall": MulticlassRecall(average="none", **common),
            "f1": MulticlassF1Score(average="none", **common),
            "auroc_macro": DefinedAUROC(macro=True, **common),
            "auroc": DefinedAUROC(macro=False, **common),
            "confusion_matrix": MulticlassConfusionMatrix(**common),
        }
    )


def build_auxiliary_metrics(prefix: str = "") -> MetricCollection:
    """Per-epoch benign/malignant and thickness metrics for Lightning.

    Keys: ``auroc_malignant`` (update with the malignant probability and the 1/0 label of every
    row) and ``thickness_mae_mm`` (update with predicted and true mm of the exact labels). The
    malignant AUROC keeps torchmetrics' behaviour on a split with one class (0 and a warning, where
    :func:`backend.metrics.classification.binary_auroc` gives NaN): it is the default monitored
    metric, which checkpoint selection compares as a number.

    Args:
        prefix: Prepended to the keys, e.g. ``val/``.
    """
    # ignore_index: a row whose benign/malignant label is unknown (-1) is left out, not counted benign.
    return MetricCollection({"auroc_malignant": BinaryAUROC(ignore_index=-1), "thickness_mae_mm": MeanAbsoluteError()},
                            prefix=prefix)


def updated_on_any_rank(metrics: list[Any]) -> list[bool]:
    """Per metric, whether any process updated it this epoch (the local answer without DDP).

    ``compute()`` gathers every process's state, so under DDP all processes must compute the same
    metrics: a process whose shard had, say, no melanoma with an exact thickness still joins the
    gather (with an empty state) when another one had some. Deciding per process would leave the
    others waiting in the gather forever.
    """
    local = [bool(getattr(metric, "update_called", True)) for metric in metrics]
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or not metrics:
        return local
    flags = torch.tensor(local, dtype=torch.float32)
    if torch.distributed.get_backend() == "nccl":
        flags = flags.cuda()
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in flags.cpu().tolist()]
