"""Euclidean projections: each row onto its simplex, and a plan onto ``Pi(x, eps)`` (Wu et al. 2020).

``Pi(x, eps) = {P >= 0 on the window, P 1 = x, <P, C> <= eps N}`` (Wu et al., eq. 6); its projection has
rows ``Pi_simplex(V - lambda C)`` with ``lambda`` from ``multiplier_search``.
"""

from __future__ import annotations

import math

import torch

from .._kernels import use_triton
from ..threat import WassersteinBall
from .rows import PlanRows, check_solver, example_max, public_rows, shrink_to_budget
from .search import Family, multiplier_search

__all__ = [
    "project_simplex",
    "projection_family",
    "project_rows",
    "project_plan",
]


def _simplex_support(
    values: torch.Tensor,
    mass: torch.Tensor,
    validf: torch.Tensor | None,
    offwindow: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold ``tau [..., 1]`` and support (float 0/1 ``[..., K]``) of the simplex projection.

    Michelot's algorithm (1986): start from a superset of the support, set ``tau`` so that the support
    sums to the mass, drop the entries at or below ``tau``, repeat until the support is stable (at most
    ``K`` rounds; ``tau`` only grows). Exact, and on CPU faster than sorting each row: rows of a plan are
    nearly one-hot, so a few rounds suffice. Sums use a matrix-vector product (a reduction over a short
    last dimension is slow on CPU). ``offwindow`` (optional, ``[..., K]``, 0 where valid and -inf
    elsewhere, as ``PlanRows.offwindow``) saves building that mask from ``validf`` on every call.
    """
    k = values.shape[-1]
    ones = values.new_ones(k)
    # tau >= max(v) - mass (the largest entry alone cannot exceed the mass), so entries at or below that
    # are never in the support: starting from the rest saves rounds.
    if offwindow is not None:
        masked = values + offwindow
    else:
        masked = values if validf is None else values.masked_fill(validf == 0, -math.inf)
    support = (values - (masked.amax(-1) - mass)[..., None]).clamp_min_(0).sign_()
    if validf is not None:
        support.mul_(validf)
    for _ in range(k + 1):
        tau = ((values * support) @ ones - mass) / (support @ ones).clamp_min(1)
        # In place: each round allocates one temporary (allocation dominates on CPU at these sizes).
        new = (values - tau[..., None]).clamp_min_(0).sign_().mul_(support)  # faster than (v > tau).float()
        if torch.equal(new, support):
            break
        support = new
    return tau[..., None], support


def project_simplex(
    values: torch.Tensor, mass: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Euclidean projection of each row onto ``{p >= 0, sum(p) = mass, p = 0 where not valid}``.

    The projection is ``max(v - tau, 0)`` with ``tau`` the threshold that makes the row sum to its mass
    (Held, Wolfe, Crowder 1974); ``tau`` by Michelot's finite algorithm (``_simplex_support``).

    Args:
        values: ``[..., K]`` rows to project (finite).
        mass: ``[...]`` non-negative mass of each row.
        valid: optional ``[..., K]`` mask (bool, or float 0/1): entries allowed to carry mass (at least one
            per row).

    Returns:
        ``[..., K]`` the projections (same dtype).

    """
    validf = None if valid is None else valid.to(values.dtype)
    tau, support = _simplex_support(values, mass, validf)
    return (values - tau).clamp_min(0) * support


def projection_family(rows: PlanRows, V: torch.Tensor, price: torch.Tensor | None = None) -> Family:
    """Rows ``P(lambda) = Pi_simplex(V - lambda C - price)``: piecewise linear in ``lambda``."""
    c = rows.cost
    cc = torch.stack([c, c * c])  # [2, k*k]
    W0 = V if price is None else V - price

    def plan(lam):
        return project_simplex(W0 - lam[rows.example][:, None] * c, rows.mass, rows.validf)

    def measure(lam, on_rows=None):
        ex, W, mass, valid, off = rows.example, W0, rows.mass, rows.validf, rows.offwindow
        if on_rows is not None:
            ex, W, mass, valid, off = ex[on_rows], W[on_rows], mass[on_rows], valid[on_rows], off[on_rows]
        Wl = W - lam[ex][:, None] * c
        tau, on = _simplex_support(Wl, mass, valid, off)
        P = (Wl - tau).clamp_min_(0).mul_(on)
        s1 = P @ c
        s2 = cc @ on.T  # [2, M]: sum of c and of c^2 over the support
        # On a piece where the supports are fixed, d P_ij / d lambda = -c_j + mean_support(c).
        count = on @ torch.ones_like(c)
        slope = -(s2[1] - s2[0] ** 2 / count.clamp_min(1))
        per = lam.new_zeros(rows.batch, 2).index_add_(0, ex, torch.stack([s1, slope], 1))
        return per[:, 0], per[:, 1]

    return Family(measure, plan)


def project_rows(
    rows: PlanRows,
    V: torch.Tensor,
    budget: torch.Tensor,
    *,
    solver: str = "bisection",
    steps: int = 25,
    tol: float = 1e-4,
    start: torch.Tensor | None = None,
    price: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``project_plan`` on compact rows ``V [M, k*k]``; returns ``(rows, lambda [B], evaluations)``.

    ``price [M, k*k]`` (optional) is subtracted from ``V`` (column-capacity multipliers at each target).
    """
    if use_triton(V):  # the fused kernel (one launch, no host sync); the code below is the reference
        from .triton_search import project_rows_triton

        return project_rows_triton(rows, V, budget, solver=solver, steps=steps, tol=tol, start=start,
                                   price=price, upper=upper)
    family = projection_family(rows, V, price)
    if upper is None:
        # Past this multiplier every row keeps all its mass on "stay" (cost 0): Wu et al.'s bracket.
        upper = 2 * example_max(rows, V.abs().amax(-1)) + example_max(rows, rows.mass)
        if price is not None:
            upper = upper + 2 * example_max(rows, price.abs().amax(-1))
    P, lam, n = multiplier_search(
        rows, family, budget, upper.clamp_min(1e-12), solver=solver, steps=steps, tol=tol, start=start
    )
    if solver == "bisection":
        # The exact projection has lambda = 0 when the unconstrained one fits; the authors' bisection only
        # approaches it. One more evaluation settles it.
        zero = torch.zeros_like(budget)
        free = family.measure(zero)[0] <= budget
        if bool(free.any()):
            P = torch.where(free[rows.example][:, None], family.plan(zero), P)
            lam = torch.where(free, zero, lam)
        n += 1
    return shrink_to_budget(rows, P, budget), lam, n


def project_plan(
    values: torch.Tensor,
    x: torch.Tensor,
    threat: WassersteinBall,
    *,
    solver: str = "bisection",
    steps: int = 25,
    tol: float = 1e-4,
) -> torch.Tensor:
    """Euclidean projection of ``values`` onto ``Pi(x, eps) = {P >= 0, P 1 = x, <P, C> <= eps N}``.

    Wu et al. (2020), Section 4.1 ("dual projection"): for ``lambda >= 0`` each row of the projection is the
    simplex projection (mass ``x_i``) of ``V_i - lambda C``; ``lambda`` is 0 if that already fits the cost
    budget, else the root of ``<C, P(lambda)> = eps N``. The box is not part of this set.

    Args:
        values: ``[B, C, H*W, k*k]`` the point to project (local layout; entries off the window ignored).
        x: ``[B, C, H, W]`` the source images (row sums).
        threat: the ball (``eps``, ``p``, ``kernel_size``).
        solver: ``"bisection"`` (the authors', on ``[0, 2 ||V||_inf + ||x||_inf]``, keeping the feasible
            end) or ``"newton"`` (ours: Newton / regula falsi on the piecewise-linear cost, exact in a few
            evaluations).
        steps: maximum multiplier evaluations.
        tol: stopping tolerance (absolute on the unnormalised cost and on the bracket for bisection,
            relative for Newton).

    Returns:
        ``[B, C, H*W, k*k]`` a plan in ``Pi(x, eps)`` (rows with ``x_i = 0`` are zero). A multiplier not
        converged within ``steps`` gives a feasible but not exactly nearest plan.

    """
    check_solver(solver)
    rows, budget = public_rows(values, x, threat, "values")
    P, _, _ = project_rows(rows, rows.gather(values.to(x.dtype)), budget, solver=solver, steps=steps, tol=tol)
    return rows.scatter(P)
