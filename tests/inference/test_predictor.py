"""Predictor: checkpoint vs bundle, preprocessing, inputs, metadata, temperature, TTA, results."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from backend.data.config import DataConfig
from backend.data.images import load_image
from backend.data.metadata import MetadataEncoder
from backend.data.schema import DIAGNOSES
from backend.data.transforms import build_eval_transform, preprocessing_dict
from backend.errors import CheckpointError, ConfigError, ImageLoadError
from backend.inference import tta as tta_mod
from backend.inference.predictor import Predictor
from backend.workflows.export import export_bundle
from tests.inference.tiny import IMG, lesions, train_tiny_checkpoint

META = [{"age_approx": 55, "sex": "male", "anatom_site_general": "posterior torso"}, None,
        {"sex": "female"}, {"age_approx": None, "sex": "", "anatom_site_general": "unknown"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    ckpt, csv = train_tiny_checkpoint(root)
    plain = export_bundle(ckpt, root / "bundle_plain").bundle_dir
    hot = export_bundle(ckpt, root / "bundle_t25", temperature=2.5).bundle_dir
    return {"ckpt": ckpt, "csv": csv, "plain": plain, "hot": hot, "root": root}


@pytest.fixture(scope="module")
def from_ckpt(trained):
    return Predictor.from_checkpoint(trained["ckpt"])


@pytest.fixture(scope="module")
def images():
    return lesions(4, size=80, seed=7)


def probs_of(results):
    return np.array([[r.probabilities[d] for d in DIAGNOSES] for r in results])


def test_checkpoint_and_bundle_give_identical_outputs(trained, from_ckpt, images):
    bundle = Predictor.from_checkpoint(trained["plain"])
    a, b = from_ckpt.predict(images, META), bundle.predict(images, META)
    np.testing.assert_allclose(probs_of(a), probs_of(b), atol=1e-7)
    assert [r.thickness_mm for r in a] == pytest.approx([r.thickness_mm for r in b], abs=1e-6)
    assert [(r.top_class, r.traffic_light, r.thickness_band, r.flags) for r in a] == \
        [(r.top_class, r.traffic_light, r.thickness_band, r.flags) for r in b]
    assert bundle.card["name"] == "best" and bundle.card["calibration"]["temperature"] == 1.0
    assert from_ckpt.card["source"] == str(trained["ckpt"])
    assert from_ckpt.uses_metadata and bundle.uses_metadata


def test_preprocessing_is_the_eval_transform(from_ckpt, images):
    expected_pre = preprocessing_dict(DataConfig(img_size=IMG))
    assert from_ckpt.preprocessing == expected_pre
    transform = build_eval_transform(expected_pre)
    x = from_ckpt.preprocess(images)
    ref = torch.stack([transform(image=img)["image"] for img in images])
    assert torch.equal(x.contiguous(), ref) and x.shape == (4, 3, IMG, IMG)
    assert x.is_contiguous(memory_format=torch.channels_last)  # CNNs run channels_last
    # Without metadata a fusion model gets the "all unknown" encoding, exactly as training encodes such rows.
    unknown = MetadataEncoder.from_dict(from_ckpt.card["metadata_encoder"]).encode(None, None, None)
    meta, used = from_ckpt.encode_metadata(None, len(images))
    assert np.array_equal(meta, np.tile(unknown, (len(images), 1))) and not used.any()
    with torch.no_grad():
        x_cl = ref.contiguous(memory_format=torch.channels_last)
        logits = from_ckpt.net(x_cl, torch.from_numpy(meta)).diagnosis_logits
    np.testing.assert_allclose(probs_of(from_ckpt.predict(images)), torch.softmax(logits, -1).numpy(), atol=1e-6)


def test_inputs_paths_bytes_arrays_and_uploads_agree(from_ckpt, images, tmp_path):
    path = tmp_path / "lesion.png"
    Image.fromarray(images[0]).save(path)
    data = path.read_bytes()
    upload = io.BytesIO(data)
    upload.name = "upload.png"
    results = from_ckpt.predict([path, str(path), ("a.png", data), images[0], upload, load_image(path, IMG)])
    p = probs_of(results)
    np.testing.assert_allclose(p, np.repeat(p[:1], len(results), axis=0), atol=1e-7)
    assert [r.image for r in results] == [str(path), str(path), "a.png", "image_3", "upload.png", "image_5"]
    assert len(from_ckpt.predict(images[0])) == 1  # one image, not a list
    assert len(from_ckpt.predict(("a.png", data))) == 1  # one upload
    upload.seek(0)
    assert len(from_ckpt.predict(upload)) == 1
    assert len(from_ckpt.predict((str(path), str(path)))) == 2  # a tuple of two paths is two images


def test_undecodable_input_raises_image_load_error(from_ckpt):
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        from_ckpt.predict([("broken.jpg", b"\xff\xd8 not really a jpeg")])
    with pytest.raises(ConfigError, match="HxWx3 uint8"):
        from_ckpt.predict([np.zeros((10, 10), np.float32)])


def test_result_fields_are_consistent(from_ckpt, images):
    for r in from_ckpt.predict(images, META):
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert list(r.probabilities) == list(DIAGNOSES)
        assert r.malignant == pytest.approx(r.probabilities["MEL"] + r.probabilities["BCC"] + r.probabilities["SCC"])
        assert r.benign == pytest.approx(1 - r.malignant)
        expected_risk = min(1.0, 1.5 * r.probabilities["MEL"] + 1.3 * r.probabilities["BCC"] + r.probabilities["SCC"])
        assert r.risk == pytest.approx(expected_risk)
        assert r.traffic_light == ("green" if r.risk < 0.15 else "yellow" if r.risk < 0.6 else "red")
        assert r.top_class == max(r.probabilities, key=r.probabilities.get)
        assert r.thickness_mm >= 0 and r.thickness_band
        assert r.reliable and r.flags == [] and not r.tta
        row = r.to_row()
        assert row["UNK"] == 0.0 and row["flags"] == ""


def test_metadata_rows_use_their_own_path(from_ckpt, images):
    mixed = from_ckpt.predict(images, META)
    assert [r.metadata_used for r in mixed] == [True, False, True, False]
    alone = [from_ckpt.predict([img], [m])[0] for img, m in zip(images, META, strict=True)]
    np.testing.assert_allclose(probs_of(mixed), probs_of(alone), atol=1e-6)
    none = from_ckpt.predict(images)
    np.testing.assert_allclose(probs_of(none)[1], probs_of(mixed)[1], atol=1e-6)  # row without metadata
    assert not np.allclose(probs_of(none)[0], probs_of(mixed)[0], atol=1e-6)  # metadata changes the output
    with pytest.raises(ConfigError, match="unknown sex"):
        from_ckpt.predict(images[:1], [{"sex": "robot"}])
    with pytest.raises(ConfigError, match="metadata rows"):
        from_ckpt.predict(images[:2], META[:1])
    with pytest.raises(ConfigError, match="unknown metadata key"):
        from_ckpt.predict(images[:1], [{"weight": 70}])
    # One dict for a list of images (even of the dict's length) is refused by name, not indexed as rows.
    for call in (from_ckpt.predict, from_ckpt.explain_batch, from_ckpt.raw_outputs):
        with pytest.raises(ConfigError, match=r"one dict \(or None\) per image, got a dict"):
            call(images[:1], metadata={"sex": "male"})
    with pytest.raises(ConfigError, match="metadata row 1 must be a dict or None, got str 'male'"):
        from_ckpt.predict(images[:2], [None, "male"])
    assert from_ckpt.predict(images[0], {"sex": "male"})[0].metadata_used  # one image, one dict


def test_batch_size_does_not_change_results(trained, from_ckpt, images):
    small = Predictor.from_checkpoint(trained["ckpt"], batch_size=3)
    np.testing.assert_allclose(probs_of(small.predict(images, META)), probs_of(from_ckpt.predict(images, META)),
                               atol=1e-6)


def test_temperature_is_stored_and_applied(trained, from_ckpt, images):
    hot = Predictor.from_checkpoint(trained["hot"])
    assert hot.temperature == 2.5 and hot.card["calibration"]["temperature"] == 2.5
    p1, p2 = probs_of(from_ckpt.predict(images)), probs_of(hot.predict(images))
    assert not np.allclose(p1, p2, atol=1e-4)
    np.testing.assert_array_equal(p1.argmax(1), p2.argmax(1))
    expected = np.exp(np.log(p1) / 2.5)
    np.testing.assert_allclose(p2, expected / expected.sum(1, keepdims=True), atol=1e-5)
    assert p2.max() < p1.max()  # softer


def test_tta_is_the_mean_over_the_eight_dihedral_variants(from_ckpt, images):
    batched = from_ckpt.predict(images, META, tta=True)
    assert all(r.tta for r in batched)
    meta, _ = from_ckpt.encode_metadata(META, len(images))  # rows without metadata: "all unknown"
    x = from_ckpt.preprocess(images)
    expected_p, expected_t = [], []
    with torch.no_grad():
        for i in range(len(images)):
            m = torch.from_numpy(meta[i : i + 1])
            ps, ts = [], []
            for _, fn in tta_mod.DIHEDRAL:  # one variant at a time
                out = from_ckpt.net(fn(x[i : i + 1]).contiguous(memory_format=torch.channels_last), m)
                ps.append(torch.softmax(out.diagnosis_logits, -1)[0])
                ts.append(out.thickness[0])
            expected_p.append(torch.stack(ps).mean(0).numpy())
            expected_t.append(float(from_ckpt.scaler.denormalise(torch.stack(ts).mean())))
    np.testing.assert_allclose(probs_of(batched), np.array(expected_p), atol=1e-5)
    assert [r.thickness_mm for r in batched] == pytest.approx(expected_t, abs=1e-4)
    assert not np.allclose(probs_of(batched), probs_of(from_ckpt.predict(images, META)), atol=1e-6)


def test_tta_default_is_switchable(trained, images):
    on = Predictor.from_checkpoint(trained["ckpt"], tta=True)
    assert on.predict(images[:1])[0].tta and not on.predict(images[:1], tta=False)[0].tta


def test_dihedral_variants_are_distinct_and_complete():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    variants = tta_mod.dihedral_variants(x)
    assert len({tuple(v.flatten().tolist()) for v in variants}) == 8
    stacked = tta_mod.dihedral_batch(torch.cat([x, x + 100]))
    assert stacked.shape == (16, 1, 4, 4)
    torch.testing.assert_close(tta_mod.merge_variants(stacked)[1], tta_mod.merge_variants(stacked)[0] + 100)


def test_missing_model_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="model not found"):
        Predictor.from_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="model_card.json"):
        Predictor.from_checkpoint(tmp_path)
