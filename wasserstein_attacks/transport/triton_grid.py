"""Triton kernels of the full plan layout: column sums and the window gather (see ``grid``).

Both are gathers, one program per block of pixels and one lane per window offset: the column sum of
pixel ``j`` reads ``plan[j - d_o, o]`` for every offset ``d_o`` (no atomics, so the summation order is
fixed, unlike a scatter-add), and the gather reads ``image[i + d_o]``. Not differentiable: the
dispatch in ``grid`` sends tensors that require a gradient to the torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["column_sums_triton", "gather_neighbours_triton"]


@triton.jit
def _window(j, n, height, width, K: tl.constexpr, KP: tl.constexpr):
    """Offsets ``o``, their ``(dh, dw) [KP]``, pixel rows / columns ``[BP]``, lane mask ``[BP, KP]``."""
    o = tl.arange(0, KP)
    r: tl.constexpr = K // 2
    dh = o // K - r
    dw = o % K - r
    hw = j % (height * width)
    h = hw // width
    w = hw % width
    return o, dh, dw, h, w, (j < n)[:, None] & (o[None, :] < K * K)


@triton.jit
def _columns_kernel(PLAN, OUT, n, height, width, K: tl.constexpr, KP: tl.constexpr, BP: tl.constexpr):
    j = tl.program_id(0) * BP + tl.arange(0, BP)
    o, dh, dw, h, w, m = _window(j, n, height, width, K, KP)
    sh = h[:, None] - dh[None, :]
    sw = w[:, None] - dw[None, :]
    m = m & (sh >= 0) & (sh < height) & (sw >= 0) & (sw < width)
    src = j[:, None] - dh[None, :] * width - dw[None, :]
    v = tl.load(PLAN + tl.where(m, src, 0).to(tl.int64) * (K * K) + o[None, :], mask=m, other=0.0)
    tl.store(OUT + j, tl.sum(v, 1), mask=j < n)


@triton.jit
def _gather_kernel(IMG, OUT, n, height, width, K: tl.constexpr, KP: tl.constexpr, BP: tl.constexpr):
    i = tl.program_id(0) * BP + tl.arange(0, BP)
    o, dh, dw, h, w, m = _window(i, n, height, width, K, KP)
    th = h[:, None] + dh[None, :]
    tw = w[:, None] + dw[None, :]
    inside = m & (th >= 0) & (th < height) & (tw >= 0) & (tw < width)
    tgt = i[:, None] + dh[None, :] * width + dw[None, :]
    v = tl.load(IMG + tl.where(inside, tgt, 0), mask=inside, other=0.0)
    tl.store(OUT + i.to(tl.int64)[:, None] * (K * K) + o[None, :], v, mask=m)


_BP = 64


def column_sums_triton(plan: torch.Tensor, height: int, width: int, kernel_size: int) -> torch.Tensor:
    """``column_sums``: ``[B, C, H*W, k*k]`` -> ``[B, C, H, W]`` (one launch)."""
    b, c = plan.shape[:2]
    out = torch.empty(b, c, height, width, dtype=plan.dtype, device=plan.device)
    n = out.numel()
    if n:
        _columns_kernel[(triton.cdiv(n, _BP),)](
            plan.contiguous(), out, n, height, width,
            K=kernel_size, KP=triton.next_power_of_2(kernel_size**2), BP=_BP,
        )
    return out


def gather_neighbours_triton(image: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``gather_neighbours``: ``[B, C, H, W]`` -> ``[B, C, H*W, k*k]`` (one launch)."""
    b, c, h, w = image.shape
    out = torch.empty(b, c, h * w, kernel_size**2, dtype=image.dtype, device=image.device)
    n = image.numel()
    if n:
        _gather_kernel[(triton.cdiv(n, _BP),)](
            image.contiguous(), out, n, h, w,
            K=kernel_size, KP=triton.next_power_of_2(kernel_size**2), BP=_BP,
        )
    return out
