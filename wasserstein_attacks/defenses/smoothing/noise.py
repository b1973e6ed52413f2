"""Noise distributions on flows and their l1 certificates (radius as a function of ``pA``).

Both noises draw every flow coordinate independently and are parameterised by ``sigma``, the standard
deviation of one coordinate (Levine & Feizi's parameter), so that the two compare at equal variance.
``relative=True`` (default, as Levine & Feizi's code, which normalises the image by its mass first)
measures flows in fractions of the image's mass ``N(x)``: the flow applied in pixel units is
``N(x) * delta``. Radii returned by ``radius`` are l1 norms of flows in the noise's units (fraction of
mass x pixels when relative, mass x pixels otherwise); ``certify`` converts them to ``eps``.

Certificates (``pA``: a lower bound on the probability of the top class, the runner-up bounded by
``1 - pA`` as in Cohen et al. 2019; both are sound for the top class staying on top):

- Laplace, scale ``b = sigma / sqrt(2)``: Teng et al., "l1 adversarial robustness certificates: a
  randomized smoothing approach" (2020), Theorem 1, with ``pB = 1 - pA``:
  ``R = max(b/2 * ln(pA / (1 - pA)), -b * ln(2 (1 - pA)))``. The first term is the bound Levine & Feizi
  use (ALGORITHMS.md section 4: ``rho = sigma/(2 sqrt 2) ln(pA/(1-pA))`` before the ``1/sqrt 2`` of the
  ground metric); the second, the Neyman-Pearson bound of a shift along one coordinate, is larger for
  every ``pA > 1/2`` and exact for that worst case.
- Uniform on the cube ``[-lam, lam]^E``, ``lam = sqrt(3) * sigma``: Yang et al., "Randomized smoothing
  of all shapes and sizes" (ICML 2020), l1 certificate of the cube: ``R = 2 lam (pA - 1/2)``. (Why: a
  shift ``r`` moves the cube off at most ``||r||_1 / (2 lam)`` of its probability mass.)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..._util import check_bool, check_float

__all__ = ["FlowNoise", "LaplaceNoise", "UniformNoise", "NOISES", "make_noise"]


class FlowNoise:
    """Base class: i.i.d. noise on every flow coordinate, with its l1 certificate.

    Args:
        sigma: standard deviation of one flow coordinate (fraction of mass when ``relative``).
        relative: flows in units of the image's mass ``N(x)`` (Levine & Feizi) rather than pixel mass.

    """

    name = "noise"

    def __init__(self, *, sigma: float, relative: bool = True):
        self.sigma = check_float(sigma, "sigma")
        self.relative = check_bool(relative, "relative")

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Float32 CPU draws of ``shape`` from ``generator`` (one generator per example keeps runs exact)."""
        # Float64 uniforms: the inverse-CDF tails are then cut only at probability ~1e-16, not 2**-24.
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        return self._from_uniform(u).to(torch.float32)

    def _from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def radius(self, p_lower) -> np.ndarray:
        """Certified l1 flow radius (noise units) for lower bounds ``p_lower`` of ``pA``; 0 if ``<= 1/2``."""
        p = np.asarray(p_lower, dtype=np.float64)
        if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
            raise ValueError(f"p_lower must lie in [0, 1], got {p_lower!r}")
        out = np.zeros_like(p)
        ok = p > 0.5
        out[ok] = self._radius(p[ok])
        return out

    def _radius(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def max_radius(self, n: int, alpha: float) -> float:
        """Largest radius ``n`` draws certify at level ``alpha``: all agree, ``pA = alpha ** (1/n)``."""
        return float(self.radius(alpha ** (1.0 / n)))

    def describe(self) -> dict:
        """JSON-ready description (written to results.json)."""
        return {"name": self.name, "sigma": self.sigma, "relative": self.relative}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma!r}, relative={self.relative!r})"


class LaplaceNoise(FlowNoise):
    """Laplace noise of scale ``b = sigma / sqrt(2)`` per flow coordinate (Levine & Feizi 2020)."""

    name = "laplace"

    @property
    def scale(self) -> float:
        """Laplace scale ``b`` (density ``exp(-|z| / b) / (2 b)``)."""
        return self.sigma / math.sqrt(2.0)

    def _from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        # Inverse CDF: z = -b sign(v) ln(1 - 2|v|), v = u - 1/2; u = 0 (|v| = 1/2) would give -inf.
        v = (u - 0.5).clamp(-0.5 + 2.0**-54, 0.5)
        return -self.scale * torch.sign(v) * torch.log1p(-2.0 * v.abs())

    def _radius(self, p: np.ndarray) -> np.ndarray:
        b = self.scale
        # Teng et al. 2020, Theorem 1 with pB = 1 - pA; the second term dominates for pA > 1/2.
        with np.errstate(divide="ignore"):  # pA = 1 (an exact probability, never a bound): radius inf
            return np.maximum(0.5 * b * np.log(p / (1.0 - p)), -b * np.log(2.0 * (1.0 - p)))


class UniformNoise(FlowNoise):
    """Uniform noise on ``[-lam, lam]`` per flow coordinate, ``lam = sqrt(3) sigma`` (Yang et al. 2020)."""

    name = "uniform"

    @property
    def half_width(self) -> float:
        """Half-width ``lam`` of the cube."""
        return math.sqrt(3.0) * self.sigma

    def _from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        return (2.0 * u - 1.0) * self.half_width

    def _radius(self, p: np.ndarray) -> np.ndarray:
        return 2.0 * self.half_width * (p - 0.5)


#: Noise families by name.
NOISES = {"laplace": LaplaceNoise, "uniform": UniformNoise}


def make_noise(name: str, *, sigma: float, relative: bool = True) -> FlowNoise:
    """Build a noise by name (``"laplace"`` or ``"uniform"``); the Hydra configs call this."""
    if name not in NOISES:
        raise ValueError(f"name must be one of {', '.join(map(repr, NOISES))}, got {name!r}")
    return NOISES[name](sigma=sigma, relative=relative)
