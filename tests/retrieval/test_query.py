"""Querying a library: twins first, the query's own image/lesion/patient left out, the vote, model mismatch."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from backend.data.formats import load_table
from backend.retrieval.build import build_library
from backend.retrieval.library import LibraryModelMismatchError, ReferenceLibrary
from backend.retrieval.query import SimilarCases, neighbour_vote, similar_cases
from tests.retrieval.conftest import load_png, write_twin_dataset


def test_twins_retrieve_each_other_first_and_never_themselves(twin_library, predictor):
    out, table = twin_library
    library = ReferenceLibrary.load(out)
    for i in range(len(table)):
        twin = i + 1 if i % 2 == 0 else i - 1
        result = similar_cases(predictor, load_png(table["image"].iat[i]), library, k=5)  # pixels only
        assert isinstance(result, SimilarCases) and len(result.neighbours) == 5
        assert result.neighbours[0].image_id == table["image_id"].iat[twin]
        assert result.neighbours[0].similarity > max(0.98, result.neighbours[1].similarity)
        assert table["image_id"].iat[i] not in [n.image_id for n in result.neighbours]
        assert result.n_excluded == 1
        sims = [n.similarity for n in result.neighbours]
        assert sims == sorted(sims, reverse=True) and [n.rank for n in result.neighbours] == [1, 2, 3, 4, 5]


def test_file_query_excludes_its_own_file_and_given_lesion_and_patient(twin_library, predictor):
    out, table = twin_library
    library = ReferenceLibrary.load(out)
    path = table["image"].iat[0]
    plain = similar_cases(predictor, path, out, k=16)  # a folder path is loaded
    assert plain.neighbours[0].image_id == "IMG_001" and len(plain.neighbours) == 15
    assert "IMG_000" not in [n.image_id for n in plain.neighbours]
    same_lesion = similar_cases(predictor, path, library, k=16, lesion_id="L1")
    assert "IMG_001" not in [n.image_id for n in same_lesion.neighbours]
    assert same_lesion.n_excluded == 2 and len(same_lesion.neighbours) == 14
    same_patient = similar_cases(predictor, path, library, k=16, patient_id="P1")
    assert "IMG_001" not in [n.image_id for n in same_patient.neighbours] and same_patient.n_excluded == 2
    # A blank id excludes nothing extra.
    assert similar_cases(predictor, path, library, k=16, lesion_id="", patient_id=None).n_excluded == 1


def test_neighbour_thumbnails_and_vote_agree_with_the_library(twin_library, predictor):
    out, table = twin_library
    library = ReferenceLibrary.load(out)
    data = Path(table["image"].iat[2]).read_bytes()
    result = similar_cases(predictor, ("upload.png", data), library)
    assert len(result.neighbours) == 10 and result.vote.k == 10  # k = 10 by default
    assert result.neighbours[0].thumbnail == library.thumbnail(result.neighbours[0].row)
    rows = [n.row for n in result.neighbours]
    assert result.vote.n_malignant == int(library.malignant[rows].sum())
    assert result.vote.summary() == f"{result.vote.n_malignant} of 10 most similar were malignant"
    assert result.to_row()["neighbours"] == ";".join(library.rows["image_id"].iloc[rows])
    assert result.to_row()["knn_malignant"] == pytest.approx(result.vote.n_malignant / 10)


def test_vote_counts_majority_and_ties():
    vote = neighbour_vote(["MEL", "NV", "NV", "BCC", "", "NV", "MEL"], [True, False, False, True, True, False, True],
                          [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    assert (vote.k, vote.n_malignant, vote.share_malignant) == (7, 4, pytest.approx(4 / 7))
    assert (vote.majority_diagnosis, vote.majority_count) == ("NV", 3)
    assert vote.counts == {"NV": 3, "MEL": 2, "BCC": 1, "": 1}
    assert vote.summary() == "4 of 7 most similar were malignant"
    assert vote.diagnosis_summary() == "most common diagnosis: NV (3 of 7)"
    tie = neighbour_vote(["NV", "MEL", "MEL", "NV"], [False, True, True, False], [0.9, 0.8, 0.7, 0.85])
    assert tie.majority_diagnosis == "NV"  # 2 each: the larger summed similarity wins
    other = neighbour_vote(["UNK", "UNK", "NV"], [False, False, False], [0.9, 0.8, 0.7])
    assert other.diagnosis_summary() == ("most common diagnosis: UNK, a benign lesion none of the 8 named "
                                         "diagnoses (2 of 3)")
    unknown = neighbour_vote(["", ""], [True, False], [0.5, 0.4])
    assert unknown.majority_diagnosis == "" and unknown.n_malignant == 1
    assert neighbour_vote([], [], []).summary() == "no similar cases found"


def test_library_of_another_model_is_refused_with_the_rebuild_command(twin_library, other_predictor, twins):
    out, table = twin_library
    with pytest.raises(LibraryModelMismatchError) as err:
        similar_cases(other_predictor, table["image"].iat[0], out, model_path="models/new_bundle")
    message = str(err.value)
    assert "built with model" in message and "not comparable" in message
    expected = (f"python -m scripts.build_reference --csv {twins} --img_dir {twins.parent / 'images'} "
                f"--output {out} --checkpoint models/new_bundle --rebuild")
    assert expected in message


def test_prepared_query_reuses_its_network_input_and_still_excludes_its_own_file(twin_library, predictor,
                                                                               monkeypatch):
    out, table = twin_library
    path = Path(table["image"].iat[0])
    prepared = predictor.prepare(("upload.png", path.read_bytes()))
    predictor.predict([prepared])  # what the app does first
    calls = []
    real_call = type(predictor.preprocessor).__call__
    monkeypatch.setattr(type(predictor.preprocessor), "__call__",
                        lambda self, image: calls.append(1) or real_call(self, image))
    result = similar_cases(predictor, prepared, out, k=16)
    assert calls == []  # the upload's network input was prepared once, for prediction
    assert result.n_excluded == 1 and table["image_id"].iat[0] not in [n.image_id for n in result.neighbours]
    fresh = similar_cases(predictor, ("upload.png", path.read_bytes()), out, k=16)
    assert len(calls) == 1 and [n.image_id for n in fresh.neighbours] == [n.image_id for n in result.neighbours]


def test_a_re_encoded_copy_of_the_query_is_not_its_own_similar_case(twin_library, predictor):
    out, table = twin_library
    library = ReferenceLibrary.load(out)
    picture = load_png(table["image"].iat[4])
    copy = io.BytesIO()
    Image.fromarray(picture).resize((96, 96), Image.Resampling.BICUBIC).save(copy, "JPEG", quality=70)
    result = similar_cases(predictor, ("exported.jpg", copy.getvalue()), library, k=5)
    # Other bytes and other pixels (no hash matches), yet the same picture: left out, like the file itself.
    assert table["image_id"].iat[4] not in [n.image_id for n in result.neighbours]
    assert result.neighbours[0].image_id == table["image_id"].iat[5]  # its twin, another shot, stays first
    assert len(result.neighbours) == 5


def test_several_photos_of_one_lesion_are_one_neighbour(tmp_path, predictor):
    csv = write_twin_dataset(tmp_path, n_pairs=4)
    rows = pd.read_csv(csv)
    rows.loc[2:, "lesion_id"] = ["LA", "LA", "LB", "LB", "LC", "LC"]  # rows 2-7: three lesions, two photos each
    rows.to_csv(csv, index=False)
    out = tmp_path / "lib"
    build_library(load_table(csv, check_images=False), out, predictor, progress=False)
    library = ReferenceLibrary.load(out)
    query = load_png(tmp_path / "images" / rows["image"].iloc[0])
    found = similar_cases(predictor, query, library, k=10)
    lesions = [n.lesion_id for n in found.neighbours]
    assert len(lesions) == len(set(lesions)) == 4  # row 1 and LA, LB, LC: each lesion votes once
    assert found.vote.k == 4
    sims = [n.similarity for n in found.neighbours]
    assert sims == sorted(sims, reverse=True) and [n.rank for n in found.neighbours] == [1, 2, 3, 4]


def test_a_copy_of_the_query_takes_its_lesion_and_patient_out_with_it(tmp_path, predictor):
    csv = write_twin_dataset(tmp_path, n_pairs=4)
    rows = pd.read_csv(csv)
    rows.loc[[2, 3], "lesion_id"] = "LA"  # image 2 and its twin 3: two photos of one lesion
    rows.loc[[4, 6], "patient_id"] = "PB"  # image 4 and image 6: one patient
    rows.to_csv(csv, index=False)
    build_library(load_table(csv, check_images=False), tmp_path / "lib", predictor, progress=False)
    library = ReferenceLibrary.load(tmp_path / "lib")
    # (query row, rows that must not come back, neighbours left: one per lesion, LA's two photos one)
    for query_row, gone, left in ((2, {"IMG_002", "IMG_003"}, 6), (4, {"IMG_004", "IMG_006"}, 5)):
        copy = io.BytesIO()
        picture = Image.fromarray(load_png(tmp_path / "images" / rows["image"].iloc[query_row]))
        picture.resize((96, 96), Image.Resampling.BICUBIC).save(copy, "PNG")  # exported larger, as PNG
        found = similar_cases(predictor, ("exported.jpg", copy.getvalue()), library, k=10)
        # The copy's lesion (the same lesion as the query) and patient vote for nothing.
        assert gone.isdisjoint(n.image_id for n in found.neighbours), query_row
        assert len(found.neighbours) == left
