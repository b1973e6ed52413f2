"""The threat model, implemented once: the Wasserstein ball, its plan certificate and the exact LP.

The definition is in ``threat_model.md`` beside this file (also a page of the documentation).
"""

from .ball import Certificate, WassersteinBall, check_images, check_labels
from .exact import exact_distance, exact_plan, exact_plan_channel

__all__ = [
    "WassersteinBall",
    "Certificate",
    "check_images",
    "check_labels",
    "exact_distance",
    "exact_plan",
    "exact_plan_channel",
]
