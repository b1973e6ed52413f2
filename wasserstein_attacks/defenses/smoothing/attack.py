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

__all__ = ["SmoothedAttackResult", "attack_smoothed", "empirical_robustness"]


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
    clean_prediction: torch.Tensor | None = None,
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
        clean_prediction: PREDICT on ``images`` with the same ``n``, ``alpha``, ``seed`` and ``indices``,
            if already known (long ``[B]``); computed otherwise.

    """
    check_threat_p(threat.p)
    soft = SmoothedSoft(smoothed.model, smoothed.noise, m=m, seed=seed)
    res = attack(soft, images, labels, threat=threat, seed=seed, indices=indices)
    adv = res.adversarial.detach()
    clean = clean_prediction
    if clean is None:
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


def empirical_robustness(
    smoothed: SmoothedClassifier,
    attack: Attack,
    images: torch.Tensor,
    labels: torch.Tensor,
    radii: list[float] | tuple[float, ...],
    *,
    kernel_size: int = 5,
    m: int = 16,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int = 0,
    indices: torch.Tensor | None = None,
) -> dict:
    """Empirical robust accuracy of ``smoothed`` at each radius (``attack_smoothed`` once per radius).

    An adversarial example found at radius ``r`` lies in every larger ball, so an example counts as
    robust at ``r`` only if PREDICT was correct on the clean image and no attack at a radius ``<= r``
    broke it (the worst case over the grid, as the suite's walk).

    Args:
        smoothed: the smoothed classifier.
        attack: a registered attack, run through the soft classifier.
        images: ``[B, C, H, W]`` clean images in ``[0, 1]``.
        labels: long ``[B]`` true classes.
        radii: radii (units of eps), ``p = 1``, box ``[0, 1]``.
        kernel_size: window of the attacked ball (the certificate covers any window).
        m: noise draws inside the attacked soft classifier.
        n: draws of PREDICT.
        alpha: level of PREDICT's binomial test.
        seed: run seed.
        indices: dataset indices ``[B]`` (default ``arange(B)``).

    Returns:
        JSON-ready ``{"robust_accuracy": {radius_key: acc}, "clean_accuracy", "broken_at": [radius or
        None per example], "settings": {...}, "seconds"}``; ``clean_accuracy`` is PREDICT's accuracy
        (abstentions count as wrong).

    """
    import time

    from ..._util import radius_key

    start = time.perf_counter()
    radii = sorted(float(r) for r in radii)
    b = images.shape[0]
    indices = torch.arange(b) if indices is None else indices
    clean = smoothed.predict(images, n=n, alpha=alpha, seed=seed, indices=indices)
    correct = (clean == labels.cpu()).tolist()
    broken_at: list[float | None] = [None] * b
    for r in radii:
        # Only what is still standing: an example broken at a smaller radius is broken here too. Seeds
        # and PREDICT's draws follow the dataset index, so a subset gives each example its own result.
        todo = [i for i in range(b) if correct[i] and broken_at[i] is None]
        if not todo:
            break
        sel = torch.tensor(todo)
        ball = WassersteinBall(eps=r, p=1, kernel_size=kernel_size)
        res = attack_smoothed(smoothed, attack, images[sel], labels[sel], threat=ball, m=m, n=n, alpha=alpha,
                              seed=seed, indices=indices[sel], clean_prediction=clean[sel])
        for i in res.success.nonzero()[:, 0].tolist():
            broken_at[todo[i]] = r
    pairs = list(zip(correct, broken_at, strict=True))
    robust = {radius_key(r): sum(c and (at is None or at > r) for c, at in pairs) / b for r in radii}
    return {
        "robust_accuracy": robust,
        "clean_accuracy": sum(correct) / b,
        "broken_at": broken_at,
        "settings": {"attack": attack.name, "loss": getattr(attack, "loss", None),
                     "steps": getattr(attack, "steps", None), "kernel_size": kernel_size, "m": m,
                     "predict_n": n, "predict_alpha": alpha, "seed": seed},
        "seconds": time.perf_counter() - start,
    }
