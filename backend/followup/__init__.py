"""Lesion follow-up: compare two visits of one lesion (segmentation, registration, change measures).

    from backend.followup import compare_visits
    result = compare_visits(before_rgb, after_rgb, predictor=None)
    result.aligned, result.area_change, result.flags, result.to_dict()

See ``docs/followup.md`` for the methods and the accuracy measured on real images.
"""

from backend.followup.change import FollowUpResult, compare_visits
from backend.followup.registration import Registration, RegistrationConfig, register_visits
from backend.followup.segmentation import LesionSegmentation, segment_lesion

__all__ = [
    "FollowUpResult",
    "LesionSegmentation",
    "Registration",
    "RegistrationConfig",
    "compare_visits",
    "register_visits",
    "segment_lesion",
]
