"""Natural transformations of images (shift, rotation, mass rescaling).

They give the "how big is a natural change in W" reference points of the report in
``wasserstein_attacks.defenses.training``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["shift", "rotate", "rescale_mass"]


def shift(images: torch.Tensor, dy: int = 0, dx: int = 1) -> torch.Tensor:
    """Translate ``[B, C, H, W]`` images by ``(dy, dx)`` whole pixels (down, right), filling with zeros.

    Mass that crosses the border is lost (the result then has less mass and is at infinite
    Wasserstein distance): check ``images.sum`` before and after, or use images with empty borders
    (MNIST digits sit in the central 20x20 box, so a one-pixel shift keeps their mass).
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, C, H, W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if (
        isinstance(dy, bool)
        or isinstance(dx, bool)
        or not isinstance(dy, int)
        or not isinstance(dx, int)
        or abs(dy) >= h
        or abs(dx) >= w
    ):
        raise ValueError(f"dy, dx must be ints with |dy| < H = {h} and |dx| < W = {w}, got {dy!r}, {dx!r}")
    out = torch.zeros_like(images)
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def rescale_mass(
    images: torch.Tensor, reference: torch.Tensor, box: bool = True, iters: int = 60
) -> torch.Tensor:
    """Scale each channel of ``images`` so its mass equals that of ``reference`` (``[B, C, H, W]`` both).

    With ``box=True`` the values saturate at 1: the factor ``s`` per channel solves
    ``sum(min(s * images, 1)) = sum(reference)`` (monotone in ``s``, found by bisection in float64), so the
    result stays in ``[0, 1]``. A channel with no mass is left at zero (its reference mass must be 0).
    Raises ``ValueError`` if a channel cannot hold the reference mass (fewer lit pixels than its mass).
    """
    if images.shape != reference.shape or images.dim() != 4:
        raise ValueError(
            f"images and reference must have the same shape [B, C, H, W], got "
            f"{tuple(images.shape)} and {tuple(reference.shape)}"
        )
    y = images.detach().to(torch.float64)
    target = reference.detach().to(torch.float64).sum(dim=(2, 3))
    mass = y.sum(dim=(2, 3))
    if ((mass <= 0) & (target > 0)).any():
        raise ValueError("a channel of images has no mass but its reference has some: cannot rescale")
    s_plain = target / mass.clamp_min(1e-300)
    if not box:
        return (y * s_plain[..., None, None]).to(images.dtype)
    capacity = (y > 0).sum(dim=(2, 3)).to(torch.float64)
    if (target > capacity * (1 + 1e-12)).any():
        raise ValueError("reference mass exceeds what the lit pixels of images can hold at value <= 1")
    # Bracket: at s_plain the unclipped sum is the target, clipping only lowers it, so s >= s_plain;
    # at s = 1 / min positive value every lit pixel saturates, which reaches the capacity >= target.
    ymin = torch.where(y > 0, y, torch.inf).amin(dim=(2, 3))
    lo, hi = s_plain, torch.maximum(s_plain, 1 / ymin.clamp_min(1e-300))
    for _ in range(iters):
        mid = (lo + hi) / 2
        over = (y * mid[..., None, None]).clamp_max(1).sum(dim=(2, 3)) > target
        hi = torch.where(over, mid, hi)
        lo = torch.where(over, lo, mid)
    out = (y * lo[..., None, None]).clamp_max(1)
    # Remove the bisection's last residual exactly on the unsaturated pixels.
    free = out < 1
    resid = target - out.sum(dim=(2, 3))
    free_mass = (out * free).sum(dim=(2, 3))
    out = torch.where(free, out * (1 + resid / free_mass.clamp_min(1e-300))[..., None, None], out).clamp(0, 1)
    return torch.where((mass > 0)[..., None, None], out, torch.zeros_like(out)).to(images.dtype)


def rotate(images: torch.Tensor, degrees: float, rescale: bool = True) -> torch.Tensor:
    """Rotate ``[B, C, H, W]`` images counter-clockwise (as displayed, row 0 on top) about their centre.

    Bilinear interpolation (``grid_sample``, zeros outside). Interpolation and the corners change the
    mass, so with ``rescale=True`` (default) each channel's mass is rescaled to the original's, values
    saturating at 1 (``rescale_mass``): the result then has finite Wasserstein distance to the input.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor [B, C, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if not (isinstance(degrees, (int, float)) and math.isfinite(degrees)):
        raise ValueError(f"degrees must be a finite number, got {degrees!r}")
    b, _, h, w = images.shape
    t = math.radians(degrees)
    cos, sin = math.cos(t), math.sin(t)
    # affine_grid maps output to input coordinates (x right, y down, in [-1, 1]); rotating the content
    # counter-clockwise on screen means sampling the input at the output point rotated clockwise.
    # The aspect terms keep the rotation rigid in pixels for non-square images.
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=images.dtype)
    grid = F.affine_grid(theta.expand(b, 2, 3).to(images.device), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
    return rescale_mass(out, images) if rescale else out
