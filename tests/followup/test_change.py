"""Change measures: growth within 0.10 of the truth, no growth within 0.05, lighting is not change, model outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from app.followup_view import measure_sentences
from backend.errors import FollowUpError
from backend.followup import compare_visits
from backend.followup.change import BORDER_FLAG, RISK_FLAG
from backend.followup.synthetic import FollowUpParams, make_follow_up
from backend.inference.risk import RiskConfig
from tests.followup.conftest import lesion_photo

MOTION = {"angle_deg": 18.0, "zoom": 1.12, "shift": (0.04, -0.03)}


@pytest.mark.parametrize("growth", [1.2, 1.45])
def test_grown_lesion_area_change_within_0_10_of_truth(growth):
    before, truth = lesion_photo(6, size=160, radius=26)
    synthetic = make_follow_up(before, FollowUpParams(**MOTION, growth=growth, brightness=0.9), truth, seed=6)
    result = compare_visits(before, synthetic.image)
    assert result.aligned, result.reason
    assert abs(result.area_change - synthetic.true_area_change) <= 0.10
    assert result.diameter_change == pytest.approx(growth - 1, abs=0.06)
    assert result.flags[0] == f"lesion grew by {result.area_change * 100:.0f}% in area"
    assert result.change_map.shape == before.shape[:2] and result.change_map.max() > 0
    grown = result.after_mask & ~result.before_mask
    assert grown.sum() >= 0.8 * (result.after_mask.sum() - result.before_mask.sum())


def test_shrunk_lesion_is_flagged_as_shrinking():
    before, truth = lesion_photo(6, size=160, radius=26)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=10, zoom=1.05, shift=(0.02, -0.01), growth=0.8),
                               truth, seed=6)
    result = compare_visits(before, synthetic.image)
    assert result.aligned, result.reason
    assert result.area_change == pytest.approx(0.8**2 - 1, abs=0.05)  # 36% less area
    assert abs(result.area_change - synthetic.true_area_change) <= 0.10
    assert result.diameter_change == pytest.approx(0.8 - 1, abs=0.06)
    shrank = round(-result.area_change * 100)
    assert 31 <= shrank <= 41
    assert result.flags[:2] == [f"lesion shrank by {shrank}% in area",
                                f"largest diameter decreased by {round(-result.diameter_change * 100)}%"]
    assert not any("grew" in f or "increased" in f for f in result.flags)


def pixel_irregularity(mask: np.ndarray) -> float:
    """``1 - area / convex hull area`` of a mask's pixels taken as unit squares (their corners' hull)."""
    ys, xs = np.nonzero(mask)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    return 1.0 - mask.sum() / ConvexHull(corners).volume  # a 2-D hull's "volume" is its area


def test_a_disc_that_became_lobed_has_a_more_irregular_border():
    # The same skin photographed twice; the lesion, a disc at the first visit, has grown five lobes.
    before, disc = lesion_photo(6, size=160, radius=26)
    after, lobed = lesion_photo(6, size=160, radius=26, lobes=0.25)
    truth = pixel_irregularity(lobed) - pixel_irregularity(disc)
    assert truth > 2 * BORDER_FLAG
    result = compare_visits(before, after)
    assert result.aligned, result.reason
    assert result.border_change == pytest.approx(truth, abs=0.04)
    assert "border became more irregular" in result.flags
    assert "Its border has become more irregular (more notches or lobes)." in measure_sentences(result)
    # The other way round (lobed, then a disc) the border became more regular: no such flag.
    back = compare_visits(after, before)
    assert back.aligned, back.reason
    assert back.border_change == pytest.approx(-truth, abs=0.04)
    assert "border became more irregular" not in back.flags
    assert "Its border has become more regular." in measure_sentences(back)


def test_unchanged_lesion_photographed_again_is_within_0_05():
    before, truth = lesion_photo(7, size=160)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=-25, zoom=0.85, shift=(-0.05, 0.02)), truth, seed=7)
    result = compare_visits(before, synthetic.image)
    assert result.aligned
    assert abs(result.area_change) <= 0.05  # the 15% zoom-out is not shrinkage
    assert abs(result.diameter_change) <= 0.05
    assert not any("grew" in f or "shrank" in f for f in result.flags)


def test_brightness_and_white_balance_change_is_no_change():
    before, truth = lesion_photo(8, size=160)
    params = FollowUpParams(shift=(0.02, 0.0), brightness=1.25, colour=(1.08, 0.95, 0.9))
    synthetic = make_follow_up(before, params, truth, seed=8)
    result = compare_visits(before, synthetic.image)
    assert result.aligned
    assert abs(result.area_change) <= 0.05
    assert result.colour_change < 3.0  # delta E: the eye barely tells such colours apart
    assert not any("colour" in f for f in result.flags)
    darker = make_follow_up(before, FollowUpParams(brightness=0.75), truth, seed=9)
    assert compare_visits(before, darker.image).colour_change < 3.0


def test_real_colour_change_is_measured():
    before, truth = lesion_photo(9, size=160)
    after = before.copy()
    after[truth] = np.clip(after[truth].astype(int) + np.array([-40, -10, 30]), 0, 255).astype(np.uint8)  # bluer
    result = compare_visits(before, after)
    assert result.colour_change > 10
    assert any(f.startswith("lesion colour changed") for f in result.flags)


def test_unrelated_pair_is_a_result_without_measures():
    first, _ = lesion_photo(10, size=160)
    second, _ = lesion_photo(11, size=160)
    result = compare_visits(first, second, before_name="a.png", after_name="b.png")
    assert not result.aligned and result.flags[0].startswith("could not align")
    assert result.area_change is None and result.after_aligned is None and result.matrix is None
    data = json.loads(json.dumps(result.to_dict()))
    assert data["aligned"] is False and data["area_change"] is None and data["reason"] == result.reason


def test_aligned_pair_without_lesion_is_an_error_naming_the_image():
    skin, _ = lesion_photo(12, size=160, radius=0.01)
    moved = make_follow_up(skin, FollowUpParams(angle_deg=10, shift=(0.03, 0.0)), np.zeros(skin.shape[:2], bool))
    with pytest.raises(FollowUpError, match=r"^visit1\.png: no lesion found"):
        compare_visits(skin, moved.image, before_name="visit1.png", after_name="visit2.png")


class StubPredictor:
    """The two ``Predictor`` methods follow-up uses, with fixed answers (``after_flags`` make the follow-up grey)."""

    def __init__(self, after_flags=(), risks=(0.2, 0.7), risk=None, after_light="red", before_light="green"):
        self.calls = []
        self.before_light = before_light
        self.after_light = after_light
        self.after_flags = list(after_flags)
        self.risks = risks
        self.risk = risk

    def predict(self, images, metadata=None):
        self.calls.append((images, metadata))
        return [SimpleNamespace(risk=self.risks[0], malignant=0.1, traffic_light=self.before_light, flags=[],
                                flag_reasons={}),
                SimpleNamespace(risk=self.risks[1], malignant=0.6,
                                traffic_light="grey" if self.after_flags else self.after_light,
                                flags=self.after_flags, flag_reasons={"blurred": "the image looks out of focus"})]

    def raw_outputs(self, images, metadata=None):
        features = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
        return SimpleNamespace(features=features), [0, 1], []


def test_model_risk_and_feature_distance_of_both_visits():
    before, truth = lesion_photo(13, size=160)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=5, growth=1.2), truth, seed=13)
    stub = StubPredictor()
    meta = ({"age_approx": 60}, None)
    result = compare_visits(before, synthetic.image, stub, model_inputs=("a.jpg", "b.jpg"), model_metadata=meta)
    # The model reads what it was told to (e.g. the original files), with each visit's patient metadata.
    assert stub.calls == [(["a.jpg", "b.jpg"], [{"age_approx": 60}, None])]
    assert (result.risk_before, result.risk_after) == (0.2, 0.7) and result.risk_comparable
    assert result.embedding_distance == pytest.approx(1 - 1 / np.sqrt(2))
    assert "model risk moved from green to red (0.200 -> 0.700)" in result.flags
    data = result.to_dict()
    for key in ("aligned", "area_change", "diameter_change", "risk_before", "risk_after", "flags"):
        assert key in data
    assert data["traffic_light_after"] == "red" and data["risk_comparable"] is True


def test_a_risk_rise_within_the_same_light_is_flagged_from_the_risk_flag_step_on():
    before, truth = lesion_photo(13, size=160)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=5), truth, seed=13)
    assert 0.25 - 0.2 < RISK_FLAG <= 0.35 - 0.2  # one rise below the reporting step, one above it
    rose = compare_visits(before, synthetic.image, StubPredictor(risks=(0.2, 0.35), before_light="yellow",
                                                                 after_light="yellow"))
    assert rose.aligned and rose.risk_comparable
    assert [f for f in rose.flags if "model risk" in f] == ["model risk rose from 0.200 to 0.350"]
    small = compare_visits(before, synthetic.image, StubPredictor(risks=(0.2, 0.25), before_light="yellow",
                                                                  after_light="yellow"))
    assert small.aligned and small.risk_comparable
    assert not any("model risk" in f for f in small.flags)
    fell = compare_visits(before, synthetic.image, StubPredictor(risks=(0.35, 0.2), before_light="yellow",
                                                                 after_light="yellow"))
    assert not any("model risk" in f for f in fell.flags)  # a fall is no finding


def test_a_risk_within_rounding_of_a_threshold_keeps_the_digits_of_its_light():
    before, truth = lesion_photo(13, size=160)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=5, growth=1.2), truth, seed=13)
    cfg = RiskConfig(green_below=0.126, yellow_below=0.41797)
    stub = StubPredictor(risks=(0.2, 0.41796), risk=cfg, after_light="yellow")
    result = compare_visits(before, synthetic.image, stub)
    assert result.risk_digits == 5  # 0.418 and 0.4180 would read as red beside "red from 0.418(0)"
    assert "model risk moved from green to yellow (0.20000 -> 0.41796)" in result.flags
    plain = compare_visits(before, synthetic.image, StubPredictor(risk=cfg))
    assert plain.risk_digits == 3 and "model risk moved from green to red (0.200 -> 0.700)" in plain.flags


def test_a_visit_the_model_cannot_assess_gets_no_risk_comparison():
    before, truth = lesion_photo(13, size=160)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=5, growth=1.2), truth, seed=13)
    result = compare_visits(before, synthetic.image, StubPredictor(after_flags=["blurred"]))
    assert result.light_after == "grey" and not result.risk_comparable
    assert not any("model risk" in f for f in result.flags)  # no "moved from green to ..." for a grey image
    assert any("follow-up image" in f and "out of focus" in f for f in result.flags)
    assert result.to_dict()["risk_comparable"] is False


def test_a_uniform_photo_is_named_as_such_not_a_numpy_error():
    before, _ = lesion_photo(6, size=160)
    flat = np.full((160, 160, 3), 128, np.uint8)
    result = compare_visits(before, flat, before_name="v1.jpg", after_name="v2.jpg")
    assert not result.aligned
    assert "v2.jpg: no lesion found: the picture is one uniform colour" in result.flags
    both = compare_visits(flat, flat, before_name="v1.jpg", after_name="v2.jpg")
    assert sum("uniform colour" in f for f in both.flags) == 2
    brown = np.empty((160, 160, 3), np.uint8)
    brown[...] = (200, 120, 90)  # uniform, though not grey
    assert "v2.jpg: no lesion found: the picture is one uniform colour" in compare_visits(
        before, brown, before_name="v1.jpg", after_name="v2.jpg").flags
