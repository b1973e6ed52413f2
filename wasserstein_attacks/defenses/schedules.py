"""Schedules of adversarial training: the radius ramp (eps grows from a start value to the target).

Wong, Schmidt & Kolter (2019) could not train at the target radius from the start: the attack breaks
every example of an untrained network and the gradient says nothing useful. They let the radius grow
multiplicatively (MNIST: 0.1, x1.4 every 5 attack steps). Here the same idea acts on the outer loop too:
the radius of the training ball grows over the first ``epochs`` epochs, per optimiser step, and then stays
at the target. (An attack's own inner growth, ``sinkhorn_wong`` with ``ramp: true``, can be combined.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._util import check_choice, check_float

__all__ = ["RadiusRamp", "RAMPS"]

#: The ramp shapes: ``none`` (target radius from the first step), ``linear``, ``geometric``.
RAMPS = ("none", "linear", "geometric")


@dataclass(frozen=True)
class RadiusRamp:
    """Radius of the training ball (units of eps) as a function of training progress (in epochs).

    Attributes:
        eps: target radius, > 0.
        start: radius at progress 0, in ``(0, eps]`` (ignored by ``kind="none"``).
        epochs: epochs over which the radius grows (may be fractional; 0 = no ramp).
        kind: ``"none"``, ``"linear"`` (``start + (eps - start) t``) or ``"geometric"``
            (``start * (eps / start) ** t``, Wong et al.'s multiplicative growth, made continuous),
            with ``t = min(1, progress / epochs)``.

    """

    eps: float
    start: float
    epochs: float
    kind: str = "geometric"

    def __post_init__(self):
        check_float(self.eps, "eps")
        check_float(self.start, "eps_start")
        check_float(self.epochs, "ramp_epochs", allow_zero=True)
        check_choice(self.kind, "ramp", RAMPS)
        if self.kind != "none" and self.start > self.eps:
            raise ValueError(f"eps_start must be <= eps = {self.eps!r}, got {self.start!r}")

    def __call__(self, progress: float) -> float:
        """Radius after ``progress`` epochs (``step / steps_per_epoch``; fractional mid-epoch)."""
        if self.kind == "none" or self.epochs == 0 or progress >= self.epochs:
            return float(self.eps)
        t = max(0.0, progress / self.epochs)
        if self.kind == "linear":
            return float(self.start + (self.eps - self.start) * t)
        return float(math.exp(math.log(self.start) + (math.log(self.eps) - math.log(self.start)) * t))
