import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from backend.config import (
    DeprecatedKey,
    cli_layers,
    from_dict,
    load_config,
    merge_layers,
    parse_overrides,
    read_yaml,
    removed,
    rename_legacy_flags,
    renamed,
    save_config,
    to_dict,
)
from backend.data.config import DataConfig
from backend.errors import ConfigError
from backend.training.byol_config import ByolConfig
from backend.training.config import ExperimentConfig
from backend.workflows.ablation import load_ablation_config
from backend.workflows.pipeline import load_pipeline_config
from backend.workflows.study_runs import recipe
from tests.conftest import REPO_ROOT


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


def test_an_unknown_key_names_the_file_it_came_from(tmp_path):
    (tmp_path / "base.yaml").write_text("lr: 0.1\n")
    (tmp_path / "exp.yaml").write_text("inner:\n  sise: 3\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: unknown config key 'inner\.sise'"):
        load_config(Outer, [tmp_path / "base.yaml", tmp_path / "exp.yaml"])
    (tmp_path / "model.yaml").write_text("backbone: mobilenetv2_100\nwidht: 3\n")
    with pytest.raises(ConfigError, match=r"model\.yaml: unknown config key 'model\.widht'"):
        cli_layers([], model_file=str(tmp_path / "model.yaml"), cls=ExperimentConfig)
    # A partial file is judged on its keys only: its values are checked once the layers are merged.
    (tmp_path / "partial.yaml").write_text("trainer:\n  max_epochs: 3\n")
    assert cli_layers([str(tmp_path / "partial.yaml")], cls=ExperimentConfig)["trainer"]["max_epochs"] == 3
    # A value of the wrong type is named with its file too (with several files, which one matters).
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_epochs: abc\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: config key 'trainer\.max_epochs' must be int, got 'abc'"):
        cli_layers([str(tmp_path / "partial.yaml"), str(tmp_path / "typo.yaml")], cls=ExperimentConfig)


def test_fixed_length_tuples_must_hold_that_many_values():
    with pytest.raises(ConfigError, match=r"'optim.betas' must hold 2 values, got 1: \[0.9\]"):
        recipe({}, ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"'optim.betas\[1\]' must be float, got 'x'"):
        recipe({}, ["optim.betas=[0.9, x]"])
    assert recipe({}, ["optim.betas=[0.8, 0.99]"]).optim.betas == (0.8, 0.99)


def test_round_trip_through_yaml(tmp_path):
    cfg = from_dict(Outer, {"lr": 0.5, "path": "x.csv", "inner": {"names": ["q"]}})
    path = save_config(cfg, tmp_path / "cfg.yaml")
    assert load_config(Outer, [path]) == cfg
    assert to_dict(cfg) == {"lr": 0.5, "flag": False, "path": "x.csv", "inner": {"size": 8, "names": ["q"]}}


def test_overrides_parse_yaml_scalars_and_reject_garbage():
    assert parse_overrides(["a.b=3", "a.c=[1, 2]", "d=none-ish"]) == {"a": {"b": 3, "c": [1, 2]}, "d": "none-ish"}
    # YAML 1.2 scalars: no octal, no yes/no/on/off booleans (a name or folder means what it says).
    assert parse_overrides(["experiment_name=0123", "data.img_dir=off", "n=yes", "t=true", "x=0x10"]) == {
        "experiment_name": "0123", "data": {"img_dir": "off"}, "n": "yes", "t": True, "x": 16}
    assert recipe({}, ["experiment_name=0123"]).experiment_name == "0123"
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


def test_imbalance_and_weight_averaging_settings_are_checked_by_name():
    with pytest.raises(ConfigError, match="loss.logit_adjustment .* loss.class_weighted .* false"):
        from_dict(ExperimentConfig, {"loss": {"logit_adjustment": 1.0}})  # class_weighted defaults to true
    with pytest.raises(ConfigError, match="loss.logit_adjustment must be a number >= 0"):
        from_dict(ExperimentConfig, {"loss": {"logit_adjustment": -1.0, "class_weighted": False}})
    with pytest.raises(ConfigError, match=r"trainer.ema_decay must be in \[0, 1\)"):
        from_dict(ExperimentConfig, {"trainer": {"ema_decay": 1.0}})
    cfg = from_dict(ExperimentConfig, {"loss": {"logit_adjustment": 1.0, "class_weighted": False},
                                       "trainer": {"ema_decay": 0.997}})
    assert cfg.loss.logit_adjustment == 1.0 and cfg.trainer.ema_decay == 0.997


@dataclass
class Section:
    DEPRECATED_KEYS: ClassVar[dict[str, DeprecatedKey]] = {"epochs": renamed("max_epochs")}

    max_epochs: int = 1


@dataclass
class Tree:
    DEPRECATED_KEYS: ClassVar[dict[str, DeprecatedKey]] = {
        "out": renamed("log_dir"),
        "sec.size": removed("size", "the top-level size decides"),
        "sec.width": removed(None, "derived"),
    }

    size: int = 8
    log_dir: str = "runs"
    sec: Section = field(default_factory=Section)


def test_renamed_key_moves_its_value_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"config key 'sec\.epochs' is deprecated: use 'sec\.max_epochs'"):
        assert from_dict(Tree, {"sec": {"epochs": 4}}).sec.max_epochs == 4
    with pytest.warns(DeprecationWarning, match=r"'out' is deprecated: use 'log_dir' instead; both are set, so "
                                                r"'log_dir' \('new'\) is used and 'old' ignored"):
        assert from_dict(Tree, {"out": "old", "log_dir": "new"}).log_dir == "new"


def test_removed_key_is_ignored_and_a_disagreeing_value_named():
    data = {"size": 16, "sec": {"size": 32, "width": 3}}
    with pytest.warns(DeprecationWarning) as seen:
        cfg = from_dict(Tree, data)
    assert cfg.size == 16 and to_dict(cfg.sec) == {"max_epochs": 1}
    messages = [str(w.message) for w in seen]
    assert ("config key 'sec.size' is deprecated and ignored: 'size' replaces it (the top-level size decides); "
            "its value 32 differs from 'size' (16), which is used") in messages
    assert "config key 'sec.width' is deprecated and ignored (derived)" in messages
    assert data == {"size": 16, "sec": {"size": 32, "width": 3}}  # the caller's mapping is left alone


def test_unknown_key_is_still_rejected_beside_deprecated_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'sec\.epoch'; valid keys here: max_epochs"):
        from_dict(Tree, {"sec": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.max_epoch'"):
        from_dict(ExperimentConfig, {"trainer": {"max_epoch": 3}})


def test_current_keys_load_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert from_dict(Tree, {"log_dir": "x", "sec": {"max_epochs": 2}}).sec.max_epochs == 2


def test_legacy_flags_are_renamed_with_a_warning():
    known = ["--max_epochs", "--model_cfg", "--log_dir", "--skip-missing"]
    argv = ["--epochs", "3", "--model-cfg=m.yaml", "--skip-missing", "--unknown-flag", "a.b=1", "--", "--epochs"]
    with pytest.warns(DeprecationWarning) as seen:
        out = rename_legacy_flags(argv, known, {"--epochs": "--max_epochs"})
    assert out == ["--max_epochs", "3", "--model_cfg=m.yaml", "--skip-missing", "--unknown-flag", "a.b=1", "--",
                   "--epochs"]
    assert [str(w.message) for w in seen] == [
        "command-line flag '--epochs' is deprecated: use '--max_epochs'",
        "command-line flag '--model-cfg' is deprecated: use '--model_cfg'",
    ]


def test_every_shipped_config_file_uses_the_current_keys():
    cfgs = REPO_ROOT / "cfgs"
    checked = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # an old key in a shipped file fails here
        for path in sorted((cfgs / "model").glob("*.yaml")):
            checked.append(from_dict(ExperimentConfig, {"model": read_yaml(path)}))
        for path in [*sorted((cfgs / "train").glob("*.yaml")), cfgs / "debug" / "cpu_tiny.yaml"]:
            checked.append(load_config(ExperimentConfig, [path]))
        for path in sorted((cfgs / "byol").glob("*.yaml")):
            checked.append(load_config(ByolConfig, [path]))
        for path in sorted((cfgs / "ablation").glob("*.yaml")):
            ablation = load_ablation_config(path)
            checked.extend(recipe(ablation.base_tree(), overrides) for overrides in ablation.variants.values())
        checked.append(load_pipeline_config(cfgs / "default.yaml"))
    shipped = [p for folder in ("model", "train", "byol", "ablation") for p in (cfgs / folder).glob("*.yaml")]
    assert len(shipped) >= 4 and all(c is not None for c in checked)  # the folders were found and read
    assert len(checked) >= len(shipped) + 2


def test_an_old_key_in_a_later_layer_beats_the_new_key_of_an_earlier_one(tmp_path):
    """Renames are applied layer by layer, so overriding with the old spelling still overrides."""
    base = {"log_dir": "from_yaml", "sec": {"max_epochs": 2}}
    with pytest.warns(DeprecationWarning, match=r"'out' is deprecated: use 'log_dir'"):
        merged = merge_layers([base, {"out": "from_cli", "sec": {"epochs": 5}}], Tree)
    assert merged == {"log_dir": "from_cli", "sec": {"max_epochs": 5}}
    assert base == {"log_dir": "from_yaml", "sec": {"max_epochs": 2}}
    # Merged without the class, both spellings survive and the earlier new key would win.
    with pytest.warns(DeprecationWarning, match="both are set"):
        assert from_dict(Tree, merge_layers([base, {"out": "from_cli"}])).log_dir == "from_yaml"
    # The training CLI's layers: a YAML with the new key, then the old spelling as an override.
    yaml_file = tmp_path / "base.yaml"
    yaml_file.write_text("log_dir: runs\ntrainer:\n  max_epochs: 2\n")
    with pytest.warns(DeprecationWarning):
        merged = cli_layers([str(yaml_file)], overrides=["output_dir=elsewhere", "trainer.epochs=7"],
                            cls=ExperimentConfig)
    cfg = from_dict(ExperimentConfig, merged)
    assert cfg.log_dir == "elsewhere" and cfg.trainer.max_epochs == 7
    with pytest.warns(DeprecationWarning, match="output_dir"):
        assert recipe({"log_dir": "runs"}, ["output_dir=moved"]).log_dir == "moved"


def test_a_batch_limit_keeps_a_count_a_count_and_a_fraction_a_fraction():
    def limit(value):
        return from_dict(ExperimentConfig, {"trainer": {"limit_train_batches": value}}).trainer.limit_train_batches

    # Lightning reads the int 1 as one batch and the float 1.0 as every batch: the type must survive.
    assert limit(1) == 1 and type(limit(1)) is int
    assert limit("1") == 1 and type(limit("1")) is int  # a key=value override
    assert limit(0.25) == 0.25 and limit("0.25") == 0.25 and type(limit(1.0)) is float
    for bad in (True, "half", [1]):
        with pytest.raises(ConfigError, match="trainer.limit_train_batches' must be a count or a fraction"):
            limit(bad)


def test_a_model_file_replaces_the_config_files_model_section(tmp_path):
    (tmp_path / "study.yaml").write_text("model:\n  backbone: mobilenetv2_100\n  backbone_kwargs: {pad_type: same}\n"
                                        "  pretrained_path: start.safetensors\ntrainer:\n  max_epochs: 2\n")
    (tmp_path / "resnet.yaml").write_text("backbone: resnet50\n")
    merged = cli_layers([str(tmp_path / "study.yaml")], model_file=str(tmp_path / "resnet.yaml"), cls=ExperimentConfig)
    cfg = from_dict(ExperimentConfig, merged)
    assert cfg.model.backbone == "resnet50" and cfg.model.backbone_kwargs == {} and cfg.model.pretrained_path is None
    assert cfg.trainer.max_epochs == 2  # the rest of the config file stays
    # BYOL's model section also holds its projector and predictor: those are not the network's, and stay.
    byol = cli_layers([str(REPO_ROOT / "cfgs" / "byol" / "cpu_small.yaml")],
                      model_file=str(REPO_ROOT / "cfgs" / "model" / "dermaresnet_se_tiny.yaml"), cls=ByolConfig)
    heads = from_dict(ByolConfig, byol).model
    assert (heads.proj_hidden_dim, heads.proj_dim, heads.pred_hidden_dim) == (1024, 128, 1024)
    assert heads.backbone == "dermaresnet_se_tiny"
    # An explicit empty mapping clears what an earlier layer set, instead of merging nothing into it.
    cleared = cli_layers([str(tmp_path / "study.yaml")], overrides=["model.backbone_kwargs={}"], cls=ExperimentConfig)
    assert cleared["model"]["backbone_kwargs"] == {} and cleared["model"]["backbone"] == "mobilenetv2_100"
