"""LesionDataModule and LesionDataset: splits, class weights, sampler, metadata tensors, bad images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from backend.data import dataset as dataset_module
from backend.data.config import DataConfig
from backend.data.datamodule import LesionDataModule, class_priors, class_weights, sample_weights
from backend.data.dataset import encode_targets
from backend.data.formats import load_table
from backend.data.preprocess import PreprocessSettings, preprocess_images
from backend.data.schema import DIAGNOSES
from backend.data.transforms import preprocessing_dict
from backend.errors import ConfigError, ImageLoadError
from tests.conftest import write_synthetic_dataset


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("dm"), n=54, size=40)


def make_dm(csv, **kw) -> LesionDataModule:
    cfg = DataConfig(csv=str(csv), img_dir=str(csv.parent / "images"), img_size=32, batch_size=4, num_workers=0, **kw)
    dm = LesionDataModule(cfg)
    dm.setup("fit")
    return dm


def test_class_weights_are_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1, -1, 2, 2, 2, 2, 2, 2]))
    counts = np.array([3, 1, 6])
    expected = counts.sum() / (3 * counts)
    assert np.allclose(w[:3], expected) and (w[3:] == 0).all()
    assert np.isclose(w[:3].mean(), expected.mean())


def test_class_priors_are_the_frequencies_of_the_rows_with_a_diagnosis():
    p = class_priors(np.array([0, 0, 0, 1, -1, 2, 2, 2, 2, 2, 2]), num_classes=4)
    assert np.allclose(p, [0.3, 0.1, 0.6, 0.0]) and p.dtype == np.float32
    assert (class_priors(np.array([-1, -1]), num_classes=3) == 0).all()


def test_sample_weights_balance_classes_including_unk():
    diag = np.array([1, 1, 1, 1, 0, -1, -1])
    label = np.array([0, 0, 0, 0, 1, 0, 0])
    w = sample_weights(diag, label)
    assert np.isclose(w[diag == 1].sum(), w[diag == 0].sum()) and np.isclose(w[5:].sum(), w[4])


def test_setup_splits_weights_and_encoder(csv):
    dm = make_dm(csv)
    sizes = {s: len(dm.split_table(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 54 and all(v > 0 for v in sizes.values())
    train_lesions = set(dm.split_table("train")["lesion_id"])
    assert not train_lesions & set(dm.split_table("test")["lesion_id"])
    t = encode_targets(dm.train_table)
    assert np.allclose(dm.class_weights, class_weights(t["diagnosis"]))
    assert np.allclose(dm.class_priors, class_priors(t["diagnosis"]))
    ages = dm.train_table["age_approx"].dropna()
    assert dm.metadata_encoder.age_mean == pytest.approx(ages.mean())
    dm.setup("fit")  # idempotent: Lightning calls it again on every stage
    assert sum(len(dm.split_table(s)) for s in ("train", "val", "test")) == 54


def test_batches_have_every_target_and_metadata(csv):
    dm = make_dm(csv)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["meta"].shape == (4, dm.metadata_encoder.dim)
    assert batch["diagnosis"].dtype == torch.int64 and set(batch) >= {"label", "thickness_lo", "thickness_hi"}
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["image"], next(iter(dm.val_dataloader()))["image"])  # eval is deterministic
    assert "meta" not in next(iter(make_dm(csv, use_metadata=False).val_dataloader()))


def test_targets_encode_unknowns_and_thickness(csv):
    table = load_table(csv)
    t = encode_targets(table)
    unk = (table["diagnosis"] == "UNK").to_numpy()
    assert (t["diagnosis"][unk] == -1).all() and (t["label"][unk] == 0).all()
    mel = (table["diagnosis"] == "MEL").to_numpy()
    assert (t["diagnosis"][mel] == DIAGNOSES.index("MEL")).all()
    assert np.isfinite(t["thickness_lo"][mel]).any() and np.isnan(t["thickness_lo"][~mel]).all()
    band = mel & (t["thickness_lo"] != t["thickness_hi"]) & np.isfinite(t["thickness_lo"])
    assert np.allclose(t["thickness_lo"][band], 0.76) and np.allclose(t["thickness_hi"][band], 1.5)


def test_balanced_sampler_draws_rare_classes_often(csv):
    dm = make_dm(csv, balanced_sampler=True)
    loader = dm.train_dataloader()
    assert loader.sampler.__class__.__name__ == "WeightedRandomSampler"
    weights = np.asarray(loader.sampler.weights)
    t = encode_targets(dm.train_table)
    keys = np.where(t["diagnosis"] >= 0, t["diagnosis"], 8 + (t["label"] > 0))
    per_class = [weights[keys == k].sum() for k in np.unique(keys)]
    assert np.allclose(per_class, per_class[0])


def break_first_row(dataset, tmp_path):
    """Point the dataset's first row at a file that is not an image; returns that file."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    dataset.paths[0] = str(broken)
    return broken


def read_twice(dataset, index):
    """Item ``index`` read twice, and the warnings that named the broken file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = dataset[index]
        dataset[index]
    return item, [str(w.message) for w in caught if "broken.png" in str(w.message)]


def test_unreadable_image_is_reported_once_and_replaced(csv, tmp_path):
    dm = make_dm(csv)
    dataset = dm.dataset("train", train=True)
    broken = break_first_row(dataset, tmp_path)
    item, messages = read_twice(dataset, 0)
    assert len(messages) == 1 and "unreadable" in messages[0]
    assert int(item["index"]) == 1 and item["image"].shape == (3, 32, 32)
    dataset.paths = [str(broken)] * len(dataset.paths)
    with pytest.raises(ImageLoadError, match="unreadable"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset[0]


def test_a_hairless_cache_needs_hair_removal_recorded_in_the_model(csv, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    preprocess_images(csv.parent / "images", cache, PreprocessSettings(size=40, hair_removal=True), workers=1,
                      progress=False)

    def module(img_dir, hair_removal):
        return LesionDataModule(DataConfig(csv=str(csv), img_dir=str(img_dir), img_size=32, batch_size=4,
                                           num_workers=0, hair_removal=hair_removal))

    with pytest.raises(ConfigError, match=r"come from a cache made with hair removal .* data.hair_removal is false"):
        module(cache, False).setup()
    removed = []
    monkeypatch.setattr(dataset_module, "remove_hair", lambda image: removed.append(1) or image)
    dm = module(cache, True)
    dm.setup()
    assert preprocessing_dict(dm.cfg)["hair_removal"] is True  # the model removes hair when it predicts
    dm.dataset("train").load(0)
    assert removed == []  # ... but the cache's images are not de-haired twice
    # A sub-folder of the cache (one source's images) is the cache too, as for prediction.
    (cache / "part").mkdir()
    with pytest.raises(ConfigError, match="come from a cache made with hair removal"):
        module(cache / "part", False).setup()
    plain = module(csv.parent / "images", True)
    plain.setup()
    plain.dataset("train").load(0)
    assert removed == [1]  # original images: removed when decoded


def test_an_unreadable_evaluation_image_is_left_out_of_the_figures_not_replaced(csv, tmp_path):
    dm = make_dm(csv)
    dataset = dm.dataset("val")
    break_first_row(dataset, tmp_path)
    neighbour = dataset[1]
    item, messages = read_twice(dataset, 0)
    assert len(messages) == 1 and "left out" in messages[0]
    assert int(item["index"]) == 0  # its own row, not the neighbour's image and label
    assert not torch.equal(item["image"], neighbour["image"]) and item["image"].shape == neighbour["image"].shape
    assert int(item["diagnosis"]) == -1 and float(item["label"]) == -1.0  # every loss and metric ignores -1
    assert torch.isnan(item["thickness_lo"]) and torch.isnan(item["thickness_hi"])
    assert dm.dataset("val", replace_unreadable=True).replace_unreadable


def test_the_training_loader_augments_and_the_evaluation_loaders_do_not(csv):
    dm = make_dm(csv)
    train = dm.train_dataloader().dataset
    assert not torch.equal(train[0]["image"], train[0]["image"])  # a new crop, flip and colour at each read
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        assert torch.equal(loader.dataset[0]["image"], loader.dataset[0]["image"])
