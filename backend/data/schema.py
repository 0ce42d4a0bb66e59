"""The one validated lesion table every data format is loaded into.

Every format adapter (generic CSV, ISIC 2019, HAM10000, ISIC Archive downloads) returns a
``pandas.DataFrame`` with exactly :data:`TABLE_COLUMNS`, in that order, so that splits, the
datamodule, training and evaluation never care where the labels came from.

Column semantics:

* ``image``: absolute path of the image file (str).
* ``image_id``: file stem, e.g. ``ISIC_0000000`` (str, unique in a table).
* ``diagnosis``: one of :data:`ALL_DIAGNOSES` or missing (``pd.NA``) when a source gives only a
  benign/malignant label.
* ``label``: 1 malignant / 0 benign (int). Must agree with ``diagnosis`` when both are known
  (:data:`MALIGNANT_DIAGNOSES`).
* ``thickness_lo_mm`` / ``thickness_hi_mm``: Breslow thickness as an interval in mm (float, NaN when
  unknown). An exact value has ``lo == hi``; an open upper bound has ``hi = inf``; melanoma in situ
  is ``lo == hi == 0.0``. Both NaN means no thickness label.
* ``age_approx`` (float, NaN unknown), ``sex`` (``male``/``female`` or NA),
  ``anatom_site_general`` (one of :data:`ANATOM_SITES` or NA).
* ``lesion_id``, ``patient_id``: grouping keys (str or NA).
* ``dataset``, ``license``, ``attribution``: provenance (str or NA).
"""

from __future__ import annotations

#: Input normalisation of ImageNet-trained torchvision/timm weights (per-channel mean and std of [0, 1] RGB).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Input normalisation of TensorFlow "inception" preprocessing (RGB scaled to [-1, 1]).
TF_INCEPTION_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
TF_INCEPTION_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

#: The eight diagnoses the model predicts, in head order (ISIC 2019 order without UNK).
DIAGNOSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
#: Every diagnosis a table may carry; UNK is ISIC's "none of the others" (benign in ISIC 2020).
ALL_DIAGNOSES: tuple[str, ...] = (*DIAGNOSES, "UNK")
#: Diagnoses whose label must be 1 (malignant).
MALIGNANT_DIAGNOSES: frozenset[str] = frozenset({"MEL", "BCC", "SCC"})
#: Columns of :data:`DIAGNOSES` (and of the diagnosis outputs) whose probabilities sum to P(malignant).
MALIGNANT_INDICES: tuple[int, ...] = tuple(i for i, d in enumerate(DIAGNOSES) if d in MALIGNANT_DIAGNOSES)

#: File name endings (lower case) of the image files DermaLens reads; the content decides the decoder.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

#: Normalised anatomical sites (ISIC ``anatom_site_general`` vocabulary; ``torso`` = trunk, no finer).
ANATOM_SITES: tuple[str, ...] = (
    "anterior torso",
    "posterior torso",
    "lateral torso",
    "torso",
    "head/neck",
    "upper extremity",
    "lower extremity",
    "palms/soles",
    "oral/genital",
)
SEXES: tuple[str, ...] = ("male", "female")

#: Breslow bands used for reporting thickness, as (name, lo, hi) in mm, hi exclusive.
THICKNESS_BANDS: tuple[tuple[str, float, float], ...] = (
    ("in situ", 0.0, 1e-6),
    ("<0.8 mm", 1e-6, 0.8),
    ("0.8-1 mm", 0.8, 1.0),
    ("1-2 mm", 1.0, 2.0),
    ("2-4 mm", 2.0, 4.0),
    (">4 mm", 4.0, float("inf")),
)

TABLE_COLUMNS: tuple[str, ...] = (
    "image",
    "image_id",
    "diagnosis",
    "label",
    "thickness_lo_mm",
    "thickness_hi_mm",
    "age_approx",
    "sex",
    "anatom_site_general",
    "lesion_id",
    "patient_id",
    "dataset",
    "license",
    "attribution",
)
