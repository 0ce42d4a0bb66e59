"""Building a reference library: contents, thumbnails, bad rows, resume after a crash, model identity."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import backend.retrieval.build as build_mod
from backend.data.formats import load_table
from backend.retrieval.build import build_library
from backend.retrieval.library import (
    BUILD_DIR,
    LibraryModelMismatchError,
    ReferenceLibrary,
    ReferenceLibraryError,
    model_identity,
)
from tests.retrieval.conftest import varied_image, write_twin_dataset


def test_library_stores_unit_embeddings_metadata_hashes_and_thumbnails(twin_library, predictor):
    out, table = twin_library
    library = ReferenceLibrary.load(out)
    assert len(library) == len(table) == 16
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "index.csv", "library.json", "thumbs.bin"]
    # Embeddings are the predictor's backbone features, L2-normalised, in table order.
    raw, _, _ = predictor.raw_outputs(list(table["image"]))
    expected = raw.features / np.linalg.norm(raw.features, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(library.embeddings), expected, atol=1e-5)
    rows = library.rows
    assert list(rows["image_id"]) == list(table["image_id"])
    assert list(rows["image"]) == [f"IMG_{i:03d}.png" for i in range(16)]  # relative names, never absolute
    assert list(rows["diagnosis"]) == list(table["diagnosis"])
    assert list(rows["lesion_id"]) == [f"L{i}" for i in range(16)]
    assert list(library.malignant) == [d in ("MEL", "BCC", "SCC") for d in table["diagnosis"]]
    import hashlib
    from pathlib import Path

    assert rows["sha256"].iat[3] == hashlib.sha256(Path(table["image"].iat[3]).read_bytes()).hexdigest()
    manifest = json.loads((out / "library.json").read_text())
    identity = model_identity(predictor)
    assert manifest["complete"] is True and manifest["n_rows"] == 16 and manifest["n_skipped"] == 0
    assert manifest["model"]["weights_sha256"] == identity.sha256
    assert manifest["model"]["feature_dim"] == library.feature_dim == raw.features.shape[1]
    with Image.open(io.BytesIO(library.thumbnail(5))) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 128


def test_thumbnails_are_small_and_carry_no_exif(tmp_path, predictor):
    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x010F] = "SecretCamMaker"
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}
    Image.fromarray(varied_image(np.random.default_rng(3), 300)).save(images / "big.jpg", exif=exif)
    (tmp_path / "labels.csv").write_text("image,diagnosis\nbig.jpg,NV\n")
    out = tmp_path / "lib"
    build_library(load_table(tmp_path / "labels.csv", check_images=False), out, predictor, thumb_size=48,
                  progress=False)
    library = ReferenceLibrary.load(out)
    data = library.thumbnail(0)
    assert b"SecretCamMaker" not in data and b"SecretCamMaker" not in (out / "thumbs.bin").read_bytes()
    with Image.open(io.BytesIO(data)) as thumb:
        assert max(thumb.size) == 48 and not thumb.getexif()


def test_bad_rows_are_reported_skipped_counted_and_retried(tmp_path, predictor, capsys):
    csv = write_twin_dataset(tmp_path, n_pairs=2)
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with open(csv, "a") as fh:
        fh.write("missing.png,NV,0,LM,PM\ncorrupt.png,MEL,1,LC,PC\n")
    table = load_table(csv, check_images=False)
    out = tmp_path / "lib"
    report = build_library(table, out, predictor, img_dir=tmp_path / "images", chunk_size=2)
    assert report.n_rows == 4 and report.n_skipped == 2 and len(report.skipped) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and "file not found" in err and "corrupt.png" in err
    manifest = json.loads((out / "library.json").read_text())
    assert manifest["n_skipped"] == 2 and manifest["n_table_rows"] == 6
    assert any("missing.png" in m for m in manifest["skipped"]) and any("corrupt.png" in m for m in manifest["skipped"])
    assert "missing.png" not in set(ReferenceLibrary.load(out).rows["image"])
    # The missing file appears: the next run embeds it (and only it) and no longer counts it.
    Image.fromarray(varied_image(np.random.default_rng(9))).save(tmp_path / "images" / "missing.png")
    report = build_library(table, out, predictor, img_dir=tmp_path / "images", progress=False)
    assert (report.n_embedded, report.n_reused, report.n_rows, report.n_skipped) == (1, 4, 5, 1)
    assert json.loads((out / "library.json").read_text())["n_skipped"] == 1


def test_interrupted_build_resumes_and_holds_every_row_once(tmp_path, predictor, monkeypatch):
    csv = write_twin_dataset(tmp_path, n_pairs=5)  # 10 rows, chunks of 3: 4 chunks
    table = load_table(csv, check_images=False)
    out = tmp_path / "lib"
    real_write = build_mod._write_chunk
    calls = []

    def crash_after_first(*args, **kwargs):
        if calls:
            raise RuntimeError("power cut")
        calls.append(1)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(build_mod, "_write_chunk", crash_after_first)
    with pytest.raises(RuntimeError, match="power cut"):
        build_library(table, out, predictor, chunk_size=3, progress=False)
    assert len(list((out / BUILD_DIR).glob("chunk_*.npz"))) == 1
    with pytest.raises(ReferenceLibraryError, match="interrupted.*rerun the same command"):
        ReferenceLibrary.load(out)
    monkeypatch.setattr(build_mod, "_write_chunk", real_write)
    embedded = []
    real_embed = build_mod._embed_chunk
    monkeypatch.setattr(build_mod, "_embed_chunk",
                        lambda p, rows, *a: embedded.extend(r["image_id"] for r in rows) or real_embed(p, rows, *a))
    report = build_library(table, out, predictor, chunk_size=3, progress=False)
    assert embedded == list(table["image_id"][3:])  # the first chunk is not redone
    assert (report.n_reused, report.n_embedded, report.n_rows) == (3, 7, 10)
    library = ReferenceLibrary.load(out)
    assert list(library.rows["image_id"]) == list(table["image_id"])  # every row exactly once, in order
    assert not (out / BUILD_DIR).exists()
    fresh = tmp_path / "fresh"
    build_library(table, fresh, predictor, chunk_size=100, progress=False)
    np.testing.assert_allclose(np.asarray(library.embeddings), np.asarray(ReferenceLibrary.load(fresh).embeddings),
                               atol=1e-6)
    assert (out / "thumbs.bin").read_bytes() == (fresh / "thumbs.bin").read_bytes()


def test_rerun_of_a_complete_library_embeds_nothing(twin_library, predictor, monkeypatch):
    out, table = twin_library
    monkeypatch.setattr(build_mod, "_embed_chunk", lambda *a: pytest.fail("nothing should be embedded"))
    before = ReferenceLibrary.load(out)
    report = build_library(table, out, predictor, progress=False)
    assert (report.n_embedded, report.n_reused, report.n_rows) == (0, 16, 16)
    after = ReferenceLibrary.load(out)
    pd.testing.assert_frame_equal(before.rows, after.rows)


def test_an_update_takes_todays_labels_and_ids_and_re_embeds_a_replaced_image(tmp_path, predictor, monkeypatch):
    csv = write_twin_dataset(tmp_path, n_pairs=3)
    out = tmp_path / "lib"
    build_library(load_table(csv, check_images=False), out, predictor, progress=False)
    rows = pd.read_csv(csv)
    first, second = rows["image"].iloc[0], rows["image"].iloc[1]
    rows.loc[0, ["diagnosis", "label"]] = ["NV", 0]  # histology corrected the first lesion
    rows["patient_id"] = "P1"  # and every image turns out to be one patient's
    rows.to_csv(csv, index=False)
    Image.fromarray(varied_image(np.random.default_rng(99), 48)).save(tmp_path / "images" / second)  # new file
    embedded = []
    real_embed = build_mod._embed_chunk
    monkeypatch.setattr(build_mod, "_embed_chunk",
                        lambda p, todo, *a: embedded.extend(r["image_id"] for r in todo) or real_embed(p, todo, *a))
    report = build_library(load_table(csv, check_images=False), out, predictor, progress=False)
    table = load_table(csv, check_images=False)
    assert embedded == [table["image_id"].iloc[1]] and (report.n_reused, report.n_embedded) == (5, 1)
    library = ReferenceLibrary.load(out)
    stored = library.rows.set_index("image")
    assert (stored.loc[first, "diagnosis"], int(stored.loc[first, "malignant"])) == ("NV", 0)
    assert set(library.rows["patient_id"]) == {"P1"}


def test_library_of_another_model_is_refused_then_rebuilt(tmp_path, predictor, other_predictor):
    csv = write_twin_dataset(tmp_path, n_pairs=2)
    table = load_table(csv, check_images=False)
    out = tmp_path / "lib"
    build_library(table, out, predictor, progress=False)
    with pytest.raises(LibraryModelMismatchError) as err:
        build_library(table, out, other_predictor, model_path="other.ckpt", progress=False)
    message = str(err.value)
    assert "python -m scripts.build_reference" in message and "--rebuild" in message
    assert f"--output {out}" in message and "--checkpoint other.ckpt" in message and str(csv) in message
    assert json.loads((out / "library.json").read_text())["model"]["weights_sha256"] == model_identity(predictor).sha256
    build_library(table, out, other_predictor, rebuild=True, progress=False)
    library = ReferenceLibrary.load(out)
    assert library.model.sha256 == model_identity(other_predictor).sha256 and len(library) == 4


def test_output_that_is_not_a_library_is_refused(tmp_path, predictor):
    csv = write_twin_dataset(tmp_path / "data", n_pairs=1)
    table = load_table(csv, check_images=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ReferenceLibraryError, match="not a reference library"):
        build_library(table, tmp_path / "busy", predictor, progress=False)
    with pytest.raises(ReferenceLibraryError, match="rerun|not a reference library|no library.json"):
        ReferenceLibrary.load(tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
