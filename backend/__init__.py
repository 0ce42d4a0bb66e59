"""DermaLens backend: data, models, training, evaluation and inference for dermoscopic triage.

Heavy dependencies (torch, lightning, albumentations) are imported by the submodules that need
them, never here, so that ``import backend`` and the command-line ``--help`` stay fast.
"""

__version__ = "0.1.0"
