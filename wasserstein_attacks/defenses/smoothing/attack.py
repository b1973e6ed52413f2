"""An empirical attack on the flow-smoothed classifier: through the expectation, judged by PREDICT.

Salman et al. (NeurIPS 2019) attack a smoothed classifier by attacking its soft version
``log E[softmax f(x + noise)]`` estimated with ``m`` draws. Here any registered Wasserstein attack runs
on ``SmoothedSoft`` (its outputs are certified members of the ball), and success is then
judged on the smoothed classifier itself with Cohen et al.'s PREDICT on fresh draws: an example is
broken when PREDICT returns another class or abstains (an abstention is not a correct answer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...attacks import Attack
from ...threat import WassersteinBall
from .certify import SmoothedClassifier, check_threat_p
from .train import SmoothedSoft

__all__ = ["SmoothedAttackResult", "attack_smoothed"]


@dataclass(frozen=True)
class SmoothedAttackResult:
    """Outcome of ``attack_smoothed`` (CPU tensors).

    Attributes:
        adversarial: ``[B, C, H, W]`` images certified inside the ball by the attack's plan.
        cost: float64 ``[B]``: their certified cost (units of eps).
        prediction: long ``[B]``: PREDICT on ``adversarial`` (``-1``: abstain).
        clean_correct: bool ``[B]``: PREDICT on the clean image returns the label.
        success: bool ``[B]``: clean PREDICT was correct and PREDICT on ``adversarial`` is not.

    """

    adversarial: torch.Tensor
    cost: torch.Tensor
    prediction: torch.Tensor
    clean_correct: torch.Tensor
    success: torch.Tensor

    @property
    def robust_accuracy(self) -> float:
        """Fraction correct under PREDICT on the clean image and not broken (abstentions count as wrong)."""
        return float((self.clean_correct & ~self.success).double().mean())


def attack_smoothed(
    smoothed: SmoothedClassifier,
    attack: Attack,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    threat: WassersteinBall,
    m: int = 16,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int = 0,
    indices: torch.Tensor | None = None,
) -> SmoothedAttackResult:
    """Attack ``smoothed`` on ``images [B, C, H, W]`` inside ``threat`` (a ``p = 1`` ball).

    Args:
        smoothed: the smoothed classifier (its base model and noise are attacked through ``m`` draws).
        attack: a registered attack (``attacks.get(name, ...)``).
        images: clean images in ``[0, 1]``.
        labels: long ``[B]`` true classes.
        threat: the ball; ``p`` must be 1, the threat model of the certificate.
        m: noise draws inside the attacked soft classifier.
        n: draws of PREDICT.
        alpha: level of PREDICT's binomial test.
        seed: run seed (attack, draws and PREDICT derive from it and ``indices``).
        indices: dataset indices ``[B]`` (default ``arange(B)``).

    """
    check_threat_p(threat.p)
    soft = SmoothedSoft(smoothed.model, smoothed.noise, m=m, seed=seed)
    res = attack(soft, images, labels, threat=threat, seed=seed, indices=indices)
    adv = res.adversarial.detach()
    clean = smoothed.predict(images, n=n, alpha=alpha, seed=seed, indices=indices)
    # PREDICT's draws come from per-example generators, independent of the m draws the attack saw.
    pred = smoothed.predict(adv, n=n, alpha=alpha, seed=seed, indices=indices)
    y = labels.cpu()
    return SmoothedAttackResult(
        adversarial=adv.cpu(),
        cost=res.cost.cpu(),
        prediction=pred,
        clean_correct=clean == y,
        success=(clean == y) & (pred != y),
    )
