"""Metric definitions shared by training (torchmetrics), evaluation and the model card.

Below training in the layer order (data -> models -> metrics -> training -> ...), so the training
loop, the evaluation workflow and the card all compute a figure with the same function.
"""
