"""Defenses: standard and adversarial training, and randomized smoothing in flow space.

- ``training``: the standard trainer and the project's standard MNIST model.
- ``adversarial`` (with ``schedules``, ``train_state``, ``distributed``, ``runlog``):
  one adversarial-training loop whose inner maximisation is any attack or suite; resumable; DDP.
- ``smoothing``: Levine & Feizi's Wasserstein smoothing (noise on the flows of the pixel grid),
  Laplace and uniform noise, PREDICT and CERTIFY, training under noise and SmoothAdv.
"""

from . import smoothing
from .adversarial import AdversarialTraining
from .distributed import init_from_env
from .runlog import plot_training_curves
from .schedules import RadiusRamp
from .training import *  # noqa: F403
from .training import __all__ as _training_all

__all__ = [
    *_training_all,
    "AdversarialTraining",
    "RadiusRamp",
    "init_from_env",
    "plot_training_curves",
    "smoothing",
]
