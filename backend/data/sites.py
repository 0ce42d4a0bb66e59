"""Normalisation tables for the patient metadata every format spells differently.

One table serves every format, so that a generic CSV written with HAM10000 words (``back``,
``face``) loads the same way as HAM10000 itself. The target vocabulary is
:data:`backend.data.schema.ANATOM_SITES` and :data:`backend.data.schema.SEXES`.

Site decisions (they reproduce ``../shared/data/labels.csv``, which was built from HAM10000 this way):

* HAM10000 ``back`` -> ``posterior torso``; ``abdomen`` and ``chest`` -> ``anterior torso``;
  ``trunk`` -> ``torso`` (trunk with no finer site: guessing front or back would invent data).
* ``face``, ``scalp``, ``ear``, ``neck`` -> ``head/neck``; ``hand`` -> ``upper extremity``;
  ``foot`` -> ``lower extremity`` (HAM10000 does not say whether palm/sole or dorsum);
  ``acral`` -> ``palms/soles``; ``genital`` -> ``oral/genital``.
* Blank, ``unknown`` and the NA spellings of :data:`MISSING_TOKENS` (any case) are missing; the
  loader treats them as blank in numeric columns too. Any other value is *not* silently dropped:
  :func:`unrecognised_sites` lets the loader report it with its line: a typo must not vanish.
"""

from __future__ import annotations

import pandas as pd

from backend.data.schema import ANATOM_SITES, SEXES

#: Spellings that mean "not recorded" (compared lower-cased, stripped).
MISSING_TOKENS: frozenset[str] = frozenset({"", "unknown", "unk", "na", "n/a", "nan", "none"})

#: Lower-cased source spelling -> normalised site. Canonical names map to themselves.
SITE_ALIASES: dict[str, str] = {
    **{site: site for site in ANATOM_SITES},
    # ISIC variants
    "head neck": "head/neck",
    "head and neck": "head/neck",
    "oral genital": "oral/genital",
    "palms soles": "palms/soles",
    "trunk": "torso",
    # HAM10000 ``localization``
    "back": "posterior torso",
    "abdomen": "anterior torso",
    "chest": "anterior torso",
    "face": "head/neck",
    "scalp": "head/neck",
    "ear": "head/neck",
    "neck": "head/neck",
    "hand": "upper extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "genital": "oral/genital",
}

#: Lower-cased source spelling -> normalised sex.
SEX_ALIASES: dict[str, str] = {**{sex: sex for sex in SEXES}, "m": "male", "f": "female"}


def _normalise(values: pd.Series, aliases: dict[str, str]) -> pd.Series:
    """Map ``values`` through ``aliases``: missing tokens become NA, unmapped values NA too."""
    key = values.fillna("").astype(str).str.strip().str.lower()
    out = key.map(aliases)
    return out.astype("str")


def _unrecognised(values: pd.Series, aliases: dict[str, str]) -> pd.Series:
    key = values.fillna("").astype(str).str.strip().str.lower()
    return ~key.isin(MISSING_TOKENS) & ~key.isin(aliases.keys())


def normalise_sites(values: pd.Series) -> pd.Series:
    """Anatomical sites in any supported spelling -> :data:`ANATOM_SITES` or NA (str dtype)."""
    return _normalise(values, SITE_ALIASES)


def normalise_sexes(values: pd.Series) -> pd.Series:
    """``male``/``female`` (any case, or ``m``/``f``) -> :data:`SEXES` or NA (str dtype)."""
    return _normalise(values, SEX_ALIASES)


def unrecognised_sites(values: pd.Series) -> pd.Series:
    """Boolean mask of non-blank sites that are neither a known spelling nor ``unknown``."""
    return _unrecognised(values, SITE_ALIASES)


def unrecognised_sexes(values: pd.Series) -> pd.Series:
    """Boolean mask of non-blank sexes that are neither ``male``/``female`` nor ``unknown``."""
    return _unrecognised(values, SEX_ALIASES)
