"""Flows on the 4-connected pixel grid: the space in which Levine & Feizi (AISTATS 2020) smooth.

A flow on an ``H x W`` image assigns a signed amount of mass to every edge of the 4-connected grid,
per channel: ``H * (W - 1)`` horizontal edges (pixel ``(h, w)`` -> ``(h, w + 1)``) followed by
``(H - 1) * W`` vertical edges (``(h, w)`` -> ``(h + 1, w)``), both row-major. A positive value moves
that much mass right (horizontal) or down (vertical). Flows are stored as ``[..., C, E]`` tensors with
``E = num_edges(H, W)``.

Applying a flow adds its divergence (net inflow per pixel) to the image, so every channel keeps its
mass exactly, whatever the flow. The fact the certificate rests on (Levine & Feizi, section 3; it is
the classical min-cost-flow form of W1 on a graph): for images of equal per-channel mass,

    min { ||f||_1 : x' = x + div(f) } = W1 with the Manhattan ground cost |dh| + |dw| (no window),

in units of mass times pixels. The package's cost is Euclidean, ``||d||_2 >= ||d||_1 / sqrt(2)``, and a
window only removes plans, so ``W_threat(x, x') * N(x) >= min ||f||_1 / sqrt(2)`` (``p = 1``).
``min_flow_l1`` computes the left-hand side exactly (a small LP) for tests and checks.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["num_edges", "divergence", "apply_flow", "min_flow_l1"]


def num_edges(height: int, width: int) -> int:
    """Edges of the 4-connected ``height x width`` grid: ``H (W - 1) + (H - 1) W``."""
    return height * (width - 1) + (height - 1) * width


def divergence(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Net inflow per pixel of ``flow [..., E]`` as ``[..., H, W]`` (same dtype and device).

    Every unit on an edge leaves its source pixel and enters its target pixel, so the result sums to
    zero over each ``H x W`` image: a channel's mass never changes.
    """
    e = num_edges(height, width)
    if flow.shape[-1] != e:
        raise ValueError(
            f"flow must have {e} edges in its last dimension for {height}x{width}, got {flow.shape[-1]}"
        )
    lead = flow.shape[:-1]
    nh = height * (width - 1)
    hor = flow[..., :nh].reshape(*lead, height, width - 1)
    ver = flow[..., nh:].reshape(*lead, height - 1, width)
    out = flow.new_zeros(*lead, height, width)
    out[..., :, :-1] -= hor
    out[..., :, 1:] += hor
    out[..., :-1, :] -= ver
    out[..., 1:, :] += ver
    return out


def apply_flow(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Return ``images [..., C, H, W] + div(flow [..., C, E])``: mass moved along the grid's edges.

    No clipping: the result may leave ``[0, 1]``. Levine & Feizi feed it to the base classifier as is;
    clipping would be allowed (any fixed function of the noised image is part of the base classifier)
    but would make the map non-linear for no gain.
    """
    return images + divergence(flow.to(images.dtype), images.shape[-2], images.shape[-1])


def _incidence(height: int, width: int) -> np.ndarray:
    """Dense ``[H*W, E]`` matrix ``A`` with ``A @ f = div(f)`` (float64), for the small exact LP."""
    e = num_edges(height, width)
    return divergence(torch.eye(e, dtype=torch.float64), height, width).reshape(e, -1).T.numpy()


def min_flow_l1(x: torch.Tensor, x_prime: torch.Tensor) -> torch.Tensor:
    """Exact ``min ||f||_1`` over flows with ``x' = x + div(f)``: float64 ``[B]`` (mass x pixels).

    One linear program per channel (``f = f+ - f-``, HiGHS via SciPy), summed over channels; ``+inf``
    where a channel's masses differ (no flow conserves them). Small images only (tests, checks).

    Args:
        x: ``[B, C, H, W]`` images.
        x_prime: ``[B, C, H, W]`` images.

    """
    from scipy.optimize import linprog

    if x.dim() != 4 or x.shape != x_prime.shape:
        raise ValueError(
            f"x and x_prime must both be [B, C, H, W] of one shape, got {tuple(x.shape)}, "
            f"{tuple(x_prime.shape)}"
        )
    b, c, h, w = x.shape
    a = _incidence(h, w)
    a2 = np.hstack([a, -a])
    cost = np.ones(a2.shape[1])
    diff = (x_prime - x).detach().cpu().to(torch.float64).reshape(b, c, h * w).numpy()
    out = torch.zeros(b, dtype=torch.float64)
    for i in range(b):
        for ch in range(c):
            if abs(diff[i, ch].sum()) > 1e-9 * max(1.0, np.abs(diff[i, ch]).sum()):
                out[i] = float("inf")
                break
            # Equality rows are rank-deficient by one (they sum to zero); HiGHS handles that.
            res = linprog(cost, A_eq=a2, b_eq=diff[i, ch], bounds=(0, None), method="highs")
            if res.status != 0:
                raise RuntimeError(f"min_flow_l1: the LP failed on example {i}: {res.message}")
            out[i] += res.fun
    return out
