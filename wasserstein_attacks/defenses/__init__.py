"""Defenses: training models (standard training today; adversarial training and smoothing next)."""

from .training import *  # noqa: F403
from .training import __all__  # noqa: F401
