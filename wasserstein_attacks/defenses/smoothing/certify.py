"""The smoothed classifier in flow space: Cohen et al.'s PREDICT and CERTIFY, radii in units of eps.

Smoothed classifier (Levine & Feizi, AISTATS 2020): ``g(x) = argmax_c P[f(x + div(s * delta)) = c]`` with
``delta`` i.i.d. flow noise (``noise``) and ``s = N(x)`` for relative noise, ``1`` otherwise.
If ``x'`` holds the same mass per channel as ``x`` there is a flow ``f*`` with ``x' = x + div(f*)`` and
``||f*||_1`` equal to the Manhattan W1 (``flows``), so ``g(x')`` is the l1-smoothed prediction of the
flow ``f* / s`` and the noise's l1 certificate applies to it.

Radius in the threat model's units (``p = 1`` only). The threat cost is Euclidean with windows and
normalised by ``N(x)``: ``W(x, x') * N(x) >= min ||f||_1 / sqrt(2)``. A certified flow radius ``R``
(noise units) therefore covers every ``x'`` with ``W(x, x') < R / sqrt(2)`` (relative noise) or
``< R / (sqrt(2) N(x))`` (pixel-unit noise), for any window size. Inputs whose channel masses differ
(inside the threat model's float tolerance ``mass_tol``) are not reachable by a flow and are not
covered: the certificate speaks of exactly mass-preserving changes.

Statistics (Cohen, Rosenfeld, Kolter, ICML 2019, Algorithms PREDICT and CERTIFY): ``n0`` draws pick
the class, ``n`` fresh draws give its count ``k``, ``pA >= beta.ppf(alpha, k, n - k + 1)`` (one-sided
Clopper-Pearson), abstain when that bound is ``<= 1/2``. PREDICT abstains unless a two-sided binomial
test of the top two counts rejects equality at level ``alpha``. Every example draws from its own
generator, seeded from the run seed and its dataset index, so batches, shards and single examples
agree exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..._util import check_float, check_int
from ...attacks.base import check_logits, eval_mode, example_seeds
from .flows import apply_flow, num_edges
from .noise import FlowNoise

__all__ = [
    "ABSTAIN",
    "clopper_pearson_lower",
    "flow_radius_to_eps",
    "check_threat_p",
    "SmoothedClassifier",
    "CertifyResult",
]

#: The class index PREDICT and CERTIFY return when they abstain.
ABSTAIN = -1


def clopper_pearson_lower(successes, n: int, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound of a binomial proportion (float64, 0 at k = 0).

    ``beta.ppf(alpha, k, n - k + 1)``; equals ``alpha ** (1/n)`` when ``k = n``.
    """
    from scipy.stats import beta

    n = check_int(n, "n")
    alpha = check_float(alpha, "alpha")
    if alpha >= 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    k = np.asarray(successes, dtype=np.float64)
    if np.any((k < 0) | (k > n)):
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes!r}")
    with np.errstate(invalid="ignore"):
        out = beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, out)


def check_threat_p(p) -> None:
    """``ValueError`` unless ``p == 1``: the flow certificate bounds W1, not the squared cost of ``p = 2``."""
    if p != 1:
        raise ValueError(f"p must be 1: flow-space smoothing certifies W1 balls only, got p={p!r}")


def flow_radius_to_eps(
    radius_flow: np.ndarray | float, mass: np.ndarray | float, *, relative: bool, p: int = 1
) -> np.ndarray:
    """Certified flow radius (noise units) -> certified ``eps`` (float64, same shape).

    Args:
        radius_flow: l1 flow radii from ``FlowNoise.radius``.
        mass: the images' total mass ``N(x)`` (used for pixel-unit noise only).
        relative: the noise's ``relative`` flag.
        p: the threat model's exponent; anything but 1 is refused.

    Returns:
        ``R / sqrt(2)`` (relative) or ``R / (sqrt(2) N(x))``; a ball of any window size with ``eps``
        strictly below it is certified. ``inf`` for ``N = 0`` with ``R > 0`` (that ball is ``{x}``).

    """
    check_threat_p(p)
    r = np.asarray(radius_flow, dtype=np.float64) / math.sqrt(2.0)
    if relative:
        return r
    m = np.broadcast_to(np.asarray(mass, dtype=np.float64), r.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m > 0, r / np.where(m > 0, m, 1.0), np.where(r > 0, np.inf, 0.0))


@dataclass(frozen=True)
class CertifyResult:
    """CERTIFY's output for a batch (CPU tensors).

    Attributes:
        prediction: long ``[B]``: the certified class, ``ABSTAIN`` (-1) where ``p_lower <= 1/2``.
        p_lower: float64 ``[B]``: Clopper-Pearson lower bound of the selected class's probability.
        radius_flow: float64 ``[B]``: certified l1 flow radius (noise units), 0 on abstention.
        radius: float64 ``[B]``: certified radius in units of eps (``W < radius`` is safe), 0 on abstention.
        counts: long ``[B, num_classes]``: class counts of the ``n`` estimation draws.
        seconds: wall time.
        selected: long ``[B]``: the class the ``n0`` selection draws chose (kept on abstention too);
            ``p_lower`` is the Clopper-Pearson bound of ``counts[i, selected[i]]`` out of ``n``.

    """

    prediction: torch.Tensor
    p_lower: torch.Tensor
    radius_flow: torch.Tensor
    radius: torch.Tensor
    counts: torch.Tensor
    seconds: float
    selected: torch.Tensor | None = None

    def __post_init__(self):
        if self.selected is None:  # results built before the field existed: abstentions lose their class
            object.__setattr__(self, "selected", self.prediction.clamp(min=0))

    @property
    def abstain(self) -> torch.Tensor:
        """Bool ``[B]``: CERTIFY abstained."""
        return self.prediction == ABSTAIN

    def certified_accuracy(self, labels: torch.Tensor, radii) -> dict[float, float]:
        """Fraction predicted correctly with a certified radius strictly above each of ``radii``."""
        ok = self.prediction == labels.cpu()
        return {float(r): float((ok & (self.radius > float(r))).double().mean()) for r in radii}


class SmoothedClassifier:
    """The flow-smoothed version of a base classifier (Levine & Feizi 2020), with PREDICT and CERTIFY.

    Args:
        model: base classifier, ``[B, C, H, W]`` (pixel space, noised images may leave ``[0, 1]``) ->
            logits ``[B, num_classes]``; used in eval mode without gradients.
        noise: the flow noise (``LaplaceNoise`` or ``UniformNoise``).
        num_classes: number of classes.
        batch_size: noise draws per forward pass; the draws themselves do not depend on it.

    """

    def __init__(self, model: torch.nn.Module, noise: FlowNoise, *, num_classes: int, batch_size: int = 1000):
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(noise, FlowNoise):
            raise ValueError(f"noise must be a FlowNoise (laplace or uniform), got {type(noise).__name__}")
        self.model, self.noise = model, noise
        self.num_classes = check_int(num_classes, "num_classes", low=2)
        self.batch_size = check_int(batch_size, "batch_size")

    def noised(self, image: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """``image [C, H, W]`` moved by each of ``draws [m, C, E]`` (noise units): ``[m, C, H, W]``."""
        scale = image.sum() if self.noise.relative else 1.0
        return apply_flow(image.unsqueeze(0), draws.to(image.device) * scale)

    def _counts(self, image: torch.Tensor, num: int, gen: torch.Generator) -> torch.Tensor:
        """Class counts (long ``[num_classes]``, CPU) of the base classifier on ``num`` noised copies."""
        c, h, w = image.shape
        param = next(self.model.parameters(), None)
        image = image.to(param.device) if param is not None else image
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        # Draw in fixed chunks of 1000 so the random stream never depends on batch_size.
        for start in range(0, num, 1000):
            draws = self.noise.sample((min(1000, num - start), c, num_edges(h, w)), gen)
            for i in range(0, draws.shape[0], self.batch_size):
                logits = check_logits(self.model(self.noised(image, draws[i : i + self.batch_size])))
                counts += torch.bincount(logits.argmax(1).cpu(), minlength=self.num_classes)
        return counts

    def _generators(self, images, seed: int, indices) -> list[torch.Generator]:
        from ...threat import check_images

        check_images(images, "images")
        b = images.shape[0]
        if indices is None:
            indices = torch.arange(b)
        elif not isinstance(indices, torch.Tensor) or indices.shape != (b,):
            raise ValueError(f"indices must be a tensor [B] = [{b}] of dataset indices")
        return [
            torch.Generator().manual_seed(s) for s in example_seeds(check_int(seed, "seed", low=0), indices)
        ]

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, *, n: int, alpha: float, seed: int = 0, indices=None
    ) -> torch.Tensor:
        """Cohen et al.'s PREDICT: long ``[B]``, ``ABSTAIN`` unless the top two counts differ at ``alpha``.

        The answer differs from the smoothed classifier's ``g(x)`` with probability at most ``alpha``.
        """
        from scipy.stats import binomtest

        n, alpha = check_int(n, "n"), _check_alpha(alpha)
        out = torch.full((images.shape[0],), ABSTAIN, dtype=torch.long)
        gens = self._generators(images, seed, indices)
        with eval_mode(self.model):
            all_counts = [self._counts(images[i], n, gen) for i, gen in enumerate(gens)]
        for i, counts in enumerate(all_counts):
            top2 = counts.topk(2)
            n_a, n_b = int(top2.values[0]), int(top2.values[1])
            if binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha:
                out[i] = int(top2.indices[0])
        return out

    @torch.no_grad()
    def certify(
        self, images: torch.Tensor, *, n0: int, n: int, alpha: float, seed: int = 0, indices=None, p: int = 1
    ) -> CertifyResult:
        """Cohen et al.'s CERTIFY for ``images [B, C, H, W]``; radii in units of eps (``p = 1`` only).

        With probability at least ``1 - alpha`` per example, a non-abstaining answer ``(c, r)`` means
        ``g(x') = c`` for every ``x'`` of equal channel masses with ``W(x, x') < r``, any window.
        """
        start = time.perf_counter()
        n0, n, alpha = check_int(n0, "n0"), check_int(n, "n"), _check_alpha(alpha)
        check_threat_p(p)
        gens = self._generators(images, seed, indices)
        b = images.shape[0]
        pred = torch.full((b,), ABSTAIN, dtype=torch.long)
        counts = torch.zeros(b, self.num_classes, dtype=torch.long)
        with eval_mode(self.model):
            for i, gen in enumerate(gens):
                # Selection and estimation use disjoint draws of the example's stream (Cohen et al.).
                pred[i] = int(self._counts(images[i], n0, gen).argmax())
                counts[i] = self._counts(images[i], n, gen)
        selected = pred.clone()
        k = counts.gather(1, pred[:, None]).squeeze(1).numpy()
        p_lower = clopper_pearson_lower(k, n, alpha)
        r_flow = self.noise.radius(p_lower)
        mass = images.detach().to(torch.float64).sum((1, 2, 3)).cpu().numpy()
        r_eps = flow_radius_to_eps(r_flow, mass, relative=self.noise.relative, p=p)
        pred[torch.from_numpy(p_lower <= 0.5)] = ABSTAIN
        return CertifyResult(
            prediction=pred,
            p_lower=torch.from_numpy(p_lower),
            radius_flow=torch.from_numpy(r_flow),
            radius=torch.from_numpy(np.where(p_lower > 0.5, r_eps, 0.0)),
            counts=counts,
            seconds=time.perf_counter() - start,
            selected=selected,
        )


def _check_alpha(alpha) -> float:
    a = check_float(alpha, "alpha")
    if a >= 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return a
