"""Patient metadata (age, sex, anatomical site) as the fixed-length vector the fusion branch reads.

The encoding is fitted on the training split (age mean and standard deviation) and stored in every
checkpoint and bundle, so inference encodes a clinician's entry exactly as training did. Every
field may be missing: age gets a missing flag, sex and site get an explicit "unknown" slot, and a
row with nothing known still encodes (the network also has its own learned "no metadata" path).

Layout of the vector (``dim`` = 2 + len(sexes) + 1 + len(sites) + 1)::

    [age_z, age_missing, sex one-hot..., sex_unknown, site one-hot..., site_unknown]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from backend.data.schema import ANATOM_SITES, SEXES
from backend.data.sites import MISSING_TOKENS, SEX_ALIASES, SITE_ALIASES
from backend.errors import CheckpointError, ConfigError


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


@dataclass
class MetadataEncoder:
    """Encode age/sex/site into a float32 vector; fitted on train, stored with the model.

    Attributes:
        age_mean: Mean age (years) of the training rows with an age.
        age_std: Standard deviation of those ages (> 0).
        sexes: Sex vocabulary, in slot order.
        sites: Anatomical-site vocabulary, in slot order.
    """

    age_mean: float = 50.0
    age_std: float = 20.0
    sexes: list[str] = field(default_factory=lambda: list(SEXES))
    sites: list[str] = field(default_factory=lambda: list(ANATOM_SITES))

    @property
    def dim(self) -> int:
        """Length of the encoded vector."""
        return 2 + len(self.sexes) + 1 + len(self.sites) + 1

    @classmethod
    def fit(cls, ages: Any) -> MetadataEncoder:
        """Fit the age normalisation on training ages (NaN = unknown); vocabularies are the schema's."""
        values = np.asarray(ages, dtype=float)
        values = values[np.isfinite(values)]
        if values.size < 2:
            return cls()
        std = float(values.std())
        return cls(age_mean=float(values.mean()), age_std=std if std > 1e-6 else 1.0)

    def encode(self, age: Any = None, sex: Any = None, site: Any = None) -> np.ndarray:
        """One row; ``None``, NaN, blank and the table's missing spellings (``unknown``, ``NA``...) mean unknown.

        Raises:
            ConfigError: For a sex or site outside the vocabulary, or a negative age (naming the value).
        """
        vec = np.zeros(self.dim, dtype=np.float32)
        if _is_missing(age) or (isinstance(age, str) and age.strip().lower() in MISSING_TOKENS):
            vec[1] = 1.0
        else:
            try:
                years = float(age)
            except (TypeError, ValueError):
                raise ConfigError(f"age must be a number of years, got {age!r}") from None
            if not 0 <= years <= 120:
                raise ConfigError(f"age must be between 0 and 120 years, got {age!r}")
            vec[0] = (years - self.age_mean) / self.age_std
        offset = 2
        vec[offset + self._slot("sex", sex, self.sexes, SEX_ALIASES)] = 1.0
        offset += len(self.sexes) + 1
        vec[offset + self._slot("anatomical site", site, self.sites, SITE_ALIASES)] = 1.0
        return vec

    @staticmethod
    def _slot(what: str, value: Any, vocab: list[str], aliases: dict[str, str]) -> int:
        """The one-hot slot of ``value``, read with the same spellings training reads (``M``, ``back``...)."""
        if _is_missing(value) or (isinstance(value, str) and value.strip().lower() in MISSING_TOKENS):
            return len(vocab)
        text = str(value).strip().lower()
        text = aliases.get(text, text)
        if text not in vocab:
            raise ConfigError(f"unknown {what} {value!r}; expected one of {vocab} or blank")
        return vocab.index(text)

    def encode_table(self, table: Any) -> np.ndarray:
        """Encode every row of a lesion table (``age_approx``, ``sex``, ``anatom_site_general``)."""
        rows = zip(table["age_approx"], table["sex"], table["anatom_site_general"], strict=True)
        out = np.stack([self.encode(a, s, site) for a, s, site in rows]) if len(table) else None
        return out if out is not None else np.zeros((0, self.dim), dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form stored in checkpoints and bundles."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetadataEncoder:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            CheckpointError: When the mapping is not an encoder description.
        """
        if not isinstance(data, dict) or set(data) != {"age_mean", "age_std", "sexes", "sites"}:
            raise CheckpointError(f"metadata encoder must have keys age_mean, age_std, sexes, sites; got {data!r}")
        try:
            enc = cls(float(data["age_mean"]), float(data["age_std"]), list(data["sexes"]), list(data["sites"]))
        except (TypeError, ValueError):
            raise CheckpointError(f"metadata encoder values are malformed: {data!r}") from None
        if enc.age_std <= 0:
            raise CheckpointError(f"metadata encoder age_std must be > 0, got {enc.age_std}")
        return enc
