"""Frank-Wolfe's entropic linear maximisation oracle over ``Pi(x, eps)`` (Wu et al. 2020, Section 4.2).

``S_ij = x_i softmax_j((G_ij - lambda C_ij) / gamma)`` over the window, ``lambda`` the multiplier of the
cost constraint. Each row is reduced once to one log-partition per cost level, so a multiplier
evaluation costs a few numbers per row instead of ``k*k``.
"""

from __future__ import annotations

import functools

import torch

from .._kernels import use_triton
from ..threat import WassersteinBall
from .rows import PlanRows, check_solver, example_max, public_rows, shrink_to_budget
from .search import Family, multiplier_search

__all__ = [
    "exp_floor",
    "lmo_rows",
    "entropic_lmo",
]


def exp_floor(z: torch.Tensor) -> torch.Tensor:
    """``exp(z)`` for ``z <= 0``, with ``z`` floored at -80.

    Weights below ``e^-80`` are noise next to the maximum's 1. Flooring matters for speed: CPU ``exp`` of
    large negative inputs is ~10x slower.
    """
    return torch.exp(z.clamp_min(-80.0))


@functools.lru_cache(maxsize=16)
def _cost_levels(costs: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[int, ...], tuple[int, ...]]:
    """Distinct costs of a window and the window entries at each: ``(levels, order, bounds)``.

    ``order`` lists the entries level by level (ascending cost); level ``l`` is
    ``order[bounds[l]:bounds[l + 1]]``. A 5x5 window has 25 entries but only 6 costs
    (0, 1, sqrt 2, 2, sqrt 5, sqrt 8).
    """
    levels = sorted(set(costs))
    order, bounds = [], [0]
    for v in levels:
        order += [j for j, c in enumerate(costs) if c == v]
        bounds.append(len(order))
    return tuple(levels), tuple(order), tuple(bounds)


def _lmo_family(rows: PlanRows, G: torch.Tensor, gamma: float, price: torch.Tensor | None) -> Family:
    """Rows ``S(lambda) = x softmax((G - lambda C - price) / gamma)`` (the entropic oracle).

    The cost of ``S(lambda)`` depends on ``lambda`` only through ``exp(-lambda c / gamma)`` per cost level,
    so each row's window is reduced once to its log-partition per level (``L = 6`` numbers for a 5x5
    window instead of 25) and every multiplier evaluation works on those: the same numbers, several times
    less work per evaluation. The reduced data is stored level-major (``[L, M]``): reductions over a few
    levels are then elementwise over long rows, which CPUs do far faster than a softmax over a short
    last dimension.
    """
    c = rows.cost
    # Entries off the window never get mass: -inf once here, not at every evaluation.
    base = (G if price is None else G - price) / gamma + rows.offwindow
    c_g = c / gamma
    levels, order, bounds = _cost_levels(tuple(c.tolist()))
    lv = torch.tensor(levels, dtype=G.dtype, device=G.device)
    lv_g = lv[:, None] / gamma  # [L, 1]
    moments = torch.stack([torch.ones_like(lv), lv, lv * lv])  # [3, L]
    bt = base.T[list(order)]  # [k*k, M], level by level
    # Log-partition of each level with its own maximum: levels far below the row's best entry must not
    # underflow (as lambda grows, the cheap levels take over).
    log_part, tops = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = bt[lo:hi]
        top = part.amax(0)
        lse = top + torch.log(exp_floor(part - top[None]).sum(0))
        if not rows.levels_complete:
            lse = torch.where(torch.isfinite(top), lse, top)  # a level wholly off the window: -inf
        log_part.append(lse)
        tops.append(top)
    log_part = torch.stack(log_part)  # [L, M]
    # Past lambda = max over levels of (best entry of the level - "stay") / its cost, no row gains by moving
    # (level 0 is "stay" alone, cost 0).
    tops = torch.stack(tops)
    gain = ((tops[1:] - tops[:1]) / lv_g[1:]).amax(0).clamp_min(0) if len(levels) > 1 else tops[0] * 0
    validf, example = rows.validf, rows.example

    def log_partition(lam_rows, Z):
        z = Z - lv_g * lam_rows
        top = z.amax(0)
        return top + torch.log(exp_floor(z - top).sum(0))

    def plan(lam):
        # x_i softmax over the window, with the row's log-partition from its levels ([L, M] work) instead
        # of a softmax over the short last dimension.
        lam_rows = lam[example]
        log_z = log_partition(lam_rows, log_part)
        expo = base - lam_rows[:, None] * c_g - log_z[:, None]
        return exp_floor(expo) * (rows.mass[:, None] * validf)

    def measure(lam, on_rows=None):
        ex, Z, mass = example, log_part, rows.mass
        if on_rows is not None:
            ex, Z, mass = ex[on_rows], Z[:, on_rows], mass[on_rows]
        z = Z - lv_g * lam[ex]
        w = exp_floor(z - z.amax(0))
        s0, s1, s2 = moments @ w  # sums of w, w c, w c^2 over the levels
        e1 = s1 / s0
        # cost = mass E[c]; d cost / d lambda = -mass Var(c) / gamma.
        terms = torch.stack([mass * e1, -mass * (s2 / s0 - e1 * e1).clamp_min(0) / gamma], 1)
        per = lam.new_zeros(rows.batch, 2).index_add_(0, ex, terms)
        return per[:, 0], per[:, 1]

    return Family(measure, plan, example_max(rows, gain))


def lmo_rows(
    rows: PlanRows,
    G: torch.Tensor,
    budget: torch.Tensor,
    *,
    gamma: float,
    solver: str = "newton",
    steps: int = 50,
    tol: float = 1e-4,
    start: torch.Tensor | None = None,
    price: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``entropic_lmo`` on compact rows ``G [M, k*k]``; returns ``(rows, lambda [B], evaluations)``."""
    if use_triton(G):  # the fused kernel (one launch, no host sync); the code below is the reference
        from .triton_search import lmo_rows_triton

        return lmo_rows_triton(rows, G, budget, gamma=gamma, solver=solver, steps=steps, tol=tol, start=start,
                               price=price)
    family = _lmo_family(rows, G, gamma, price)
    spread = rows.spread
    # At lambda = gain + margin the softmax moves at most budget / spread of each row's mass per unit cost.
    margin = (gamma * torch.log(spread.clamp_min(1e-30) / budget.clamp_min(1e-30))).clamp_min(0)
    if solver == "bisection":
        # Wu et al.'s bracket: 2 ||G||_inf + margin.
        gain = example_max(rows, G.abs().amax(-1))
        if price is not None:
            gain = gain + example_max(rows, price.abs().amax(-1))
        gain, width = 2 * gain, 0.0
    else:
        # Tighter: past max_ij (G'_ij - G'_i,stay) / C_j (G' = G - price) no row gains by moving.
        gain, width = family.gain, gamma
    upper = (gain + margin).clamp_min(1e-12)
    S, lam, n = multiplier_search(
        rows, family, budget, upper, solver=solver, steps=steps, tol=tol, start=start, width=width,
        log_scale=True,
    )
    return shrink_to_budget(rows, S, budget), lam, n


def entropic_lmo(
    gradient: torch.Tensor,
    x: torch.Tensor,
    threat: WassersteinBall,
    *,
    gamma: float = 1e-3,
    solver: str = "bisection",
    steps: int = 50,
    tol: float = 1e-4,
) -> torch.Tensor:
    """Frank-Wolfe's entropic linear maximisation oracle over ``Pi(x, eps)`` (Wu et al. 2020, Section 4.2).

    ``argmax_{S in Pi(x, eps)} <G, S> + gamma H(S)`` with ``H`` the entropy: ``S_ij = x_i softmax_j((G_ij -
    lambda C_ij) / gamma)`` over the window, ``lambda >= 0`` the multiplier of the cost constraint
    (``<C, S> = eps N`` unless the unconstrained oracle fits).

    Args:
        gradient: ``[B, C, H*W, k*k]`` the linear objective ``G`` (local layout).
        x: ``[B, C, H, W]`` source images.
        threat: the ball (``eps``, ``p``, ``kernel_size``).
        gamma: entropic temperature (Wu et al.: 1e-3 for an l_inf-normalised ``G``).
        solver: multiplier search, ``"bisection"`` (theirs) or ``"newton"`` (see ``project_plan``;
            here it also stops once the bracket is narrower than ``gamma`` and mixes its ends).
        steps: maximum multiplier evaluations.
        tol: stopping tolerance (as ``project_plan``).

    Returns:
        ``[B, C, H*W, k*k]`` a plan in ``Pi(x, eps)``.

    """
    check_solver(solver)
    rows, budget = public_rows(gradient, x, threat, "gradient")
    G = rows.gather(gradient.to(x.dtype))
    S, _, _ = lmo_rows(rows, G, budget, gamma=gamma, solver=solver, steps=steps, tol=tol)
    return rows.scatter(S)
