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
        (``shrink_to_budget`` then makes it exact).

    """
    if solver == "bisection":
        return _bisection(rows, family, budget, upper, steps=steps, tol=tol)
    return _newton(
        rows, family, budget, upper, steps=steps, tol=tol, start=start, width=width, log_scale=log_scale
    )


def _rows_on(rows: PlanRows, done: torch.Tensor) -> torch.Tensor | None:
    """Rows ``[m]`` of the examples not ``done [B]``, or ``None`` (all rows) while most are not done."""
    # Once most examples are done, evaluate the rows of the others only.
    return None if bool((~done).float().mean() > 0.5) else (~done)[rows.example].nonzero()[:, 0]


def _bisection(
    rows: PlanRows, family: Family, budget: torch.Tensor, upper: torch.Tensor, *, steps: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Wu et al.'s bisection on ``[0, upper]`` (``[B]`` each); see ``multiplier_search``.

    Returns ``(S [M, k*k], lambda [B], evaluations)``, ``lambda`` the bracket's feasible (upper) end.
    """
    lo = torch.zeros_like(budget)
    hi = upper.clone()
    done = budget <= 0
    n_eval = 0
    for _ in range(steps):
        if bool(done.all()):
            break
        mid = (lo + hi) / 2
        cost, _ = family.measure(mid, _rows_on(rows, done))
        n_eval += 1
        gap = cost - budget
        over = gap > 0
        lo = torch.where(~done & over, mid, lo)
        hi = torch.where(~done & ~over, mid, hi)
        done = done | (gap.abs() < tol) | (hi - lo < tol)
    return family.plan(hi), hi, n_eval + 1


class _Bracket:
    """The state of the safeguarded Newton / regula-falsi search, all ``[B]`` (see ``_newton``).

    ``lo``/``hi``: the bracket on ``lambda``; ``c_lo``: the cost at ``lo`` (NaN until evaluated);
    ``f_lo``/``f_hi``: the (Illinois-weighted) residuals at the ends; ``side``: +1 when ``lo`` moved
    last, -1 when ``hi`` did; ``hi_known``: ``hi`` was evaluated (not just the a-priori upper bound);
    ``exact``: the cost hit the budget within the tolerance; ``done``: the example stopped.
    """

    def __init__(self, budget: torch.Tensor, upper: torch.Tensor, f_hi: torch.Tensor) -> None:
        self.lo = torch.zeros_like(budget)
        self.hi = upper.clone()
        self.done = budget <= 0
        self.c_lo = torch.full_like(budget, math.nan)  # cost at lo, unknown until evaluated
        self.f_lo = torch.full_like(budget, math.nan)
        self.f_hi = f_hi  # cost(upper) is about 0 (Illinois-weighted residuals)
        self.side = torch.zeros_like(budget)  # +1: lo moved last, -1: hi moved last
        self.hi_known = torch.zeros_like(self.done)  # hi evaluated (not just the a-priori upper bound)
        self.exact = self.done.clone()

    def update(self, lam, cost, res, budget, tol: float, width: float) -> None:
        """Move the ends to ``lam`` by the sign of ``cost - budget`` and mark the examples that stop."""
        act = ~self.done
        over = cost > budget
        up_lo, up_hi = act & over, act & ~over
        hit = act & (((cost - budget).abs() <= tol * budget) | ((lam <= 0) & ~over))
        # Illinois: an end kept twice in a row has its residual halved, so regula falsi does not stall.
        f_hi = torch.where(up_lo & (self.side > 0), self.f_hi / 2, self.f_hi)
        f_lo = torch.where(up_hi & (self.side < 0), self.f_lo / 2, self.f_lo)
        self.lo, self.c_lo, self.f_lo = (
            torch.where(up_lo, v, u) for u, v in ((self.lo, lam), (self.c_lo, cost), (f_lo, res))
        )
        self.hi, self.f_hi = (torch.where(up_hi | hit, v, u) for u, v in ((self.hi, lam), (f_hi, res)))
        self.hi_known = self.hi_known | up_hi | hit
        self.side = torch.where(up_lo, 1.0, torch.where(up_hi, -1.0, self.side))
        self.exact = self.exact | hit
        self.done = self.done | hit | (self.hi - self.lo <= width)

    def next_guess(self, lam, res, d_res) -> torch.Tensor:
        """Return the next multiplier ``[B]``: Newton or regula falsi inside the bracket, else its middle."""
        lo, hi, hi_known = self.lo, self.hi, self.hi_known
        newton = (lam - res / d_res.clamp(max=-1e-30)).clamp_min(0)
        # Until an upper end is evaluated, grow at most geometrically (a Newton step at a kink of the
        # cost curve can shoot far past the root, and regula falsi toward the a-priori bound crawls).
        newton = torch.where(hi_known | (lam <= 0), newton, torch.minimum(newton, 4 * lam))
        falsi = lo - self.f_lo * (hi - lo) / (self.f_hi - self.f_lo).clamp(max=-1e-30)
        guess = torch.where(hi_known & ~torch.isnan(self.c_lo), falsi, newton)
        inside = torch.isfinite(guess) & (guess < hi) & ((guess > lo) | ((guess == 0) & (lo == 0)))
        return torch.where(self.done, lam, torch.where(inside, guess, (lo + hi) / 2))


def _newton(
    rows: PlanRows,
    family: Family,
    budget: torch.Tensor,
    upper: torch.Tensor,
    *,
    steps: int,
    tol: float,
    start: torch.Tensor | None,
    width: float,
    log_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Our safeguarded search: Newton from ``start``, then Illinois regula falsi, bisection as fallback.

    Arguments and result as in ``multiplier_search`` (``budget``, ``upper``, ``start``: ``[B]``).
    """
    floor = 1e-3 * budget

    def residual(cost):
        return torch.log((cost + floor) / (budget + floor)) if log_scale else cost - budget

    br = _Bracket(budget, upper, residual(torch.zeros_like(budget)))
    lam = torch.zeros_like(budget) if start is None else torch.minimum(start.clamp(min=0), br.hi)
    n_eval = 0
    for i in range(steps):
        cost, slope = family.measure(lam, _rows_on(rows, br.done))
        n_eval += 1
        res = residual(cost)
        br.update(lam, cost, res, budget, tol, width)
        if bool(br.done.all()) or i + 1 == steps:
            break
        lam = br.next_guess(lam, res, slope / (cost + floor) if log_scale else slope)
    S = family.plan(br.hi)
    mix = ~br.exact & ~torch.isnan(br.c_lo)
    if bool(mix.any()):
        lo, hi = br.lo, br.hi
        # The mix of the bracket's ends whose cost is exactly the budget (cost is linear in the plan).
        c_hi = rows.transport_cost(S)
        theta = ((budget - c_hi) / (br.c_lo - c_hi).clamp_min(1e-30)).clamp(0, 1)
        theta = torch.where(mix, theta, torch.zeros_like(theta))
        S = S + theta[rows.example][:, None] * (family.plan(torch.where(mix, lo, hi)) - S)
        lam = torch.where(mix, hi - theta * (hi - lo), hi)
        n_eval += 1
    return S, torch.where(br.exact, br.hi, lam), n_eval + 1
