"""The multiplier search of the cost constraint: one multiplier ``lambda >= 0`` per example.

Every plan solver here is "a family of plans ``S(lambda)`` whose cost falls as ``lambda`` grows" plus this
search for the ``lambda`` whose cost is the budget ``eps * N``: Wu et al.'s bisection, or our safeguarded
Newton / regula-falsi steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .rows import PlanRows

__all__ = [
    "Family",
    "multiplier_search",
]


class Family(NamedTuple):
    """Plans ``S(lambda)`` whose cost is non-increasing in the multiplier ``lambda [B]``.

    ``measure(lambda, on_rows=None) -> (cost [B], slope [B])`` (``slope = d cost / d lambda <= 0``,
    unnormalised cost; with ``on_rows`` only those rows are evaluated, and examples without rows read 0);
    ``plan(lambda) -> S [M, k*k]``.
    """

    measure: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    plan: Callable[[torch.Tensor], torch.Tensor]
    #: optional ``[B]``: a multiplier past which no row gains by moving mass (an upper end for the search).
    gain: torch.Tensor | None = None


def multiplier_search(
    rows: PlanRows,
    family: Family,
    budget: torch.Tensor,
    upper: torch.Tensor,
    *,
    solver: str,
    steps: int,
    tol: float,
    start: torch.Tensor | None = None,
    width: float = 0.0,
    log_scale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows of a plan with cost at most (about) ``budget`` from ``family``, one multiplier per example.

    ``cost(upper) <= budget`` is assumed. Each example stops on its own, so a batch gives the same result
    as its examples one by one.

    Args:
        rows: the compact rows the plans live on.
        family: the plans ``S(lambda)`` and their cost.
        budget: ``[B]`` the cost allowed (``eps * N``, unnormalised).
        upper: ``[B]`` a multiplier past which the cost is (about) 0.
        solver: ``"bisection"``, Wu et al.'s search on ``[0, upper]``: an example stops when
            ``|cost - budget| < tol`` or its bracket is narrower than ``tol``, and gets the plan at the
            bracket's feasible end. ``"newton"`` (ours): a Newton step from ``start`` (the previous
            multiplier), then regula falsi (Illinois) on the bracket, bisection as the fallback; an example
            stops at ``|cost - budget| <= tol * budget`` (or at ``lambda = 0`` under budget) and gets that
            plan; if its bracket gets narrower than ``width`` or ``steps`` run out first, it gets the mix of
            the bracket's two ends whose cost is the budget: a point of the feasible set and, on a cost
            curve with jumps (small ``gamma``), what the exact solution is made of.
        steps: maximum cost evaluations.
        tol: stopping tolerance (see ``solver``).
        start: ``[B]`` warm start of ``"newton"`` (default 0).
        width: bracket width at which ``"newton"`` stops and mixes the ends.
        log_scale: regula falsi on ``log(cost)`` (for costs that decay exponentially in ``lambda``).

    Returns:
        ``(S [M, k*k], lambda [B], evaluations)``; ``S``'s cost may exceed the budget by the tolerance
        (:func:`shrink_to_budget` then makes it exact).

    """
    lo = torch.zeros_like(budget)
    hi = upper.clone()
    done = budget <= 0
    n_eval = 0
    if solver == "bisection":
        for _ in range(steps):
            if bool(done.all()):
                break
            mid = (lo + hi) / 2
            rows_on = None if bool((~done).float().mean() > 0.5) else (~done)[rows.example].nonzero()[:, 0]
            cost, _ = family.measure(mid, rows_on)
            n_eval += 1
            gap = cost - budget
            over = gap > 0
            lo = torch.where(~done & over, mid, lo)
            hi = torch.where(~done & ~over, mid, hi)
            done = done | (gap.abs() < tol) | (hi - lo < tol)
        return family.plan(hi), hi, n_eval + 1
    floor = 1e-3 * budget

    def residual(cost):
        return torch.log((cost + floor) / (budget + floor)) if log_scale else cost - budget

    c_lo = torch.full_like(budget, math.nan)  # cost at lo, unknown until evaluated
    f_lo = torch.full_like(budget, math.nan)
    f_hi = residual(torch.zeros_like(budget))  # cost(upper) is about 0 (Illinois-weighted residuals)
    side = torch.zeros_like(budget)  # +1: lo moved last, -1: hi moved last
    hi_known = torch.zeros_like(done)  # hi evaluated (not just the a-priori upper bound)
    lam = torch.zeros_like(budget) if start is None else torch.minimum(start.clamp(min=0), hi)
    exact = done.clone()
    for i in range(steps):
        # Once most examples are done, evaluate the rows of the others only.
        rows_on = None if bool((~done).float().mean() > 0.5) else (~done)[rows.example].nonzero()[:, 0]
        cost, slope = family.measure(lam, rows_on)
        n_eval += 1
        res = residual(cost)
        act = ~done
        over = cost > budget
        up_lo, up_hi = act & over, act & ~over
        hit = act & (((cost - budget).abs() <= tol * budget) | ((lam <= 0) & ~over))
        # Illinois: an end kept twice in a row has its residual halved, so regula falsi does not stall.
        f_hi = torch.where(up_lo & (side > 0), f_hi / 2, f_hi)
        f_lo = torch.where(up_hi & (side < 0), f_lo / 2, f_lo)
        lo, c_lo, f_lo = (torch.where(up_lo, v, u) for u, v in ((lo, lam), (c_lo, cost), (f_lo, res)))
        hi, f_hi = (torch.where(up_hi | hit, v, u) for u, v in ((hi, lam), (f_hi, res)))
        hi_known = hi_known | up_hi | hit
        side = torch.where(up_lo, 1.0, torch.where(up_hi, -1.0, side))
        exact = exact | hit
        done = done | hit | (hi - lo <= width)
        if bool(done.all()) or i + 1 == steps:
            break
        d_res = slope / (cost + floor) if log_scale else slope
        newton = (lam - res / d_res.clamp(max=-1e-30)).clamp_min(0)
        # Until an upper end is evaluated, grow at most geometrically (a Newton step at a kink of the
        # cost curve can shoot far past the root, and regula falsi toward the a-priori bound crawls).
        newton = torch.where(hi_known | (lam <= 0), newton, torch.minimum(newton, 4 * lam))
        falsi = lo - f_lo * (hi - lo) / (f_hi - f_lo).clamp(max=-1e-30)
        guess = torch.where(hi_known & ~torch.isnan(c_lo), falsi, newton)
        inside = torch.isfinite(guess) & (guess < hi) & ((guess > lo) | ((guess == 0) & (lo == 0)))
        lam = torch.where(done, lam, torch.where(inside, guess, (lo + hi) / 2))
    S = family.plan(hi)
    mix = ~exact & ~torch.isnan(c_lo)
    if bool(mix.any()):
        # The mix of the bracket's ends whose cost is exactly the budget (cost is linear in the plan).
        c_hi = rows.transport_cost(S)
        theta = ((budget - c_hi) / (c_lo - c_hi).clamp_min(1e-30)).clamp(0, 1)
        theta = torch.where(mix, theta, torch.zeros_like(theta))
        S = S + theta[rows.example][:, None] * (family.plan(torch.where(mix, lo, hi)) - S)
        lam = torch.where(mix, hi - theta * (hi - lo), hi)
        n_eval += 1
    return S, torch.where(exact, hi, lam), n_eval + 1
