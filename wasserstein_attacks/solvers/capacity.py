"""Pixel capacity (the box ``[0, 1]``): Wu et al.'s dual post-projection and the local box repair.

``return_overflow`` is the one box repair of the package: a pixel above 1 keeps the share of its
incoming moved mass that fits and the rest returns to the senders' "stay" entries; it works on the full
plan layout and on compact rows (``fit_box``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import transport as T
from .._kernels import use_triton
from ..threat import WassersteinBall
from .rows import PlanRows, public_rows, shrink_to_budget
from .search import multiplier_search
from .simplex import projection_family

__all__ = [
    "overflow_slack",
    "return_overflow",
    "grid_overflow",
    "fit_box",
    "capacity_rows",
    "capacity_projection",
]


def overflow_slack(dtype: torch.dtype) -> float:
    """Excess over 1 that is rounding noise, not overflow (far below the certificate's box tolerance)."""
    return 16 * torch.finfo(dtype).eps


def return_overflow(
    plan: torch.Tensor,
    columns: Callable[[torch.Tensor], torch.Tensor],
    at_targets: Callable[[torch.Tensor], torch.Tensor],
    own: Callable[[torch.Tensor], torch.Tensor],
    mass: torch.Tensor,
    *,
    max_rounds: int = 200,
) -> torch.Tensor:
    """Local box repair: the share of moved mass that overflows a pixel (above 1) returns to its sources.

    A pixel ``j`` with column sum ``Y_j > 1`` keeps the fraction ``1 - (Y_j - 1) / inflow_j`` of the
    moved mass it receives (``inflow_j``: column sum without the "stay" entries); the rest goes back to
    the "stay" entry of the rows that sent it. Repeated, since a source that gets mass back can overflow
    in turn. Row sums are kept and the cost only decreases. The one box repair of the package, for any
    layout whose last dim is the ``k*k`` window ("stay" = ``k*k // 2``, landing on the row's own pixel):
    the full layout ``[B, C, H*W, k*k]`` (``grid_overflow``) or compact rows (``fit_box``).

    Args:
        plan: non-negative plan, last dim ``k*k``, rows summing to ``mass``.
        columns: plan -> pixel masses it produces (any shape, e.g. ``[B, C, H, W]`` or flat).
        at_targets: pixel masses of that shape -> per-entry value at each entry's target (plan shape).
        own: plan -> pixel masses of the "stay" entries alone (the shape of ``columns``' output). The
            moved inflow is the column sum minus that: no second scatter.
        mass: ``plan.shape[:-1]`` the row sums; what a row gets back is its mass minus what it keeps (no
            reduction over the short last dimension, which is slow on CPU).
        max_rounds: rounds at most (cascades are short in practice).

    Returns:
        the repaired plan (new tensor); pixels may exceed 1 by rounding noise (16 ulps), or more only if
        ``max_rounds`` ran out.

    """
    stay = plan.shape[-1] // 2
    P = plan
    ones = plan.new_ones(plan.shape[-1])
    # Rounding noise (a few ulps over 1) is not overflow: chasing it never ends and depends on how the
    # batch is summed. Real overflow is cut to a few ulps under 1, so rounding cannot restart a round.
    slack, margin = overflow_slack(plan.dtype), 64 * torch.finfo(plan.dtype).eps
    for _ in range(max_rounds):
        Y = columns(P)
        over = Y > 1 + slack
        if not bool(over.any()):
            break
        inflow = Y - own(P)
        keep = torch.where(over, (1 - (Y - 1 + margin) / inflow.clamp_min(1e-30)).clamp(0, 1), 1.0)
        factor = at_targets(keep)  # per entry: the keep factor of its target
        factor[..., stay] = 1.0
        P = P * factor
        P[..., stay] += mass - P @ ones
    return P


def grid_overflow(plan: torch.Tensor, height: int, width: int, *, max_rounds: int = 200) -> torch.Tensor:
    """``return_overflow`` on the full layout: ``plan [B, C, H*W, k*k]`` -> repaired plan, same shape."""
    k = math.isqrt(plan.shape[-1])
    stay = plan.shape[-1] // 2
    shape = (*plan.shape[:2], height, width)
    return return_overflow(
        plan,
        lambda q: T.column_sums(q, height, width),
        lambda m: T.gather_neighbours(m, k),
        lambda q: q[..., stay].reshape(shape),
        plan.sum(-1),
        max_rounds=max_rounds,
    )


def capacity_rows(
    rows: PlanRows,
    V: torch.Tensor,
    budget: torch.Tensor,
    *,
    steps: int = 5000,
    lam_every: int = 10,
    lam_steps: int = 30,
    lam_upper: float = 50.0,
    momentum: float = 0.9,
    lr: tuple[float, float] = (0.1, 0.01),
    lr_switch: int = 1000,
) -> torch.Tensor:
    """``capacity_projection`` on compact rows ``V [M, k*k]``; returns rows."""
    upper = V.new_full((rows.batch,), lam_upper)

    def family(mu):
        return projection_family(rows, V, rows.at_targets(mu))

    def multiplier(mu):
        fam = family(mu)
        return multiplier_search(rows, fam, budget, upper, solver="bisection", steps=lam_steps, tol=1e-4)[1]

    mu = V.new_ones(rows.size)
    mu_y = mu_prev = V.new_zeros(rows.size)
    lam = V.new_ones(rows.batch)
    for i in range(steps):
        if i % lam_every == 0:
            lam = multiplier(mu)
        eta = lr[0] if i <= lr_switch else lr[1]
        mu_y = (mu + eta * (rows.columns(family(mu).plan(lam)) - 1)).clamp_min(0)
        mu = (1 + momentum) * mu_y - momentum * mu_prev
        mu_prev = mu_y
    return shrink_to_budget(rows, family(mu_y).plan(multiplier(mu_y)), budget)


def capacity_projection(
    values: torch.Tensor, x: torch.Tensor, threat: WassersteinBall, *, steps: int = 5000
) -> torch.Tensor:
    """Wu et al.'s box post-projection: approximately project onto ``Pi(x, eps)`` with ``P^T 1 <= 1``.

    Their ``dual_capacity_constrained_projection``: rows ``Pi_simplex(V - lambda C - mu_target)`` with one
    multiplier ``mu_j >= 0`` per pixel for its capacity ``sum_i P_ij <= 1``; ``mu`` (init 1) by projected
    gradient ascent with momentum 0.9 (step 0.1 for the first 1000 iterations, then 0.01), ``lambda``
    re-solved by bisection on ``[0, 50]`` (30 steps) every 10 iterations. Approximate: pixels may still
    exceed 1 slightly (the common ending repairs that); cost and rows hold exactly.

    Args:
        values: ``[B, C, H*W, k*k]`` point to project (e.g. a plan from ``ExactProjectionPGD``).
        x: ``[B, C, H, W]`` source images.
        threat: the ball (``eps``, ``p``, ``kernel_size``).
        steps: dual-ascent iterations (authors: 5000).

    Returns:
        ``[B, C, H*W, k*k]`` plan.

    """
    rows, budget = public_rows(values, x, threat, "values")
    return rows.scatter(capacity_rows(rows, rows.gather(values.to(x.dtype)), budget, steps=steps))


def fit_box(rows: PlanRows, P: torch.Tensor, max_rounds: int = 100) -> torch.Tensor:
    """``return_overflow`` on compact rows ``P [M, k*k]`` (see ``PlanRows``)."""
    if use_triton(P):  # device rounds, one host check per few rounds; the code below is the reference
        from .triton_capacity import fit_box_triton

        return fit_box_triton(rows, P, max_rounds=max_rounds)
    stay = rows.kk // 2

    def own(q):
        out = q.new_zeros(rows.size)
        out[rows.index] = q[:, stay]
        return out

    return return_overflow(P, rows.columns, rows.at_targets, own, rows.mass, max_rounds=max_rounds)
