"""Adversarial attacks and defenses under an exactly verified Wasserstein threat model on images.

Layers, each importing only the ones above it in this list: ``_util`` (JSON, atomic writes, hashes,
validators) -> ``transport`` (plan layout on the pixel grid) -> ``threat`` (the ball, its certificate
and the exact LP) -> ``solvers`` (projections and oracles on plans) -> ``attacks`` (the contract, the
attacks, the suite) -> ``data``, ``models`` -> ``defenses`` -> ``bench`` (runs from Hydra configs) ->
``leaderboard`` -> ``cli``.
"""

__version__ = "0.1.0"

from .threat import Certificate, WassersteinBall  # noqa: E402

__all__ = ["WassersteinBall", "Certificate", "__version__"]
