"""Exact Wasserstein distance between images: the transport LP, solved per example and channel.

This is the referee of the project (``../shared/THREAT_MODEL.md``, Exactness, check 2): it is
independent of every attack and of the plan certificate. Each channel's LP is restricted to the
supports of the two images (pixels with no mass have no rows / columns in any plan) and solved by
POT's network simplex (``ot.emd``) in float64. Moves outside the window get a forbidden cost;
infeasibility is detected from the optimal plan (mass on forbidden entries), never from the value.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ot
import torch

__all__ = ["exact_distance", "exact_plan", "exact_plan_channel"]

# Forbidden entries cost this many times the largest allowed cost: any plan that uses one costs
# more than every feasible plan, so a feasible problem never puts mass there.
_FORBID_FACTOR = 1e4


def _pixel_coords(height: int, width: int) -> np.ndarray:
    h, w = np.divmod(np.arange(height * width), width)
    return np.stack([h, w], axis=1).astype(np.float64)


def exact_plan_channel(
    a: np.ndarray, b: np.ndarray, height: int, width: int, kernel_size: int | None, p: int
) -> tuple[float, np.ndarray | None, np.ndarray, np.ndarray]:
    """Optimal plan of one channel between two equal-mass images.

    Args:
        a, b: float64 ``[H*W]`` non-negative masses with (numerically) equal sums.
        kernel_size: odd window size, or ``None`` for dense plans.
        p: ground-cost exponent (cost ``||d||_2 ** p`` in pixels).

    Returns:
        ``(cost, plan, rows, cols)``: the unnormalised optimal cost ``sum(P * c)`` (``inf`` when the
        window makes the move impossible), the plan restricted to the supports ``rows`` x ``cols``
        (indices into ``H*W``) or ``None`` when infeasible.
    """
    rows = np.flatnonzero(a > 0)
    cols = np.flatnonzero(b > 0)
    if rows.size == 0 or cols.size == 0:
        return 0.0, np.zeros((rows.size, cols.size)), rows, cols
    xy = _pixel_coords(height, width)
    d = xy[rows][:, None, :] - xy[cols][None, :, :]
    cost = np.sqrt((d**2).sum(-1)) ** p
    forbidden = None
    if kernel_size is not None:
        r = kernel_size // 2
        forbidden = (np.abs(d) > r).any(-1)
        if forbidden.all(axis=1).any() or forbidden.all(axis=0).any():
            return math.inf, None, rows, cols  # some pixel has nowhere to go / nothing to receive from
        big = _FORBID_FACTOR * (float(cost[~forbidden].max()) + 1.0)
        cost = np.where(forbidden, big, cost)
    aa, bb = a[rows], b[cols]
    bb = bb * (aa.sum() / bb.sum())
    plan = ot.emd(aa, bb, cost, numItermax=10_000_000)
    if forbidden is not None and plan[forbidden].sum() > 1e-9 * aa.sum():
        return math.inf, None, rows, cols
    if forbidden is not None:
        plan = np.where(forbidden, 0.0, plan)
        cost = np.where(forbidden, 0.0, cost)
    return float((plan * cost).sum()), plan, rows, cols


def _one_example(x: np.ndarray, y: np.ndarray, kernel_size: int | None, p: int, mass_tol: float) -> float:
    n_ch, height, width = x.shape
    total = x.sum()
    if total <= 0:
        return 0.0 if np.all(y <= 0) else math.inf
    acc = 0.0
    for c in range(n_ch):
        a, b = x[c].reshape(-1), y[c].reshape(-1)
        ma, mb = a.sum(), b.sum()
        if abs(ma - mb) > mass_tol * total:
            return math.inf
        if ma <= 0 or mb <= 0:
            continue  # both masses are within tolerance of zero: nothing to move
        cost, _, _, _ = exact_plan_channel(a, b, height, width, kernel_size, p)
        if not math.isfinite(cost):
            return math.inf
        acc += cost
    return acc / total


def exact_distance(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    *,
    kernel_size: int | None = 5,
    p: int = 1,
    mass_tol: float = 1e-5,
    workers: int | None = None,
) -> torch.Tensor:
    """Exact distance ``W(x, x_adv)`` per example (``../shared/THREAT_MODEL.md``).

    Args:
        x, x_adv: ``[B, C, H, W]`` non-negative images (any float dtype; solved in float64).
        kernel_size: odd window size or ``None`` (dense plans).
        p: 1 or 2.
        mass_tol: per-channel mass difference allowed, relative to ``N(x)``.
        workers: threads for the per-example solves (default: CPU count, at most 8).

    Returns:
        float64 ``[B]`` in units of ``eps`` (``sum(P*c) / N(x)``); ``+inf`` where masses differ beyond
        ``mass_tol`` or the window makes the move impossible; 0 for an all-zero ``x`` with ``x_adv = x``.
    """
    xs = x.detach().to("cpu", torch.float64).numpy()
    ys = x_adv.detach().to("cpu", torch.float64).numpy()
    jobs = [(xs[i], ys[i]) for i in range(xs.shape[0])]
    workers = workers or min(8, torch.get_num_threads() or 1)
    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(lambda j: _one_example(j[0], j[1], kernel_size, p, mass_tol), jobs))
    else:
        out = [_one_example(a, b, kernel_size, p, mass_tol) for a, b in jobs]
    return torch.tensor(out, dtype=torch.float64)


def exact_plan(
    x: torch.Tensor, x_adv: torch.Tensor, *, kernel_size: int, p: int = 1, mass_tol: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """An optimal local plan from ``x`` to ``x_adv`` (each channel's target rescaled to its source mass).

    Args:
        x, x_adv: ``[B, C, H, W]`` non-negative images.
        kernel_size: odd window size (local layout ``[B, C, H*W, k*k]``).

    Returns:
        ``(plan, feasible)``: float64 plan ``[B, C, H*W, k*k]`` whose row sums are ``x`` (identity plan
        for infeasible examples) and bool ``[B]`` (False where masses differ by more than ``mass_tol``
        or the window makes the move impossible).
    """
    from . import transport as T

    b, c, h, w = x.shape
    r = kernel_size // 2
    xs = x.detach().to("cpu", torch.float64).numpy()
    ys = x_adv.detach().to("cpu", torch.float64).numpy()
    plan = T.identity_plan(torch.from_numpy(xs.copy()), kernel_size)
    out = plan.numpy()
    ok = np.ones(b, dtype=bool)
    for i in range(b):
        total = xs[i].sum()
        local = np.zeros((c, h * w, kernel_size**2))
        for ch in range(c):
            a, bb = xs[i, ch].reshape(-1), ys[i, ch].reshape(-1)
            if total > 0 and abs(a.sum() - bb.sum()) > mass_tol * total:
                ok[i] = False
                break
            if a.sum() <= 0 or bb.sum() <= 0:
                local[ch, :, kernel_size**2 // 2] = a
                continue
            cost, P, rows, cols = exact_plan_channel(a, bb, h, w, kernel_size, p)
            if P is None:
                ok[i] = False
                break
            dh = cols[None, :] // w - rows[:, None] // w
            dw = cols[None, :] % w - rows[:, None] % w
            o = (dh + r) * kernel_size + (dw + r)
            nz = P > 0
            ii = np.broadcast_to(rows[:, None], P.shape)[nz]
            np.add.at(local[ch], (ii, o[nz]), P[nz])
        if ok[i]:
            out[i] = local
    return torch.from_numpy(out), torch.from_numpy(ok)
