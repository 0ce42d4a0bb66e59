"""The triage viewer's "Similar confirmed cases" panel (AppTest on tiny bundles and a tiny library)."""

from __future__ import annotations

import pytest

from backend.data.formats import load_table
from backend.inference.predictor import Predictor
from backend.retrieval.build import build_library
from backend.retrieval.query import SimilarCases
from tests.app.conftest import MIME, image_bytes, new_app, session_uploads, texts, upload


def _library(bundles, model, out):

    table = load_table(bundles.data_dir / "labels.csv", check_images=False)
    build_library(table, out, Predictor.from_checkpoint(model), model_path=str(model),
                  img_dir=bundles.data_dir / "images", progress=False)
    return out


@pytest.fixture(scope="module")
def refs(tiny_bundles, tmp_path_factory):
    """A reference folder with one library built with the default (fusion) tiny model."""
    root = tmp_path_factory.mktemp("refs")
    _library(tiny_bundles, tiny_bundles.fusion, root / "clinic_a")
    return root


@pytest.fixture
def env(tiny_bundles, monkeypatch):
    for key, value in tiny_bundles.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DERMALENS_REFERENCE_DIR", raising=False)
    return monkeypatch


def test_viewer_shows_similar_cases_from_the_library(env, refs):
    env.setenv("DERMALENS_REFERENCE_DIR", str(refs))
    at = new_app().run()
    upload(at, ("query.png", image_bytes(1), MIME["PNG"]))
    assert not at.exception
    assert "Similar confirmed cases" in texts(at.subheader)
    [item] = session_uploads(at).values()
    [result] = item.similar.values()
    assert isinstance(result, SimilarCases) and len(result.neighbours) == 10 and result.library == "clinic_a"
    verb = "was" if result.vote.n_malignant == 1 else "were"
    vote = f"{result.vote.n_malignant} of 10 most similar {verb} malignant"
    assert vote in texts(at.markdown)
    assert "Enlarge the similar cases" in [e.label for e in at.expander]
    captions = [img.proto.imgs[0].caption for img in at.main.get("image")]
    for neighbour in result.neighbours:
        caption = f"{neighbour.rank}. {neighbour.diagnosis}"
        assert sum(c.startswith(caption) and f"{neighbour.similarity:.2f}" in c for c in captions) == 2  # + enlarged
    assert "clinic_a (48 cases)" in str(at.sidebar.selectbox(key="reference_picker").format_func(
        at.sidebar.selectbox(key="reference_picker").value))
    at.run()
    assert next(iter(session_uploads(at).values())).similar == item.similar  # searched once, then reused
    # A lesion ID typed for the image keeps that lesion's own library photos out of its similar cases.
    own = result.neighbours[0].lesion_id
    at.text_input(key=f"lid_{item.id}").set_value(own).run()
    assert not at.exception
    again = [r for key, r in session_uploads(at)[item.id].similar.items() if key[3] == own]
    assert len(again) == 1 and own not in {n.lesion_id for n in again[0].neighbours} and again[0].n_excluded >= 1


def test_without_a_library_the_panel_says_how_to_build_one(env, tmp_path):
    at = new_app().run()
    upload(at, ("query.png", image_bytes(2), MIME["PNG"]))
    assert not at.exception and "Similar confirmed cases" in texts(at.subheader)
    info = texts(at.info)
    assert "python -m scripts.build_reference --csv labels.csv --img_dir images/ --output" in info
    assert "DERMALENS_REFERENCE_DIR" in info
    assert "query.png" in [img.proto.imgs[0].caption for img in at.main.get("image")]  # the viewer still works
    env.setenv("DERMALENS_REFERENCE_DIR", str(tmp_path / "empty"))
    at = new_app().run()
    upload(at, ("query.png", image_bytes(2), MIME["PNG"]))
    assert f"{tmp_path / 'empty'}" in texts(at.info) and "python -m scripts.build_reference" in texts(at.info)


def test_library_of_another_model_shows_the_refusal(env, tiny_bundles, tmp_path):
    _library(tiny_bundles, tiny_bundles.image_only, tmp_path / "refs" / "other_model")
    env.setenv("DERMALENS_REFERENCE_DIR", str(tmp_path / "refs"))
    at = new_app().run()
    upload(at, ("query.png", image_bytes(3), MIME["PNG"]))
    assert not at.exception
    errors = "\n".join(e.value for e in at.main.error)
    assert "built with model 'Tiny image-only'" in errors and "--rebuild" in errors
    assert f"--checkpoint {tiny_bundles.fusion}" in errors
    [item] = session_uploads(at).values()
    assert all(isinstance(v, str) for v in item.similar.values())  # no results, only the message
    assert "most similar were malignant" not in texts(at.markdown)
