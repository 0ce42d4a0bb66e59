"""The Follow-up screen's words and metrics (app.followup_view) for assessable and not-assessable visits."""

from __future__ import annotations

from types import SimpleNamespace

from app import followup_view as view
from backend.followup.change import FollowUpResult


def _result(light_before: str, light_after: str) -> FollowUpResult:
    result = FollowUpResult("a.jpg", "b.jpg", True, None, registration=SimpleNamespace())
    result.area_change, result.risk_before, result.risk_after = 0.3, 0.12, 0.55
    result.light_before, result.light_after = light_before, light_after
    return result


def test_risk_of_two_assessable_visits_is_compared_with_its_change():
    result = _result("green", "red")
    assert view.risk_sentences(result) == [
        "The model's risk score went from 0.120 (green) at the first visit to 0.550 (red) now."]
    assert ("Model risk now", "0.550", "+0.430") in view.metric_values(result)


def test_risk_near_a_threshold_is_shown_with_the_digits_that_keep_its_light():
    result = _result("green", "yellow")
    result.risk_before, result.risk_after, result.risk_digits = 0.12, 0.4179, 4
    assert view.risk_sentences(result) == [
        "The model's risk score went from 0.1200 (green) at the first visit to 0.4179 (yellow) now."]
    assert ("Model risk now", "0.4179", "+0.2979") in view.metric_values(result)


def test_a_grey_visit_gets_no_risk_number_change_or_light():
    for before, after, named in (("green", "grey", "follow-up"), ("grey", "red", "baseline"),
                                 ("grey", "grey", "baseline and the follow-up")):
        result = _result(before, after)
        words = " ".join(view.risk_sentences(result))
        assert f"cannot assess the {named} photo" in words and "retake" in words
        assert "0.550" not in words and "0.120" not in words and "red" not in words and "green" not in words
        assert [label for label, _, _ in view.metric_values(result)] == ["Area change"]  # no coloured risk delta
        assert not any("went from" in line for line in view.measure_sentences(result))


def test_changes_to_review_are_the_change_flags_without_the_caution_flags():
    result = _result("green", "green")
    result.flags = ["lesion grew by 30% in area", "could not align the edge of the skin",
                    "border became more irregular"]
    changed, text = view.findings_markdown(result)
    assert changed and "- Lesion grew by 30% in area\n- Border became more irregular" in text
    assert "could not align" not in text and "colour by delta E 8 or more" in text
    result.flags = ["could not align the edge of the skin"]
    assert view.findings_markdown(result) == (False, f"No change reached the review thresholds "
                                                     f"({view.CHANGE_THRESHOLDS}).")


def test_default_pair_reads_lesion_ids_and_never_pairs_two_named_lesions():
    def uploads(*ids):
        return {f"u{i}": SimpleNamespace(lesion_id=lesion) for i, lesion in enumerate(ids)}

    assert view.default_pair(uploads("", "L1", "x", "L1")) == ("u1", "u3")
    assert view.default_pair(uploads("unknown", "NA", "")) is None  # placeholders are no IDs
    assert view.default_pair(uploads("", "")) == ("u0", "u1")  # the only two images
    assert view.default_pair(uploads("L1", "L2")) is None  # two images, two lesions
    assert view.default_pair(uploads("unknown", "L2")) == ("u0", "u1")
