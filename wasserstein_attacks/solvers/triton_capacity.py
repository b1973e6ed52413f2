"""Triton kernels of the local box repair (``fit_box``) on compact plan rows.

One round of ``return_overflow`` is two launches: a pixel pass (each pixel gathers the
mass its window sends it, from the rows that carry mass, through a pixel -> row map: deterministic,
no atomics) that writes each pixel's keep factor and raises the round's flag if any pixel overflows;
then a row pass that applies the keep factors of the targets and returns the rest to "stay". Rounds
are gated on the device: a round whose predecessor found no overflow does nothing. The host reads the
flags once every ``check_every`` rounds to decide whether to launch more: the one synchronisation left
(how many rounds a cascade needs is data-dependent; typically one check per call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

if TYPE_CHECKING:  # annotations only: rows.py dispatches to this module, which must not import it back
    from .rows import PlanRows

__all__ = ["row_map", "columns_rows_triton", "fit_box_triton"]


@triton.jit
def _pixel_kernel(P, ROWMAP, KEEP, Y_OUT, FLAGS, rnd, n_pix, height, width, slack, margin,
                  REPAIR: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, BP: tl.constexpr):
    """Column sum ``Y_j`` of each pixel (into ``Y_OUT``); with ``REPAIR`` its keep factor and the flag."""
    j = tl.program_id(0) * BP + tl.arange(0, BP)
    o = tl.arange(0, KP)
    kk: tl.constexpr = K * K
    r: tl.constexpr = K // 2
    jm = j < n_pix
    if REPAIR:  # a round after one without overflow does nothing (decided on the device)
        # FLAGS[0] = 1: the first round always runs. (A vector load of the one flag: the interpreter
        # mis-types a scalar bool in ``&``.)
        jm = jm & (tl.load(FLAGS + rnd + j * 0) > 0)
    hw = j % (height * width)
    h = hw // width
    w = hw % width
    dh = o // K - r
    dw = o % K - r
    sh = h[:, None] - dh[None, :]  # the sender of entry o that lands on pixel j
    sw = w[:, None] - dw[None, :]
    inside = jm[:, None] & (o[None, :] < kk) & (sh >= 0) & (sh < height) & (sw >= 0) & (sw < width)
    src = j[:, None] - dh[None, :] * width - dw[None, :]
    row = tl.load(ROWMAP + tl.where(inside, src, 0), mask=inside, other=-1)
    has = inside & (row >= 0)
    val = tl.load(P + row.to(tl.int64) * kk + o[None, :], mask=has, other=0.0)
    y = tl.sum(val, 1)
    tl.store(Y_OUT + j, y, mask=jm)
    if REPAIR:
        own = tl.sum(tl.where(o[None, :] == kk // 2, val, 0.0), 1)
        over = jm & (y > 1 + slack)
        inflow = tl.maximum(y - own, 1e-30)
        keep = tl.where(over, tl.minimum(tl.maximum(1 - (y - 1 + margin) / inflow, 0.0), 1.0), 1.0)
        tl.store(KEEP + j, keep, mask=jm)
        tl.atomic_max(FLAGS + rnd + 1, tl.max(tl.where(over, 1, 0), 0))


@triton.jit
def _row_kernel(P, KEEP, TARGET, VALID, MASS, FLAGS, rnd, m_rows, KK: tl.constexpr, KP: tl.constexpr,
                BR: tl.constexpr):
    """Scale entries by their target's keep factor, the rest back to "stay" (if the round overflowed)."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    o = tl.arange(0, KP)
    rm = (r < m_rows) & (tl.load(FLAGS + rnd + 1 + r * 0) > 0)
    m2 = rm[:, None] & (o[None, :] < KK)
    off = r.to(tl.int64)[:, None] * KK + o[None, :]
    p = tl.load(P + off, mask=m2, other=0.0)
    ok = m2 & (tl.load(VALID + off, mask=m2, other=0.0) > 0)
    tgt = tl.load(TARGET + off, mask=ok, other=0)
    factor = tl.where(ok, tl.load(KEEP + tgt, mask=ok, other=0.0), 0.0)
    stay = o[None, :] == KK // 2
    factor = tl.where(stay, 1.0, factor)
    p = p * factor
    mass = tl.load(MASS + r, mask=rm, other=0.0)
    p = tl.where(stay, p + (mass - tl.sum(p, 1))[:, None], p)
    tl.store(P + off, p, mask=m2)


def row_map(rows: PlanRows) -> torch.Tensor:
    """Compact row of each pixel, int32 ``[B*C*H*W]`` (-1 for pixels without mass); cached on ``rows``."""
    cached = getattr(rows, "_triton_row_map", None)
    if cached is None:
        cached = torch.full((rows.size,), -1, dtype=torch.int32, device=rows.index.device)
        cached[rows.index] = torch.arange(rows.index.shape[0], dtype=torch.int32, device=rows.index.device)
        rows._triton_row_map = cached
    return cached


def _pixels(rows, P, rnd, keep, y, flags, slack, margin, repair):
    _, _, h, w = rows.shape
    k = int(round(rows.kk**0.5))
    bp = 64
    _pixel_kernel[(triton.cdiv(rows.size, bp),)](
        P, row_map(rows), keep, y, flags, rnd, rows.size, h, w, slack, margin,
        REPAIR=repair, K=k, KP=triton.next_power_of_2(rows.kk), BP=bp,
    )


def columns_rows_triton(rows: PlanRows, P: torch.Tensor) -> torch.Tensor:
    """``PlanRows.columns`` by gathering (no atomics): flat ``[B*C*H*W]`` column sums of rows ``P``."""
    P = P.contiguous()
    y = torch.empty(rows.size, dtype=P.dtype, device=P.device)
    flags = torch.zeros(1, dtype=torch.int32, device=P.device)
    _pixels(rows, P, 0, y, y, flags, 0.0, 0.0, False)
    return y


def fit_box_triton(rows: PlanRows, P: torch.Tensor, max_rounds: int = 100, check_every: int = 4):
    """``fit_box`` on the device: ``P [M, k*k]`` -> repaired rows (new tensor).

    Same rounds as the reference; the host looks at the flags every ``check_every`` rounds only.
    """
    Q = P.contiguous().clone()
    if Q.shape[0] == 0:
        return Q
    eps = torch.finfo(Q.dtype).eps
    slack, margin = 16 * eps, 64 * eps  # as capacity.overflow_slack and return_overflow
    keep = torch.empty(rows.size, dtype=Q.dtype, device=Q.device)
    y = torch.empty_like(keep)
    flags = torch.zeros(max_rounds + 1, dtype=torch.int32, device=Q.device)
    flags[0] = 1  # flags[r + 1]: round r found overflow
    kp = triton.next_power_of_2(rows.kk)
    br = max(1, 2048 // kp)
    target, valid = rows.target.contiguous(), rows.validf.contiguous()
    for rnd in range(max_rounds):
        _pixels(rows, Q, rnd, keep, y, flags, slack, margin, True)
        _row_kernel[(triton.cdiv(Q.shape[0], br),)](
            Q, keep, target, valid, rows.mass.contiguous(), flags, rnd, Q.shape[0], KK=rows.kk, KP=kp, BR=br,
        )
        # Host decision: launch more rounds? (one read every ``check_every`` rounds)
        if (rnd + 1) % check_every == 0 and not bool(flags[rnd + 1]):
            break
    return Q
