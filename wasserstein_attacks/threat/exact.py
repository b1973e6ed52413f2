"""Exact Wasserstein distance between images: the transport LP, solved per example and channel.

This is the referee of the project (``../shared/THREAT_MODEL.md``, Exactness, check 2): it is
independent of every attack and of the plan certificate. Each channel's LP is a min-cost flow on
the bipartite graph whose left nodes are the source pixels with mass, right nodes the target pixels
with mass, and whose arcs are the allowed moves only (inside the ``k x k`` window, or all pairs for
dense plans). It is solved in float64 by POT's network simplex on that sparse graph
(``ot.lp.emd_wrap.emd_c_sparse``, POT >= 0.9.7): an exact vertex solution, not a penalty. A window
that makes the move impossible leaves the graph without a feasible flow; that is detected from the
returned plan (its marginals do not match), never from a cost value.

Speed: with ``k = 5`` the graph has about 25 arcs per source pixel instead of one per (source,
target) pair, which makes a 1000-pair MNIST run several times faster than ``ot.emd`` on the dense
support x support cost with forbidden entries (``benchmarks/verify_speed.py`` measures both).
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .. import transport as T

__all__ = ["exact_distance", "exact_plan", "exact_plan_channel"]

# Network-simplex pivots allowed per channel; an MNIST pair needs a few thousand.
_MAX_ITER = 100_000_000
# The solver's plan must reproduce both marginals to this precision (relative to the channel's mass):
# float64 network simplex reproduces them to ~1e-15; an infeasible graph misses by a finite amount.
_MARGINAL_RTOL = 1e-9
_OPTIMAL, _MAX_ITER_REACHED = 1, 3


def _sparse_solver():
    try:
        from ot.lp.emd_wrap import emd_c_sparse
    except ImportError as err:  # pragma: no cover - depends on the installed POT
        raise ImportError("the exact solver needs POT >= 0.9.7 (network simplex on sparse graphs)") from err
    return emd_c_sparse


@functools.lru_cache(maxsize=32)
def _grid(height: int, width: int) -> np.ndarray:
    """Pixel coordinates ``(h, w)`` of each row-major index, int64 ``[H*W, 2]``."""
    h, w = np.divmod(np.arange(height * width), width)
    grid = np.stack([h, w], axis=1)
    grid.setflags(write=False)  # cached and shared between threads
    return grid


@functools.lru_cache(maxsize=32)
def _window(height: int, width: int, kernel_size: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Window targets ``[H*W, k*k]`` (-1 outside the image) and offset costs ``[k*k]``, as numpy."""
    targets = T.window_targets(height, width, kernel_size).numpy()
    costs = T.offset_costs(kernel_size, p).numpy()
    targets.setflags(write=False)  # cached and shared between threads
    costs.setflags(write=False)
    return targets, costs


@dataclass(frozen=True)
class _Flow:
    """Optimal plan of one channel as a list of moves: ``mass[j]`` from pixel ``src[j]`` to ``dst[j]``."""

    src: np.ndarray
    dst: np.ndarray
    mass: np.ndarray
    cost: float  # sum(mass * ground cost), not normalised


def _solve_channel(
    a: np.ndarray,
    b: np.ndarray,
    height: int,
    width: int,
    kernel_size: int | None,
    p: int,
    slack: float = 0.0,
) -> _Flow | None:
    """Optimal flow between two equal-mass float64 ``[H*W]`` images, or ``None`` when no plan exists.

    ``slack`` (mass, >= 0): when no plan meets both marginals exactly, a plan that leaves at most this
    much mass unmatched is accepted (see :func:`_solve_with_slack`); 0 demands exact marginals.
    """
    rows = np.flatnonzero(a > 0)
    cols = np.flatnonzero(b > 0)
    nr, nc = rows.size, cols.size
    if kernel_size is None:
        ri = np.repeat(np.arange(nr), nc)
        ci = np.tile(np.arange(nc), nr)
        grid = _grid(height, width)
        d = grid[rows[ri]] - grid[cols[ci]]
        arc_cost = T.squared_to_cost((d * d).sum(1).astype(np.float64), p)
    else:
        targets, offset_cost = _window(height, width, kernel_size, p)
        # Position of each pixel among the columns; the extra last slot answers index -1 (outside).
        col_pos = np.full(height * width + 1, -1)
        col_pos[cols] = np.arange(nc)
        pos = col_pos[targets[rows]]  # [nr, k*k]: -1 where the move leaves the image or hits no mass
        ri, oi = np.nonzero(pos >= 0)
        ci = pos[ri, oi]
        arc_cost = offset_cost[oi]
    aa = a[rows]
    bb = b[cols] * (aa.sum() / b[cols].sum())
    # A pixel with no allowed partner proves infeasibility without a solve.
    isolated = kernel_size is not None and (
        np.bincount(ri, minlength=nr).min(initial=1) == 0 or np.bincount(ci, minlength=nc).min(initial=1) == 0
    )
    flows = None if isolated else _network_simplex(aa, bb, ri, ci, arc_cost)
    unmatched = 0.0
    if flows is None:
        if slack <= 0:
            return None
        found = _solve_with_slack(aa, bb, ri, ci, arc_cost, slack)
        if found is None:
            return None
        flows, unmatched = found
    fs, ft, fv = flows
    src, dst = rows[fs], cols[ft]
    grid = _grid(height, width)
    d = grid[src] - grid[dst]
    cost = float(fv @ T.squared_to_cost((d * d).sum(1).astype(np.float64), p))
    # Unmatched mass is charged the dearest move of the window (dense: of the image): an upper bound on
    # what matching it would cost.
    if unmatched > 0:
        r = kernel_size // 2 if kernel_size is not None else None
        far = r * math.sqrt(2) if r is not None else math.hypot(height - 1, width - 1)
        cost += unmatched * float(T.squared_to_cost(far * far, p))
    return _Flow(src, dst, fv, cost)


def _network_simplex(aa, bb, ri, ci, arc_cost):
    """POT's sparse network simplex; ``(src, dst, mass)`` arrays, or ``None`` when infeasible.

    Feasibility is read from the plan itself (it must carry both marginals to ``_MARGINAL_RTOL``),
    never from the cost.
    """
    fs, ft, fv, _, _, _, code = _sparse_solver()(
        aa, bb, ri.astype(np.uint64), ci.astype(np.uint64), np.ascontiguousarray(arc_cost), _MAX_ITER
    )
    if code == _MAX_ITER_REACHED:
        raise RuntimeError(f"network simplex stopped after {_MAX_ITER} pivots without reaching optimality")
    if code != _OPTIMAL:
        return None
    fs, ft = fs.astype(np.int64), ft.astype(np.int64)
    tol = _MARGINAL_RTOL * aa.sum()
    row_err = np.abs(np.bincount(fs, weights=fv, minlength=aa.size) - aa).max(initial=0.0)
    col_err = np.abs(np.bincount(ft, weights=fv, minlength=bb.size) - bb).max(initial=0.0)
    if row_err > tol or col_err > tol:
        return None
    return fs, ft, fv


def _solve_with_slack(aa, bb, ri, ci, arc_cost, slack: float):
    """Min-cost flow that may leave up to ``slack`` mass of each marginal unmatched.

    Float32 images are rounded column sums of a plan, so a target pixel can need a few 1e-9 of mass
    more than its window's sources can give, and the exact problem is then infeasible by that sliver.
    A dummy source and a dummy target of mass ``slack`` each, joined to every pixel by arcs dearer than
    any rerouting of real mass, absorb it: the solver first minimises the unmatched mass, then the cost.

    Returns:
        ``((src, dst, mass), unmatched)`` of the real arcs, or ``None`` when more than ``slack`` would
        stay unmatched.

    """
    nr, nc = aa.size, bb.size
    big = (float(arc_cost.max(initial=0.0)) + 1.0) * (nr + nc + 1)
    ri2 = np.concatenate([ri, np.arange(nr), np.full(nc + 1, nr)])
    ci2 = np.concatenate([ci, np.full(nr, nc), np.append(np.arange(nc), nc)])
    cost2 = np.concatenate([arc_cost, np.full(nr + nc, big), [0.0]])
    flows = _network_simplex(np.append(aa, slack), np.append(bb, slack), ri2, ci2, cost2)
    if flows is None:
        return None
    fs, ft, fv = flows
    real = (fs < nr) & (ft < nc)
    unmatched = float(fv[(fs < nr) & (ft == nc)].sum())
    return (fs[real], ft[real], fv[real]), unmatched


def _solve_example(
    x: np.ndarray, y: np.ndarray, kernel_size: int | None, p: int, mass_tol: float
) -> tuple[float, list[_Flow | None] | None]:
    """Distance and per-channel flows of one example ``[C, H, W]``; ``(inf, None)`` if infeasible.

    A channel whose two masses are both within tolerance of zero gets flow ``None`` (nothing moves).
    """
    n_ch, height, width = x.shape
    total = x.sum()
    if total <= 0:
        # N = 0: the ball is {x}; only the zero image is at distance 0 (and nothing is divided by N).
        return (0.0, [None] * n_ch) if not np.any(y > 0) else (math.inf, None)
    flows: list[_Flow | None] = []
    acc = 0.0
    for c in range(n_ch):
        a, b = x[c].reshape(-1), y[c].reshape(-1)
        ma, mb = a.sum(), b.sum()
        if abs(ma - mb) > mass_tol * total:
            return math.inf, None
        if ma <= 0 or mb <= 0:
            flows.append(None)
            continue
        # Within the mass tolerance, a sliver of mass may stay unmatched (rounding of float32 images).
        flow = _solve_channel(a, b, height, width, kernel_size, p, slack=mass_tol * total)
        if flow is None:
            return math.inf, None
        flows.append(flow)
        acc += flow.cost
    return acc / total, flows


def _check_args(
    x: torch.Tensor, x_adv: torch.Tensor, kernel_size: int | None, p: int, mass_tol: float
) -> None:
    for name, t in (("x", x), ("x_adv", x_adv)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor [B, C, H, W], got {got}")
    if x.shape != x_adv.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    if kernel_size is not None:
        T.check_kernel_size(kernel_size)
    T.check_p(p)
    if not (isinstance(mass_tol, (int, float)) and math.isfinite(mass_tol) and mass_tol >= 0):
        raise ValueError(f"mass_tol must be a finite float >= 0, got {mass_tol!r}")


def _to_numpy(x: torch.Tensor, x_adv: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    xs = x.detach().to("cpu", torch.float64).numpy()
    ys = x_adv.detach().to("cpu", torch.float64).numpy()
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()) or (xs < 0).any() or (ys < 0).any():
        raise ValueError("x and x_adv must be finite and non-negative (they are mass distributions)")
    return xs, ys


def _map_examples(fn, n: int, workers: int | None) -> list:
    """``[fn(i) for i in range(n)]``, on threads when useful (the network simplex releases the GIL)."""
    workers = min(n, workers if workers is not None else min(8, torch.get_num_threads() or 1))
    if workers <= 1:
        return [fn(i) for i in range(n)]
    # Contiguous chunks, one per thread: one task each keeps the pool's overhead out of the loop.
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda j: [fn(i) for i in range(bounds[j], bounds[j + 1])], range(workers))
        return [r for part in parts for r in part]


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
        x: ``[B, C, H, W]`` non-negative source images (any float dtype; solved in float64).
        x_adv: ``[B, C, H, W]`` non-negative target images.
        kernel_size: odd window size or ``None`` (dense plans).
        p: 1 or 2 (ground cost ``||d||_2 ** p`` in pixels).
        mass_tol: per-channel mass difference allowed, relative to ``N(x)``; within it, each channel
            of ``x_adv`` is rescaled to the mass of ``x``'s before solving.
        workers: threads for the per-example solves (default: torch's thread count, at most 8).

    Returns:
        float64 ``[B]`` on CPU in units of ``eps`` (``sum(P*c) / N(x)``); ``+inf`` where masses differ
        beyond ``mass_tol`` or the window makes the move impossible; for an all-zero ``x``, 0 if
        ``x_adv`` is zero too, else ``+inf``.

    """
    _check_args(x, x_adv, kernel_size, p, mass_tol)
    xs, ys = _to_numpy(x, x_adv)
    out = _map_examples(
        lambda i: _solve_example(xs[i], ys[i], kernel_size, p, mass_tol)[0], xs.shape[0], workers
    )
    return torch.tensor(out, dtype=torch.float64)


def exact_plan_channel(
    a: np.ndarray, b: np.ndarray, height: int, width: int, kernel_size: int | None, p: int
) -> tuple[float, np.ndarray | None, np.ndarray, np.ndarray]:
    """Optimal plan of one channel between two equal-mass images, as a dense support x support matrix.

    Args:
        a: float64 ``[H*W]`` non-negative source masses (row-major pixels).
        b: float64 ``[H*W]`` non-negative target masses with (numerically) the sum of ``a``; rescaled
            to it exactly before solving.
        height: image height ``H`` in pixels.
        width: image width ``W`` in pixels.
        kernel_size: odd window size, or ``None`` for dense plans.
        p: ground-cost exponent (cost ``||d||_2 ** p`` in pixels).

    Returns:
        ``(cost, plan, rows, cols)``: the unnormalised optimal cost ``sum(P * c)`` (``inf`` when the
        window makes the move impossible), the plan ``[len(rows), len(cols)]`` restricted to the
        supports ``rows`` x ``cols`` (indices into ``H*W``), or ``None`` when infeasible.

    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    rows, cols = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
    if rows.size == 0 or cols.size == 0:
        return 0.0, np.zeros((rows.size, cols.size)), rows, cols
    flow = _solve_channel(a, b, height, width, kernel_size, T.check_p(p))
    if flow is None:
        return math.inf, None, rows, cols
    plan = np.zeros((rows.size, cols.size))
    plan[np.searchsorted(rows, flow.src), np.searchsorted(cols, flow.dst)] = flow.mass
    return flow.cost, plan, rows, cols


def exact_plan(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    *,
    kernel_size: int,
    p: int = 1,
    mass_tol: float = 1e-5,
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve for an optimal local plan from ``x`` to ``x_adv`` (targets rescaled to the source masses).

    Args:
        x: ``[B, C, H, W]`` non-negative source images.
        x_adv: ``[B, C, H, W]`` non-negative target images; each channel is rescaled to ``x``'s mass.
        kernel_size: odd window size (local layout ``[B, C, H*W, k*k]``).
        p: 1 or 2.
        mass_tol: per-channel mass difference allowed, relative to ``N(x)``.
        workers: threads for the per-example solves (as in :func:`exact_distance`).

    Returns:
        ``(plan, feasible)``: float64 plan ``[B, C, H*W, k*k]`` on CPU whose row sums are ``x`` (the
        identity plan for infeasible examples) and bool ``[B]`` (False where masses differ by more
        than ``mass_tol`` or the window makes the move impossible). Its cost equals
        :func:`exact_distance` wherever feasible.

    """
    _check_args(x, x_adv, T.check_kernel_size(kernel_size), p, mass_tol)
    xs, ys = _to_numpy(x, x_adv)
    b, c, h, w = xs.shape
    r = kernel_size // 2
    plan = T.identity_plan(torch.from_numpy(xs), kernel_size).numpy()
    grid = _grid(h, w)

    def fill(i: int) -> bool:
        dist, flows = _solve_example(xs[i], ys[i], kernel_size, p, mass_tol)
        if flows is None:
            return False
        for ch, flow in enumerate(flows):
            if flow is None:
                continue  # nothing to move: the identity row stays
            d = grid[flow.dst] - grid[flow.src]
            plan[i, ch] = 0.0
            # Each (source, target) pair is one arc of the graph, so the assignment has no repeats.
            plan[i, ch, flow.src, (d[:, 0] + r) * kernel_size + (d[:, 1] + r)] = flow.mass
        return True

    ok = _map_examples(fill, b, workers)
    return torch.from_numpy(plan), torch.tensor(ok, dtype=torch.bool)
