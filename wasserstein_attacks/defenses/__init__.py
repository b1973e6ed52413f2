"""Defenses: training models (standard training today; adversarial training and smoothing next)."""

from .adversarial import AdversarialTraining
from .distributed import init_from_env
from .runlog import plot_training_curves
from .schedules import RadiusRamp
from .training import *  # noqa: F403
from .training import __all__ as _training_all

__all__ = [*_training_all, "AdversarialTraining", "RadiusRamp", "init_from_env", "plot_training_curves"]
