"""The local transport-plan layout and its kernels (the hot operations every attack uses).

A local plan for a batch is a tensor ``[B, C, H*W, k*k]`` (``threat/threat_model.md``):
entry ``[b, c, i, o]`` is the mass that pixel ``i = h*W + w`` of channel ``c`` sends to pixel
``(h + dh, w + dw)``, where the offsets ``(dh, dw)`` run row-major over ``[-r, r] x [-r, r]``
(``o = (dh + r) * k + (dw + r)``, ``r = k // 2``; the centre ``o = k*k // 2`` is "stay").
Entries whose target falls outside the image must be zero.

Row sums give the source image, column sums (scattered back to the targets) the image the plan
produces. Column sums are exactly ``torch.nn.functional.fold`` of the plan (the adjoint of
``unfold``): fold's block position ``(kh, kw)`` maps pixel ``(h, w)`` to ``(h - r + kh, w - r + kw)``,
which is the offset order above, and it drops what falls into the padding.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .._kernels import use_triton

__all__ = [
    "check_kernel_size",
    "check_p",
    "squared_to_cost",
    "window_offsets",
    "offset_costs",
    "valid_mask",
    "stay_index",
    "identity_plan",
    "row_sums",
    "column_sums",
    "plan_cost",
    "gather_neighbours",
    "window_targets",
]


def check_kernel_size(kernel_size: int, name: str = "kernel_size") -> int:
    """Return ``kernel_size`` if it is an odd int >= 3, else raise ``ValueError`` naming it."""
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 3
        or kernel_size % 2 == 0
    ):
        raise ValueError(f"{name} must be an odd integer >= 3 for local plans, got {kernel_size!r}")
    return kernel_size


@functools.lru_cache(maxsize=64)
def _offsets_cpu(kernel_size: int) -> torch.Tensor:
    r = kernel_size // 2
    d = torch.arange(-r, r + 1)
    dh, dw = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([dh.reshape(-1), dw.reshape(-1)], dim=1)


def window_offsets(kernel_size: int) -> torch.Tensor:
    """Offsets ``(dh, dw)`` of the window in plan order, long ``[k*k, 2]``."""
    return _offsets_cpu(check_kernel_size(kernel_size)).clone()


def stay_index(kernel_size: int) -> int:
    """Index ``o`` of the zero offset ("stay") in the plan layout: ``k*k // 2``."""
    return check_kernel_size(kernel_size) ** 2 // 2


def check_p(p: int, name: str = "p") -> int:
    """Return ``p`` if it is 1 or 2 (the threat model's ground-cost exponents), else raise ``ValueError``."""
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"{name} must be 1 or 2 (ground cost ||d||_2 ** p in pixels), got {p!r}")
    return int(p)


def squared_to_cost(d2, p: int):
    """Ground cost ``||d||_2 ** p`` from the squared pixel distance ``d2`` (tensor or numpy array).

    ``p = 2`` returns ``d2`` itself so that integer distances stay exact (``sqrt(2) ** 2`` is not 2
    in floating point).
    """
    return d2 if check_p(p) == 2 else d2**0.5


def offset_costs(kernel_size: int, p: int = 1, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Ground cost of each offset, ``||(dh, dw)||_2 ** p`` in pixel units, shape ``[k*k]``."""
    off = _offsets_cpu(check_kernel_size(kernel_size)).to(torch.float64)
    c = squared_to_cost(off.pow(2).sum(1), p)
    return c.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _valid_cpu(height: int, width: int, kernel_size: int) -> torch.Tensor:
    off = _offsets_cpu(kernel_size)
    h = torch.arange(height).repeat_interleave(width)[:, None]
    w = torch.arange(width).repeat(height)[:, None]
    th, tw = h + off[:, 0], w + off[:, 1]
    return (th >= 0) & (th < height) & (tw >= 0) & (tw < width)


def valid_mask(height: int, width: int, kernel_size: int, *, device=None) -> torch.Tensor:
    """Bool ``[H*W, k*k]``: True where pixel ``i`` moved by offset ``o`` stays inside the image."""
    return _valid_cpu(height, width, check_kernel_size(kernel_size)).to(device, copy=True)


@functools.lru_cache(maxsize=64)
def _targets_cpu(height: int, width: int, kernel_size: int) -> torch.Tensor:
    off = _offsets_cpu(kernel_size)
    target = torch.arange(height * width)[:, None] + off[:, 0] * width + off[:, 1]
    return torch.where(_valid_cpu(height, width, kernel_size), target, -1)


def window_targets(height: int, width: int, kernel_size: int, *, device=None) -> torch.Tensor:
    """Target pixel of each plan entry, long ``[H*W, k*k]``: ``i + dh*W + dw``, or -1 outside the image."""
    return _targets_cpu(height, width, check_kernel_size(kernel_size)).to(device, copy=True)


def identity_plan(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Build the plan that moves nothing: all of ``x`` on "stay". ``x [B,C,H,W]`` -> ``[B,C,H*W,k*k]``."""
    b, c, h, w = x.shape
    kk = check_kernel_size(kernel_size) ** 2
    plan = x.new_zeros(b, c, h * w, kk)
    plan[..., kk // 2] = x.reshape(b, c, h * w)
    return plan


def row_sums(plan: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Mass each pixel sends: ``[B,C,H*W,k*k]`` -> source image ``[B,C,H,W]``."""
    b, c = plan.shape[:2]
    return plan.sum(-1).reshape(b, c, height, width)


@functools.lru_cache(maxsize=64)
def _scatter_index_cpu(height: int, width: int, kernel_size: int) -> torch.Tensor:
    """Target of every plan entry, flat ``[H*W*k*k]``; ``H*W`` (a discard slot) outside the image."""
    t = _targets_cpu(height, width, kernel_size)
    return torch.where(t < 0, height * width, t).reshape(-1)


def column_sums(plan: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Mass each pixel receives: ``[B,C,H*W,k*k]`` -> produced image ``[B,C,H,W]``.

    Mass on out-of-image entries is dropped (such entries must be zero in a valid plan).
    Differentiable; its adjoint is ``gather_neighbours``.
    """
    b, c, hw, kk = plan.shape
    k = math.isqrt(kk)
    if hw != height * width or k * k != kk:
        raise ValueError(f"plan must have shape [B, C, {height * width}, k*k], got {tuple(plan.shape)}")
    check_kernel_size(k, "the plan's window (sqrt of its last dimension)")
    if not (plan.requires_grad and torch.is_grad_enabled()) and use_triton(plan):
        from .triton_grid import column_sums_triton  # one gather kernel; the code below is the reference

        return column_sums_triton(plan, height, width, k)
    if plan.device.type == "cpu":
        # A scatter-add along precomputed targets is ~20x faster than F.fold on CPU; on GPUs fold
        # stays, as its scatter-add alternative uses atomics (summation order not reproducible).
        index = _scatter_index_cpu(height, width, k)
        out = plan.new_zeros(b * c, hw + 1).index_add_(1, index, plan.reshape(b * c, hw * kk))
        return out[:, :hw].reshape(b, c, height, width)
    return _column_sums_fold(plan, height, width)


def _column_sums_fold(plan: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, c, hw, kk = plan.shape
    k = math.isqrt(kk)
    cols = plan.reshape(b * c, hw, kk).transpose(1, 2)
    out = F.fold(cols, output_size=(height, width), kernel_size=k, padding=k // 2)
    return out.reshape(b, c, height, width)


def gather_neighbours(image: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Value of ``image`` at each target: ``[B,C,H,W]`` -> ``[B,C,H*W,k*k]`` (zero outside the image).

    This is the adjoint of ``column_sums``: the gradient of a loss of the produced image with
    respect to the plan is ``gather_neighbours(grad_image)``.
    """
    b, c, h, w = image.shape
    k = check_kernel_size(kernel_size)
    if not (image.requires_grad and torch.is_grad_enabled()) and use_triton(image):
        from .triton_grid import gather_neighbours_triton  # one kernel; the code below is the reference

        return gather_neighbours_triton(image, k)
    cols = F.unfold(image.reshape(b * c, 1, h, w), kernel_size=k, padding=k // 2)  # [BC, kk, HW]
    return cols.transpose(1, 2).reshape(b, c, h * w, k * k)


def plan_cost(plan: torch.Tensor, p: int = 1, mass: torch.Tensor | None = None) -> torch.Tensor:
    """Transport cost per example: ``sum(P * c) / N``, shape ``[B]``, in units of ``eps``.

    ``mass`` is ``N`` per example ``[B]`` (the source image's total over channels); by default the
    plan's own total. Examples with ``N = 0`` get cost 0 (nothing moves). Differentiable.
    """
    b, kk = plan.shape[0], plan.shape[-1]
    cost = offset_costs(math.isqrt(kk), p, dtype=plan.dtype, device=plan.device)
    # A matrix-vector product instead of ``(plan * cost).sum()``: no plan-sized temporary.
    total = (plan.reshape(-1, kk) @ cost).reshape(b, -1).sum(1)
    if mass is None:
        mass = plan.reshape(b, -1).sum(1)
    mass = mass.to(total.dtype)
    return torch.where(
        mass > 0, total / mass.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total)
    )
