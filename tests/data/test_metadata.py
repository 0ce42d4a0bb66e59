"""Metadata encoding: layout, missing values, vocabulary errors, round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.data.metadata import MetadataEncoder
from backend.data.schema import ANATOM_SITES, SEXES
from backend.errors import CheckpointError, ConfigError


def test_fit_and_encode_layout():
    enc = MetadataEncoder.fit([30.0, 50.0, np.nan, 70.0])
    assert enc.age_mean == pytest.approx(50.0) and enc.age_std == pytest.approx(np.std([30, 50, 70]))
    assert enc.dim == 2 + len(SEXES) + 1 + len(ANATOM_SITES) + 1 == 15
    vec = enc.encode(70, "female", "head/neck")
    assert vec.dtype == np.float32 and vec.shape == (15,)
    assert vec[0] == pytest.approx(20 / enc.age_std) and vec[1] == 0
    assert vec[2 + SEXES.index("female")] == 1 and vec[2:5].sum() == 1
    assert vec[5 + ANATOM_SITES.index("head/neck")] == 1 and vec[5:].sum() == 1


def test_missing_values_use_unknown_slots():
    enc = MetadataEncoder()
    for missing in (None, np.nan, "", pd.NA):
        vec = enc.encode(missing, missing, missing)
        assert vec[0] == 0 and vec[1] == 1
        assert vec[2 + len(SEXES)] == 1 and vec[-1] == 1
    assert enc.encode(40, "unknown", "Unknown")[-1] == 1
    for spelling in ("unknown", "NA", "n/a", "nan", " None "):  # what the training table reads as missing
        assert (enc.encode(spelling, None, None) == enc.encode(None, None, None)).all(), spelling


def test_prediction_reads_the_spellings_the_training_table_reads():
    enc = MetadataEncoder()
    assert (enc.encode(40, "M", "back") == enc.encode(40, "male", "posterior torso")).all()
    assert (enc.encode(40, " f ", "Trunk") == enc.encode(40, "female", "torso")).all()
    assert (enc.encode(40, "N/A", "unk") == enc.encode(40, None, None)).all()


def test_bad_values_name_the_value():
    enc = MetadataEncoder()
    with pytest.raises(ConfigError, match="'elbow'"):
        enc.encode(40, "male", "elbow")
    with pytest.raises(ConfigError, match="'x'"):
        enc.encode(40, "x", None)
    with pytest.raises(ConfigError, match="age"):
        enc.encode(-3, None, None)
    with pytest.raises(ConfigError, match="age"):
        enc.encode("old", None, None)


def test_encode_table_and_round_trip():
    enc = MetadataEncoder.fit([20, 40])
    table = pd.DataFrame({"age_approx": [20.0, np.nan], "sex": ["male", pd.NA],
                          "anatom_site_general": [pd.NA, "palms/soles"]})
    out = enc.encode_table(table)
    assert out.shape == (2, enc.dim)
    assert np.array_equal(out[0], enc.encode(20, "male", None))
    assert MetadataEncoder.from_dict(enc.to_dict()) == enc
    with pytest.raises(CheckpointError, match="keys"):
        MetadataEncoder.from_dict({"age_mean": 1})
    assert enc.encode_table(table.iloc[:0]).shape == (0, enc.dim)
