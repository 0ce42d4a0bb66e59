"""Transforms: one eval transform from a stored description, dermoscopy augmentations, BYOL views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.data.config import DataConfig
from backend.data.datamodule import augmentation_loader_options, seed_augmentations, seed_worker_augmentations
from backend.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomDermoscopeBorder,
    RandomVignette,
    ShadesOfGray,
    build_byol_transforms,
    build_eval_transform,
    build_train_transform,
    check_preprocessing,
    preprocessing_dict,
    shades_of_gray,
)
from backend.errors import ConfigError
from tests.conftest import make_lesion_image


def test_shades_of_gray_removes_a_colour_cast(rng):
    img = make_lesion_image(rng, 48)
    cast = np.clip(img.astype(float) * np.array([1.0, 0.8, 0.6]), 0, 255).astype(np.uint8)

    def chroma(x):  # per-channel means relative to green: the colour of the illuminant
        m = x.reshape(-1, 3).astype(float).mean(0)
        return m / m[1]

    # The same scene under two illuminants has the same chromaticity after correction ...
    before = np.abs(chroma(img) - chroma(cast)).sum()
    after = np.abs(chroma(shades_of_gray(img)) - chroma(shades_of_gray(cast))).sum()
    assert after < 0.1 * before
    # ... and a neutral grey image is left alone.
    grey = np.full((16, 16, 3), 128, np.uint8)
    assert np.abs(shades_of_gray(grey).astype(int) - 128).max() <= 1
    assert (shades_of_gray(np.zeros((8, 8, 3), np.uint8)) == 0).all()
    with pytest.raises(ConfigError, match="power"):
        ShadesOfGray(power=0.5)


def test_eval_transform_is_deterministic_normalised_and_sized(rng):
    cfg = DataConfig(img_size=32, color_constancy=False)
    pre = preprocessing_dict(cfg)
    transform = build_eval_transform(pre)
    img = make_lesion_image(rng, 48)[:, :40]  # not square: shorter side resized, then centre crop
    a, b = transform(image=img)["image"], transform(image=img)["image"]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    flat = np.full((40, 40, 3), 255, np.uint8)
    out = transform(image=flat)["image"]
    expected = (1.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.allclose(out.mean(dim=(1, 2)).numpy(), expected, atol=1e-4)


def test_preprocessing_dict_round_trip_and_validation():
    pre = preprocessing_dict(DataConfig(img_size=96, hair_removal=True))
    assert check_preprocessing(dict(pre)) == pre
    assert pre["img_size"] == 96 and pre["hair_removal"] is True and pre["color_constancy"] is True
    with pytest.raises(ConfigError, match="missing keys"):
        check_preprocessing({k: v for k, v in pre.items() if k != "mean"})
    with pytest.raises(ConfigError, match="unknown keys"):
        check_preprocessing({**pre, "sharpen": True})
    with pytest.raises(ConfigError, match="version"):
        check_preprocessing({**pre, "version": 99})


@pytest.mark.parametrize(("change", "key"), [
    ({"mean": [0.5]}, "mean"), ({"mean": [0.5, "x", 0.5]}, "mean"), ({"std": [0.2, float("nan"), 0.2]}, "std"),
    ({"std": [0.0, 0.2, 0.2]}, "std must be > 0"), ({"color_constancy": "no"}, "color_constancy"),
    ({"hair_removal": 1}, "hair_removal"), ({"color_constancy_power": 0.5}, "color_constancy_power"),
    ({"img_size": 96.5}, "img_size"), ({"img_size": True}, "img_size"),
])
def test_a_stored_preprocessing_that_makes_no_transform_is_refused_naming_its_key(change, key):
    pre = preprocessing_dict(DataConfig(img_size=96))
    with pytest.raises(ConfigError, match=key):
        check_preprocessing({**pre, **change})


def test_colour_constancy_runs_in_eval_transform(rng):
    img = make_lesion_image(rng, 48)
    cast = np.clip(img.astype(float) * np.array([1.0, 0.8, 0.6]), 0, 255).astype(np.uint8)
    with_cc = build_eval_transform(preprocessing_dict(DataConfig(img_size=32, color_constancy=True)))
    without = build_eval_transform(preprocessing_dict(DataConfig(img_size=32, color_constancy=False)))

    def chroma(t):  # un-normalised per-channel means relative to green
        m = t.mean(dim=(1, 2)).numpy() * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
        return m / m[1]

    gap_cc = np.abs(chroma(with_cc(image=img)["image"]) - chroma(with_cc(image=cast)["image"])).sum()
    gap_plain = np.abs(chroma(without(image=img)["image"]) - chroma(without(image=cast)["image"])).sum()
    assert gap_cc < 0.1 * gap_plain


@pytest.mark.parametrize("preset", ["light", "default", "strong"])
def test_train_transform_augments_but_keeps_shape(rng, preset):
    cfg = DataConfig(img_size=32, augment=preset)
    transform = build_train_transform(cfg)
    img = make_lesion_image(rng, 48)
    outs = [transform(image=img)["image"] for _ in range(6)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # random, not the eval transform


def test_vignette_darkens_corners_more_than_centre():
    img = np.full((41, 41, 3), 200, np.uint8)
    out = RandomVignette(strength=(0.6, 0.6), p=1.0)(image=img)["image"]
    assert out[0, 0].mean() < 0.6 * 200 and out[20, 20].mean() > 0.95 * 200
    with pytest.raises(ConfigError, match="vignette"):
        RandomVignette(strength=(0.8, 0.2))


def test_byol_views_are_asymmetric(rng):
    cfg = DataConfig(img_size=32)
    view1, view2 = build_byol_transforms(cfg)
    names1 = [type(t).__name__ for t in view1.transforms]
    names2 = [type(t).__name__ for t in view2.transforms]
    assert "GaussianBlur" in names1 and "Solarize" in names2
    p = {n: t.p for n, t in zip(names1, view1.transforms, strict=True)}
    q = {n: t.p for n, t in zip(names2, view2.transforms, strict=True)}
    assert p["GaussianBlur"] == 1.0 and p["Solarize"] == 0.0
    assert q["GaussianBlur"] < 0.5 and q["Solarize"] > 0.0
    img = make_lesion_image(rng, 48)
    a, b = view1(image=img)["image"], view2(image=img)["image"]
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)


def test_dermoscope_border_blacks_out_corners_and_keeps_the_centre():
    image = np.full((48, 64, 3), 180, np.uint8)
    out = RandomDermoscopeBorder(radius=(0.7, 0.7), p=1.0)(image=image)["image"]
    assert out.shape == image.shape
    assert out[0, 0].max() == 0 and out[-1, -1].max() == 0 and out[0, -1].max() == 0
    assert (out[24, 32] == 180).all()
    with pytest.raises(ConfigError, match="radius"):
        RandomDermoscopeBorder(radius=(0.9, 0.5))


def test_default_augmentation_squashes_frames_and_downscales(rng):
    """The default preset covers how other clinics' images arrive: other aspects, borders, lower resolution."""
    cfg = DataConfig(img_size=32, augment="default", color_constancy=False)
    transform = build_train_transform(cfg)
    names = [type(t).__name__ for t in transform.transforms]
    assert {"RandomResizedCrop", "RandomDermoscopeBorder", "Downscale"} <= set(names)
    crop = transform.transforms[names.index("RandomResizedCrop")]
    assert crop.ratio[0] <= 0.6 and crop.ratio[1] >= 1.6  # a 4:3 crop squashed to a square is in range
    light = [type(t).__name__ for t in build_train_transform(DataConfig(img_size=32, augment="light")).transforms]
    assert "RandomDermoscopeBorder" in light  # present but off (p=0) in the light preset
    assert build_train_transform(DataConfig(img_size=32, augment="light")).transforms[
        light.index("RandomDermoscopeBorder")].p == 0.0


def test_normalisation_comes_from_the_config_when_set(rng):
    cfg = DataConfig(img_size=16, color_constancy=False, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    pre = preprocessing_dict(cfg)
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.5, 0.5, 0.5]
    white = np.full((16, 16, 3), 255, np.uint8)
    assert torch.allclose(build_eval_transform(pre)(image=white)["image"], torch.ones(3, 16, 16))
    assert preprocessing_dict(DataConfig(img_size=16))["mean"] == list(IMAGENET_MEAN)
    with pytest.raises(ConfigError, match="data.std"):
        DataConfig(std=[0.5, 0.0, 0.5]).validate()


class _OneImage(torch.utils.data.Dataset):
    """The same lesion, augmented anew at every index (what a training loader's workers see)."""

    def __init__(self, transform):
        self.transform = transform
        self.image = make_lesion_image(np.random.default_rng(0), 48)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.transform(image=self.image)["image"]


def test_each_loader_worker_augments_differently_and_reproducibly():
    def draw(seed):
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(_OneImage(build_train_transform(DataConfig(img_size=32))), batch_size=1,
                                             num_workers=2, worker_init_fn=seed_worker_augmentations)
        return [batch[0] for batch in loader]  # worker 0 gives items 0 and 2, worker 1 items 1 and 3

    first = draw(7)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])  # workers differ
    assert all(torch.equal(a, b) for a, b in zip(first, draw(7), strict=True))  # the same seed, the same run
    assert not all(torch.equal(a, b) for a, b in zip(first, draw(8), strict=True))


def test_without_workers_the_loader_options_seed_the_augmentations_from_the_run_seed():
    def draw(seed):
        torch.manual_seed(seed)
        dataset = _OneImage(build_train_transform(DataConfig(img_size=32)))
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=0,
                                             **augmentation_loader_options(dataset, 0))
        return [batch[0] for batch in loader]

    first = draw(7)
    assert all(torch.equal(a, b) for a, b in zip(first, draw(7), strict=True))  # the same seed, the same run
    assert not all(torch.equal(a, b) for a, b in zip(first, draw(8), strict=True))


class _TwoViews:
    def __init__(self):
        self.transform1 = build_train_transform(DataConfig(img_size=32))
        self.transform2 = build_train_transform(DataConfig(img_size=32))


def test_neighbouring_seeds_and_views_get_independent_streams():
    """Worker w's second view must not replay worker w+1's first view (seeds base + w, views offset)."""
    image = make_lesion_image(np.random.default_rng(0), 48)
    worker0, worker1 = _TwoViews(), _TwoViews()
    seed_augmentations(worker0, 100)
    seed_augmentations(worker1, 101)
    views = {
        "w0v1": [worker0.transform1(image=image)["image"] for _ in range(4)],
        "w0v2": [worker0.transform2(image=image)["image"] for _ in range(4)],
        "w1v1": [worker1.transform1(image=image)["image"] for _ in range(4)],
    }
    assert not any(torch.equal(a, b) for a, b in zip(views["w0v2"], views["w1v1"], strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(views["w0v1"], views["w0v2"], strict=True))
