"""Prepared inputs (decode once, preprocess once) and the batched DataLoader path of the Predictor."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import backend.inference.inputs as inputs
from backend.data.config import DataConfig
from backend.data.preprocess import PreprocessSettings, preprocess_images
from backend.data.schema import DIAGNOSES
from backend.data.transforms import preprocessing_dict
from backend.errors import ConfigError, ImageLoadError
from backend.inference.batches import InputFailure
from backend.inference.inputs import PreparedInput, Preprocessor, prepare_input
from backend.inference.records import RawOutputs, csv_value
from tests.inference.tiny import lesions, tiny_predictor


@pytest.fixture(scope="module")
def predictor():
    return tiny_predictor()


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def probs_of(results):
    return np.array([[r.probabilities[d] for d in DIAGNOSES] for r in results])


@pytest.fixture
def counted(monkeypatch):
    """Calls of the decoders inference uses (by image name) and of the eval preprocessing."""
    calls = {"decode": [], "preprocess": []}
    decode_bytes, load_image, preprocess = inputs.decode_image_bytes, inputs.load_image, Preprocessor.__call__
    monkeypatch.setattr(inputs, "decode_image_bytes",
                        lambda data, name, **kw: calls["decode"].append(name) or decode_bytes(data, name, **kw))
    monkeypatch.setattr(inputs, "load_image",
                        lambda path, **kw: calls["decode"].append(str(path)) or load_image(path, **kw))
    monkeypatch.setattr(Preprocessor, "__call__",
                        lambda self, image: calls["preprocess"].append(1) or preprocess(self, image))
    return calls


def test_prepared_upload_is_decoded_and_preprocessed_once_for_predict_and_explain(predictor, counted):
    data = png(lesions(1, size=80, seed=3)[0])
    prepared = predictor.prepare(("lesion.png", data))
    [result] = predictor.predict(prepared, {"age_approx": 60})
    heat = predictor.explain(prepared, target=result.top_class)
    thickness = predictor.explain_batch([prepared], target="thickness")[0]
    [again] = predictor.predict([prepared])
    assert counted["decode"] == ["lesion.png"] and len(counted["preprocess"]) == 1
    assert result.image == again.image == "lesion.png" and result.metadata_used and not again.metadata_used
    # The same results as an upload decoded on every call (which is what the counters see then).
    [plain] = predictor.predict(("lesion.png", data), {"age_approx": 60})
    np.testing.assert_allclose(probs_of([result]), probs_of([plain]), atol=1e-7)
    np.testing.assert_allclose(heat, predictor.explain(("lesion.png", data), target=result.top_class), atol=1e-6)
    assert heat.shape == thickness.shape == (80, 80)
    assert counted["decode"] == ["lesion.png"] * 3 and len(counted["preprocess"]) == 3


def test_prepare_input_accepts_every_input_once(predictor, tmp_path):
    image = lesions(1, size=72, seed=4)[0]
    path = tmp_path / "a.png"
    path.write_bytes(png(image))
    upload = io.BytesIO(png(image))
    upload.name = "upload.png"
    items = [image, path, ("b.png", png(image)), png(image), upload, ("c.png", image)]
    prepared = [prepare_input(item, i, target_size=64) for i, item in enumerate(items)]
    assert [p.name for p in prepared] == ["image_0", str(path), "b.png", "upload_3", "upload.png", "c.png"]
    assert all(np.array_equal(p.image, image) for p in prepared)
    assert prepared[2].getvalue() == png(image) and prepared[0].getvalue() == b"" and prepared[1].data is None
    assert prepare_input(prepared[2]) is prepared[2]
    renamed = prepare_input(prepared[2], name="other.png")
    assert renamed.name == "other.png" and renamed.image is prepared[2].image
    tensor = predictor.preprocessor.of(prepared[2])
    assert predictor.preprocessor.of(renamed) is tensor  # what was derived travels with the pixels
    assert prepared[2].flags(predictor.quality) == [] and prepared[2].flags(predictor.quality) is not \
        prepared[2].flags(predictor.quality)  # a fresh list each time: callers append the OOD flag
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        prepare_input(("broken.jpg", b"\xff\xd8 not a jpeg"))
    with pytest.raises(ConfigError, match="HxWx3 uint8"):
        prepare_input(np.zeros((4, 4), np.uint8))
    with pytest.raises(ConfigError, match="cannot predict on a int"):
        prepare_input(3)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iter_outputs_batches_skips_and_keeps_inputs(predictor, tmp_path, counted, num_workers):
    images = lesions(5, size=72, seed=5)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"case_{i}.png")
        paths[-1].write_bytes(png(image))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths.insert(2, tmp_path / "corrupt.png")
    metadata = [{"sex": "female"}, None, None, {"sex": "robot"}, {"age_approx": 40}, None]
    names = [f"name_{i}" for i in range(len(paths))]
    predictor.batch_size = 4
    try:
        batches = list(predictor.iter_outputs(paths, metadata, names=names, keep_inputs=True,
                                              num_workers=num_workers))
    finally:
        predictor.batch_size = 32
    assert [b.size for b in batches] == [4, 2]
    failures = [f for b in batches for f in b.failures]
    assert [f.index for f in failures] == [2, 3]
    assert failures[0].path == str(paths[2]) and "corrupt.png" in failures[0].message
    assert isinstance(failures[0].error(), ImageLoadError) and str(failures[0].error()) == failures[0].message
    assert isinstance(failures[1].error(), ConfigError) and "robot" in failures[1].message
    kept = [i for b in batches for i in b.indices]
    assert kept == [0, 1, 4, 5]
    preds = [p for b in batches for p in b.predictions]
    assert [p.image for p in preds] == [names[i] for i in kept]
    assert [p.metadata_used for p in preds] == [True, False, True, False]
    expected = predictor.predict([paths[i] for i in kept], [metadata[i] for i in kept])
    np.testing.assert_allclose(probs_of(preds), probs_of(expected), atol=1e-6)
    raw = RawOutputs.concatenate([b.raw for b in batches])
    np.testing.assert_allclose(raw.probs, probs_of(expected), atol=1e-6)
    # The kept inputs are decoded and preprocessed already: Grad-CAM reads them as they are.
    prepared = [p for b in batches for p in b.inputs]
    assert [p.name for p in prepared] == [names[i] for i in kept]
    before = (len(counted["decode"]), len(counted["preprocess"]))
    heatmaps = predictor.explain_batch(prepared, "MEL", [metadata[i] for i in kept])
    assert (len(counted["decode"]), len(counted["preprocess"])) == before
    assert [h.shape for h in heatmaps] == [(72, 72)] * 4


def test_predict_raises_the_first_unusable_input(predictor):
    with pytest.raises(ImageLoadError, match="bad.png"):
        predictor.predict([lesions(1)[0], ("bad.png", b"")])
    with pytest.raises(ConfigError, match="names for 1 images"):
        list(predictor.iter_outputs([lesions(1)[0]], names=["a", "b"]))


def test_raw_outputs_without_metadata_use_the_learned_missing_path(predictor):
    images = lesions(3, seed=6)
    meta = [{"age_approx": 70, "sex": "male"}] * 3
    raw, kept, skipped = predictor.raw_outputs(images, meta, use_metadata=False)
    assert kept == [0, 1, 2] and skipped == []
    with torch.no_grad():
        logits = predictor.net(predictor.preprocess(images), None).diagnosis_logits.numpy()
    np.testing.assert_allclose(raw.logits, logits, atol=1e-5)
    fed, _, _ = predictor.raw_outputs(images, meta)
    assert not np.allclose(fed.logits, logits, atol=1e-5)


def test_failures_and_records_are_plain_data():
    import pickle

    failure = InputFailure.from_error(3, ImageLoadError("x.png", "file is empty (0 bytes)"))
    assert pickle.loads(pickle.dumps(failure)) == failure
    assert str(failure.error()) == "x.png: file is empty (0 bytes)"
    assert pickle.loads(pickle.dumps(PreparedInput("a", np.zeros((1, 1, 3), np.uint8)))).name == "a"
    assert RawOutputs.concatenate([]).probs.shape == (0, len(DIAGNOSES))
    assert [csv_value(v) for v in (0.5, None, "x", 3)] == ["0.500000", "", "x", "3"]


def test_an_image_from_a_hairless_cache_is_not_de_haired_twice(tmp_path, monkeypatch):
    originals = tmp_path / "images"
    originals.mkdir()
    Image.fromarray(lesions(1, size=64, seed=2)[0]).save(originals / "a.png")
    preprocess_images(originals, tmp_path / "cache", PreprocessSettings(size=64, hair_removal=True), workers=1,
                      progress=False)
    removed = []
    monkeypatch.setattr(inputs, "remove_hair", lambda image: removed.append(1) or image)
    pre = Preprocessor(preprocessing_dict(DataConfig(img_size=32, hair_removal=True)))
    pre.of(prepare_input(tmp_path / "cache" / "a.png"))
    assert removed == []  # the cache removed the hair already (the model was trained on these images)
    pre.of(prepare_input(originals / "a.png"))
    pre.of(prepare_input(("upload.png", (originals / "a.png").read_bytes())))
    assert removed == [1, 1]  # an original file, and an upload: removed, as the model expects
