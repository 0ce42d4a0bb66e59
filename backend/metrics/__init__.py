"""Metric definitions shared by training (torchmetrics), evaluation and the model card.

Below training in the layer order (data -> models -> metrics -> training -> ...), so the training
loop, the evaluation workflow and the card all compute a figure with the same function:

* ``classification``: diagnosis and benign/malignant metrics (balanced accuracy, per-class F1 and
  AUROC, macro AUROC, malignant AUROC, sensitivity/specificity), one function each;
* ``thickness``: Breslow-thickness metrics against interval labels;
* ``calibration``: temperature scaling and expected calibration error;
* ``bootstrap``: percentile intervals of any of them, resampling patients where known;
* ``scores``: the evaluation report, every metric of a split with a note on each;
* ``collection``: the torchmetrics collections the Lightning module updates, on the same definitions;
* ``plots``: confusion matrix, ROC curves and thickness figures.
"""
