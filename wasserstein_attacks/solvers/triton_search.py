"""Fused Triton kernel: a whole multiplier search of the plan solvers in one launch, no host round trip.

The device counterpart of ``multiplier_search`` with the families of ``lmo`` (entropic
oracle, ``MODE = 0``) and ``simplex`` (Euclidean projection, ``MODE = 1``). One program per example
walks that example's compact rows (rows are ordered by example, ``PlanRows``) and runs, with
every scalar in registers:

1. the bracket: the upper end ``lambda`` of ``lmo_rows`` / ``project_rows``;
2. the search: Wu et al.'s bisection, or the safeguarded Newton / Illinois regula falsi steps, each
   evaluation a pass over the rows (``MODE 0``: row softmax of ``(G - price - lambda C) / gamma`` over
   the ``k x k`` window, its cost and ``d cost / d lambda``; ``MODE 1``: each row's simplex threshold,
   exactly, as the largest partial average ``(sum of the entries >= v_j - mass) / count``, which is the
   sort-based rule without a sort);
3. the ending: the plan at the bracket's feasible end, the Newton mix of both ends, and
   ``shrink_to_budget``, written once.

Every example stops on its own, as in the reference; the one host-side decision of the reference
(stop the loop once every example is done) is gone: a finished program skips its row passes. The
reference's per-level log-partitions (a CPU optimisation) are not used: a GPU evaluates the ``k*k``
softmax directly. Results equal the reference's up to float rounding (summation order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rows import PlanRows

__all__ = ["example_starts", "lmo_rows_triton", "project_rows_triton", "search_rows"]


@triton.jit
def _load_rows(G, PRICE, VALID, MASS, r0, end, HAS_PRICE: tl.constexpr, KK: tl.constexpr,
               KP: tl.constexpr, BR: tl.constexpr):
    """Rows ``[r0, r0 + BR)`` (clipped at ``end``): ``G - price [BR, KP]``, raw ``G``, price, window mask."""
    r = r0 + tl.arange(0, BR)
    cols = tl.arange(0, KP)
    rm = r < end
    m2 = rm[:, None] & (cols[None, :] < KK)
    off = r[:, None] * KK + cols[None, :]
    g = tl.load(G + off, mask=m2, other=0.0)
    pr = tl.zeros_like(g)
    if HAS_PRICE:
        pr = tl.load(PRICE + off, mask=m2, other=0.0)
    ok = m2 & (tl.load(VALID + off, mask=m2, other=0.0) > 0)
    mass = tl.load(MASS + r, mask=rm, other=0.0)
    return g - pr, g, pr, ok, mass, off, m2


@triton.jit
def _entries(MODE: tl.constexpr, w0, ok, mass, c, lam, inv_gamma):
    """Plan rows ``S(lambda) [BR, KP]`` of the family and each row's ``d cost / d lambda [BR]``."""
    if MODE == 0:
        # x_i softmax((W - lambda C) / gamma), weights floored at e^-80 below the row's best (as exp_floor).
        z = tl.where(ok, (w0 - lam * c[None, :]) * inv_gamma, float("-inf"))
        top = tl.max(z, 1)
        top = tl.where(top > float("-inf"), top, 0.0)
        w = tl.where(ok, tl.exp(tl.maximum(z - top[:, None], -80.0)), 0.0)
        s0 = tl.sum(w, 1)
        p = w / tl.where(s0 > 0, s0, 1.0)[:, None]
        e1 = tl.sum(p * c[None, :], 1)
        e2 = tl.sum(p * (c * c)[None, :], 1)
        slope = -mass * tl.maximum(e2 - e1 * e1, 0.0) * inv_gamma  # -mass Var(c) / gamma
        plan = p * mass[:, None]
    else:
        # Simplex threshold tau = max_j (sum_{i: v_i >= v_j} v_i - mass) / #{i: v_i >= v_j}.
        v = w0 - lam * c[None, :]
        vv = tl.where(ok, v, float("-inf"))
        ge = (vv[:, None, :] >= vv[:, :, None]) & ok[:, None, :]  # [BR, j, i]
        s = tl.sum(tl.where(ge, v[:, None, :], 0.0), 2)
        n = tl.sum(tl.where(ge, 1.0, 0.0), 2)
        avg = tl.where(ok, (s - mass[:, None]) / tl.maximum(n, 1.0), float("-inf"))
        tau = tl.max(avg, 1)
        tau = tl.where(tau > float("-inf"), tau, 0.0)
        on = ok & (v > tau[:, None])
        onf = tl.where(on, 1.0, 0.0)
        plan = tl.where(on, v - tau[:, None], 0.0)
        cnt = tl.sum(onf, 1)
        sc = tl.sum(onf * c[None, :], 1)
        sc2 = tl.sum(onf * (c * c)[None, :], 1)
        slope = -(sc2 - sc * sc / tl.maximum(cnt, 1.0))  # on a piece with a fixed support
    return plan, slope


@triton.jit
def _measure(MODE: tl.constexpr, G, PRICE, VALID, MASS, c, start, end, lam, inv_gamma,
             HAS_PRICE: tl.constexpr, KK: tl.constexpr, KP: tl.constexpr, BR: tl.constexpr):
    """``(cost, slope)`` of the example's plan ``S(lambda)``: unnormalised cost and its derivative."""
    cost = tl.zeros([BR], dtype=c.dtype)
    slope = tl.zeros([BR], dtype=c.dtype)
    for r0 in range(start, end, BR):
        w0, g, pr, ok, mass, off, m2 = _load_rows(G, PRICE, VALID, MASS, r0, end, HAS_PRICE, KK, KP, BR)
        plan, d = _entries(MODE, w0, ok, mass, c, lam, inv_gamma)
        cost += tl.sum(plan * c[None, :], 1)
        slope += d
    return tl.sum(cost, 0), tl.sum(slope, 0)


@triton.jit
def _bounds(G, PRICE, VALID, MASS, c, start, end, HAS_PRICE: tl.constexpr, KK: tl.constexpr,
            KP: tl.constexpr, BR: tl.constexpr):
    """Per example: ``max |G|``, ``max |price|``, ``max mass`` and the gain ``max (W_j - W_stay) / C_j``."""
    cols = tl.arange(0, KP)
    stay = (cols == KK // 2)[None, :]
    ag = tl.zeros([BR], dtype=c.dtype)
    ap = tl.zeros([BR], dtype=c.dtype)
    am = tl.zeros([BR], dtype=c.dtype)
    gain = tl.zeros([BR], dtype=c.dtype)
    for r0 in range(start, end, BR):
        w0, g, pr, ok, mass, off, m2 = _load_rows(G, PRICE, VALID, MASS, r0, end, HAS_PRICE, KK, KP, BR)
        ag = tl.maximum(ag, tl.max(tl.where(m2, tl.abs(g), 0.0), 1))
        ap = tl.maximum(ap, tl.max(tl.where(m2, tl.abs(pr), 0.0), 1))
        am = tl.maximum(am, mass)
        w_stay = tl.sum(tl.where(stay, w0, 0.0), 1)
        ratio = (w0 - w_stay[:, None]) / tl.where(c > 0, c, 1.0)[None, :]
        gain = tl.maximum(gain, tl.max(tl.where(ok & (c[None, :] > 0), ratio, 0.0), 1))
    return tl.max(ag, 0), tl.max(ap, 0), tl.max(am, 0), tl.max(gain, 0)


@triton.jit
def _residual(cost, budget, floor, LOG_SCALE: tl.constexpr):
    if LOG_SCALE:
        # (an example with no budget is done before its residual is read: keep its log 0 / 0 out)
        return tl.log(tl.maximum(cost + floor, 1e-30) / tl.maximum(budget + floor, 1e-30))
    else:
        return cost - budget


@triton.jit
def _newton(MODE: tl.constexpr, G, PRICE, VALID, MASS, c, start, end, inv_gamma, budget, upper, lam,
            tol, width, steps, LOG_SCALE: tl.constexpr, HAS_PRICE: tl.constexpr, KK: tl.constexpr,
            KP: tl.constexpr, BR: tl.constexpr):
    """Run the ``"newton"`` branch of ``multiplier_search``, step for step, for one example.

    Returns ``(lo, hi, c_lo, lam, exact, evaluations)``.
    """
    floor = 1e-3 * budget
    lo = budget * 0.0
    hi = upper
    done = budget <= 0
    c_lo = lo + float("nan")
    f_lo = lo + float("nan")
    f_hi = _residual(lo, budget, floor, LOG_SCALE)
    side = lo
    hi_known = budget != budget
    exact = done
    nev = steps * 0
    for i in range(steps):
        stop = tl.where(done, start, end)  # a finished example skips its row passes
        cost, slope = _measure(MODE, G, PRICE, VALID, MASS, c, start, stop, lam, inv_gamma, HAS_PRICE,
                               KK, KP, BR)
        nev += tl.where(done, 0, 1)
        res = _residual(cost, budget, floor, LOG_SCALE)
        act = done == 0
        over = cost > budget
        up_lo = act & over
        up_hi = act & (over == 0)
        hit = act & ((tl.abs(cost - budget) <= tol * budget) | ((lam <= 0) & (over == 0)))
        # Illinois: an end kept twice in a row has its residual halved.
        f_hi = tl.where(up_lo & (side > 0), f_hi / 2, f_hi)
        f_lo = tl.where(up_hi & (side < 0), f_lo / 2, f_lo)
        lo = tl.where(up_lo, lam, lo)
        c_lo = tl.where(up_lo, cost, c_lo)
        f_lo = tl.where(up_lo, res, f_lo)
        hi = tl.where(up_hi | hit, lam, hi)
        f_hi = tl.where(up_hi | hit, res, f_hi)
        hi_known = hi_known | up_hi | hit
        side = tl.where(up_lo, 1.0, tl.where(up_hi, -1.0, side))
        exact = exact | hit
        done = done | hit | (hi - lo <= width)
        if LOG_SCALE:
            d_res = slope / tl.maximum(cost + floor, 1e-30)
        else:
            d_res = slope
        newton = tl.maximum(lam - res / tl.minimum(d_res, -1e-30), 0.0)
        # Until an upper end is evaluated, grow at most geometrically (as the reference).
        newton = tl.where(hi_known | (lam <= 0), newton, tl.minimum(newton, 4 * lam))
        falsi = lo - f_lo * (hi - lo) / tl.minimum(f_hi - f_lo, -1e-30)
        guess = tl.where(hi_known & (c_lo == c_lo), falsi, newton)
        inside = (guess == guess) & (tl.abs(guess) < float("inf")) & (guess < hi)
        inside = inside & ((guess > lo) | ((guess == 0) & (lo == 0)))
        nxt = tl.where(inside, guess, (lo + hi) / 2)
        lam = tl.where(done | (i + 1 == steps), lam, nxt)
    return lo, hi, c_lo, lam, exact, nev


@triton.jit
def _bisect(MODE: tl.constexpr, G, PRICE, VALID, MASS, c, start, end, inv_gamma, budget, upper, tol,
            steps, HAS_PRICE: tl.constexpr, KK: tl.constexpr, KP: tl.constexpr, BR: tl.constexpr):
    """Run the ``"bisection"`` branch of ``multiplier_search`` (Wu et al.).

    Returns ``(hi, evaluations)``.
    """
    lo = budget * 0.0
    hi = upper
    done = budget <= 0
    nev = steps * 0
    for _ in range(steps):
        mid = (lo + hi) / 2
        stop = tl.where(done, start, end)
        cost, slope = _measure(MODE, G, PRICE, VALID, MASS, c, start, stop, mid, inv_gamma, HAS_PRICE,
                               KK, KP, BR)
        nev += tl.where(done, 0, 1)
        gap = cost - budget
        act = done == 0
        lo = tl.where(act & (gap > 0), mid, lo)
        hi = tl.where(act & (gap <= 0), mid, hi)
        done = done | (tl.abs(gap) < tol) | (hi - lo < tol)
    return hi, nev


@triton.jit
def _search_kernel(G, PRICE, VALID, MASS, COST, STARTS, BUDGET, EXTRA, START_LAM, OUT, LAM_OUT, NEVAL,
                   inv_gamma, tol, width, steps,
                   MODE: tl.constexpr, NEWTON: tl.constexpr, HAS_PRICE: tl.constexpr,
                   HAS_START: tl.constexpr, UPPER_GIVEN: tl.constexpr, KK: tl.constexpr,
                   KP: tl.constexpr, BR: tl.constexpr):
    """One example per program: bracket, multiplier search, plan of the result and shrink to budget.

    ``EXTRA [B]``: the margin ``gamma log(spread / budget)`` (``MODE 0``) or the upper end of the
    bracket (``MODE 1`` with ``UPPER_GIVEN``). Writes ``OUT [M, KK]`` rows of the example, ``LAM_OUT [B]``,
    and the largest evaluation count into ``NEVAL [1]``.

    Longer than the project's usual functions on purpose: it is one fused launch, and its stages share
    per-example scalars held in registers (splitting it would mean more @triton.jit helpers passing a
    dozen values each, which reads worse than the stages in order).
    """
    e = tl.program_id(0)
    start = tl.load(STARTS + e)
    end = tl.load(STARTS + e + 1)
    budget = tl.load(BUDGET + e)
    cols = tl.arange(0, KP)
    c = tl.load(COST + cols, mask=cols < KK, other=0.0)
    ag, ap, am, gain = _bounds(G, PRICE, VALID, MASS, c, start, end, HAS_PRICE, KK, KP, BR)
    extra = tl.load(EXTRA + e)
    if MODE == 0:
        if NEWTON:
            upper = gain + extra
        else:
            upper = 2 * (ag + ap) + extra  # Wu et al.'s bracket: 2 ||G||_inf + margin
    else:
        if UPPER_GIVEN:
            upper = extra
        else:
            upper = 2 * ag + am + 2 * ap  # past it every row keeps its mass on "stay"
    upper = tl.maximum(upper, 1e-12)
    lam0 = budget * 0.0
    if HAS_START:
        lam0 = tl.minimum(tl.maximum(tl.load(START_LAM + e), 0.0), upper)
    if NEWTON:
        LOG: tl.constexpr = MODE == 0
        lo, hi, c_lo, lam, exact, nev = _newton(MODE, G, PRICE, VALID, MASS, c, start, end, inv_gamma,
                                                budget, upper, lam0, tol, width, steps, LOG, HAS_PRICE,
                                                KK, KP, BR)
        mix = (exact == 0) & (c_lo == c_lo)
        lam_a = hi
        lam_b = tl.where(mix, lo, hi)
        c_hi, _s = _measure(MODE, G, PRICE, VALID, MASS, c, start, end, lam_a, inv_gamma, HAS_PRICE,
                            KK, KP, BR)
        theta = tl.minimum(tl.maximum((budget - c_hi) / tl.maximum(c_lo - c_hi, 1e-30), 0.0), 1.0)
        theta = tl.where(mix, theta, 0.0)
        c_b, _s = _measure(MODE, G, PRICE, VALID, MASS, c, start, tl.where(mix, end, start), lam_b,
                           inv_gamma, HAS_PRICE, KK, KP, BR)
        cost = c_hi + theta * (c_b - c_hi)
        lam_out = tl.where(exact, hi, tl.where(mix, hi - theta * (hi - lo), hi))
        nev += 1 + tl.where(mix, 1, 0)
    else:
        hi, nev = _bisect(MODE, G, PRICE, VALID, MASS, c, start, end, inv_gamma, budget, upper, tol, steps,
                          HAS_PRICE, KK, KP, BR)
        lam_a = hi
        cost, _s = _measure(MODE, G, PRICE, VALID, MASS, c, start, end, lam_a, inv_gamma, HAS_PRICE,
                            KK, KP, BR)
        nev += 1
        if MODE == 1:
            # The exact projection has lambda = 0 when the unconstrained one fits (project_rows).
            c0, _s = _measure(MODE, G, PRICE, VALID, MASS, c, start, end, lam_a * 0.0, inv_gamma,
                              HAS_PRICE, KK, KP, BR)
            lam_a = tl.where(c0 <= budget, 0.0, lam_a)
            cost = tl.where(c0 <= budget, c0, cost)
            nev += 1
        lam_b = lam_a
        theta = cost * 0.0
        lam_out = lam_a
    # shrink_to_budget: scale toward the identity plan where the cost exceeds the budget.
    scale = tl.where(cost > budget, budget / tl.maximum(cost, 1e-30), 1.0)
    scale = tl.minimum(tl.maximum(scale, 0.0), 1.0)
    stay = (cols == KK // 2)[None, :]
    for r0 in range(start, end, BR):
        w0, g, pr, ok, mass, off, m2 = _load_rows(G, PRICE, VALID, MASS, r0, end, HAS_PRICE, KK, KP, BR)
        pa, _d = _entries(MODE, w0, ok, mass, c, lam_a, inv_gamma)
        pb, _d = _entries(MODE, w0, ok, mass, c, lam_b, inv_gamma)
        s = pa + theta * (pb - pa)
        s = s * scale + tl.where(stay, (1 - scale) * mass[:, None], 0.0)
        tl.store(OUT + off, s, mask=m2)
    tl.store(LAM_OUT + e, lam_out)
    tl.atomic_max(NEVAL, nev)


def example_starts(rows: PlanRows) -> torch.Tensor:
    """First compact row of each example and the end: int32 ``[B + 1]`` (rows are ordered by example)."""
    cached = getattr(rows, "_triton_starts", None)
    if cached is None:
        bounds = torch.arange(rows.batch + 1, device=rows.example.device)
        cached = torch.searchsorted(rows.example, bounds).to(torch.int32)
        rows._triton_starts = cached
    return cached


def _block_rows(mode: int, kp: int) -> int:
    # MODE 1 compares every pair of a row's entries ([BR, KP, KP]): keep that block near 16k elements.
    return max(1, 16384 // (kp * kp)) if mode == 1 else max(1, 2048 // kp)


def search_rows(rows: PlanRows, W: torch.Tensor, budget: torch.Tensor, extra: torch.Tensor, *, mode: int,
                solver: str, steps: int, tol: float, width: float = 0.0, gamma: float = 1.0,
                start: torch.Tensor | None = None, price: torch.Tensor | None = None,
                upper_given: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch ``_search_kernel`` on rows ``W [M, k*k]``; returns ``(S [M, k*k], lambda [B], evals)``.

    ``evals`` is a 0-dim int32 tensor on the device (the largest count of any example; no host sync).
    """
    m, kk = W.shape
    W = W.contiguous()
    out = torch.zeros_like(W)
    lam = torch.empty_like(budget)
    neval = torch.zeros(1, dtype=torch.int32, device=W.device)
    if rows.batch == 0:
        return out, lam, neval[0]
    kp = triton.next_power_of_2(kk)
    cost = rows.cost.to(W.dtype)
    pr = W if price is None else price.to(W.dtype).contiguous()
    st = budget if start is None else start.to(budget.dtype).contiguous()
    _search_kernel[(rows.batch,)](
        W, pr, rows.validf.contiguous(), rows.mass.contiguous(), cost, example_starts(rows),
        budget.contiguous(), extra.to(budget.dtype).contiguous(), st, out, lam, neval,
        1.0 / gamma, float(tol), float(width), int(steps),
        MODE=mode, NEWTON=solver == "newton", HAS_PRICE=price is not None, HAS_START=start is not None,
        UPPER_GIVEN=upper_given, KK=kk, KP=kp, BR=_block_rows(mode, kp),
    )
    return out, lam, neval[0]


def lmo_rows_triton(rows: PlanRows, G: torch.Tensor, budget: torch.Tensor, *, gamma: float, solver: str,
                    steps: int, tol: float, start: torch.Tensor | None = None,
                    price: torch.Tensor | None = None):
    """``lmo_rows`` in one launch (same arguments and returns; evaluations as a device scalar)."""
    margin = (gamma * torch.log(rows.spread.clamp_min(1e-30) / budget.clamp_min(1e-30))).clamp_min(0)
    width = gamma if solver == "newton" else 0.0
    return search_rows(rows, G, budget, margin, mode=0, solver=solver, steps=steps, tol=tol, width=width,
                       gamma=gamma, start=start if solver == "newton" else None, price=price)


def project_rows_triton(rows: PlanRows, V: torch.Tensor, budget: torch.Tensor, *, solver: str, steps: int,
                        tol: float, start: torch.Tensor | None = None, price: torch.Tensor | None = None,
                        upper: torch.Tensor | None = None):
    """``project_rows`` in one launch (same arguments and returns)."""
    extra = budget if upper is None else upper
    return search_rows(rows, V, budget, extra, mode=1, solver=solver, steps=steps, tol=tol,
                       start=start if solver == "newton" else None, price=price,
                       upper_given=upper is not None)

