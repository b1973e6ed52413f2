"""Certified defense: randomized smoothing in flow space (Levine & Feizi, AISTATS 2020).

The smoothed classifier sees ``x + div(delta)``, ``delta`` random flows on the pixel grid's edges, so every
channel keeps its mass; an l1 certificate on the flow becomes a certified W1 radius (``p = 1``) in the
threat model's units of eps. Modules: ``flows`` (grid flows, exact min-flow LP), ``noise``
(Laplace, uniform cube, their radii), ``certify`` (PREDICT, CERTIFY, unit conversion), ``train``
(noise augmentation, SmoothAdv, the soft smoothed classifier), ``attack`` (empirical attack),
``report`` (results.json and the plot).
"""

from .attack import SmoothedAttackResult, attack_smoothed, empirical_robustness
from .certify import (
    ABSTAIN,
    CertifyResult,
    SmoothedClassifier,
    check_threat_p,
    clopper_pearson_lower,
    flow_radius_to_eps,
)
from .flows import apply_flow, divergence, min_flow_l1, num_edges
from .noise import NOISES, FlowNoise, LaplaceNoise, UniformNoise, make_noise
from .report import certification_results, plot_certified_accuracy, write_certification
from .train import NoisyInput, SmoothedSoft, consistency_loss, smoothadv_train, train_under_noise

__all__ = [
    "ABSTAIN",
    "CertifyResult",
    "FlowNoise",
    "LaplaceNoise",
    "NOISES",
    "NoisyInput",
    "consistency_loss",
    "SmoothedAttackResult",
    "SmoothedClassifier",
    "SmoothedSoft",
    "UniformNoise",
    "apply_flow",
    "attack_smoothed",
    "certification_results",
    "check_threat_p",
    "clopper_pearson_lower",
    "divergence",
    "empirical_robustness",
    "flow_radius_to_eps",
    "make_noise",
    "min_flow_l1",
    "num_edges",
    "plot_certified_accuracy",
    "smoothadv_train",
    "train_under_noise",
    "write_certification",
]
