from dataclasses import dataclass, field

import pytest

from backend.config import from_dict, load_config, parse_overrides, save_config, to_dict
from backend.data.config import DataConfig
from backend.errors import ConfigError


@dataclass
class Inner:
    size: int = 8
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    lr: float = 1e-3
    flag: bool = False
    path: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_then_yaml_then_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("lr: 0.1\ninner:\n  size: 16\n")
    (tmp_path / "exp.yaml").write_text("inner:\n  names: [x, y]\n")
    cfg = load_config(Outer, [tmp_path / "base.yaml", tmp_path / "exp.yaml"], ["inner.size=32", "flag=true"])
    assert cfg.lr == 0.1
    assert cfg.inner.size == 32
    assert cfg.inner.names == ["x", "y"]
    assert cfg.flag is True
    assert cfg.path is None


def test_unknown_key_is_named_with_its_dotted_path():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.sise'.*valid keys here: names, size"):
        from_dict(Outer, {"inner": {"sise": 3}})


def test_wrong_types_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match=r"'lr' must be float, got 'fast'"):
        from_dict(Outer, {"lr": "fast"})
    with pytest.raises(ConfigError, match=r"'inner.size' must be an integer"):
        from_dict(Outer, {"inner": {"size": 2.5}})
    with pytest.raises(ConfigError, match=r"'flag' must be true or false"):
        from_dict(Outer, {"flag": "maybe"})
    with pytest.raises(ConfigError, match=r"'lr' may not be null"):
        from_dict(Outer, {"lr": None})


def test_round_trip_through_yaml(tmp_path):
    cfg = from_dict(Outer, {"lr": 0.5, "path": "x.csv", "inner": {"names": ["q"]}})
    path = save_config(cfg, tmp_path / "cfg.yaml")
    assert load_config(Outer, [path]) == cfg
    assert to_dict(cfg) == {"lr": 0.5, "flag": False, "path": "x.csv", "inner": {"size": 8, "names": ["q"]}}


def test_overrides_parse_yaml_scalars_and_reject_garbage():
    assert parse_overrides(["a.b=3", "a.c=[1, 2]", "d=none-ish"]) == {"a": {"b": 3, "c": [1, 2]}, "d": "none-ish"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(Outer, [bad])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, [tmp_path / "missing.yaml"])


def test_data_config_validation_names_the_key():
    with pytest.raises(ConfigError, match=r"data.split.val_frac \+ data.split.test_frac must be < 1"):
        from_dict(DataConfig, {"split": {"val_frac": 0.6, "test_frac": 0.5}})
    with pytest.raises(ConfigError, match="data.batch_size"):
        from_dict(DataConfig, {"batch_size": 0})
