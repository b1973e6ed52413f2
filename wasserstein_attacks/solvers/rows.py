"""Compact plan rows: the rows of a batch's local plans that carry mass, and per-example budgets.

Only rows with mass (``x_i > 0``; about a fifth of an MNIST image) can move anything, so every solver
works on those rows alone, as an ``[M, k*k]`` tensor (``PlanRows``). This is the geometry layer of
the solvers: the problem (a budget ``eps * N`` per example) and the solvers build on it.
"""

from __future__ import annotations

import math

import torch

from .. import transport as T
from .._kernels import use_triton
from ..threat import WassersteinBall, check_images

__all__ = [
    "PlanRows",
    "public_rows",
    "check_solver",
    "cost_budget",
    "example_max",
    "shrink_to_budget",
    "toward_identity",
]


class PlanRows:
    """The rows of a batch's plans that carry mass, as a compact ``[M, k*k]`` view.

    Attributes:
        index: long ``[M]`` flat row index into ``B*C*H*W`` (row ``i`` of channel ``c`` of example ``b``),
            ascending.
        mass: ``[M]`` the row's mass ``x_i`` (> 0).
        example: long ``[M]`` example of each row (non-decreasing).
        valid: bool ``[M, k*k]`` entries whose target lies inside the image.
        target: long ``[M, k*k]`` flat pixel index (into ``B*C*H*W``) each entry sends to (the row itself
            where invalid; such entries are kept at zero).
        cost: ``[k*k]`` ground cost of each offset (pixels ** p).
        total: ``[B]`` the images' masses ``N``.

    """

    def __init__(self, x: torch.Tensor, kernel_size: int, p: int):
        b, c, h, w = x.shape
        flat = x.reshape(-1)
        index = (flat > 0).nonzero()[:, 0]
        valid = T.valid_mask(h, w, kernel_size, device=x.device)[index % (h * w)]
        off = T.window_offsets(kernel_size).to(x.device)
        target = torch.where(valid, index[:, None] + (off[:, 0] * w + off[:, 1]), index[:, None])
        example = torch.div(index, c * h * w, rounding_mode="floor")
        cost = T.offset_costs(kernel_size, p, dtype=x.dtype, device=x.device)
        self._set((b, c, h, w), index, flat[index], example, valid, target, cost, x.reshape(b, -1).sum(1))

    def _set(self, shape, index, mass, example, valid, target, cost, total):
        self.shape, self.index, self.mass, self.example = shape, index, mass, example
        self.valid, self.target, self.cost, self.total = valid, target, cost, total
        # Flat index for index_select / scatter_add_: on CPU 3-4x faster than advanced indexing and
        # index_add_ on [M*k*k] entries, with the same values (a gather; the same serial order of sums).
        self._target_flat = target.reshape(-1)
        self.batch, self.kk = shape[0], cost.shape[0]
        # Float copies of the mask: multiplying by a bool tensor (type promotion) is ~6x slower on CPU.
        self.validf = valid.to(mass.dtype)
        self.offwindow = torch.zeros_like(self.validf).masked_fill_(~valid, -math.inf)  # 0 / -inf
        self._spread = None
        self._levels_complete = None

    @property
    def levels_complete(self) -> bool:
        """Whether every row has an in-image entry at each cost level (cached).

        True for 5x5 windows on images of at least 5x5 pixels; otherwise the oracle must guard levels
        with no entry at all.
        """
        if self._levels_complete is None:
            costs = self.cost.tolist()
            member = torch.tensor([[c == v for c in costs] for v in sorted(set(costs))],
                                  dtype=self.validf.dtype, device=self.validf.device)  # [L, k*k]
            self._levels_complete = bool(((self.validf @ member.T) > 0).all())
        return self._levels_complete

    @property
    def spread(self) -> torch.Tensor:
        """``sum_i x_i sum_j C_ij`` over each example's window entries, ``[B]`` (cached)."""
        if self._spread is None:
            self._spread = self.per_example(self.mass * (self.validf @ self.cost))
        return self._spread

    def subset(self, examples: torch.Tensor) -> tuple[PlanRows, torch.Tensor]:
        """Select the rows of ``examples`` (ascending example indices ``[b]``), renumbered ``0..b-1``.

        Returns ``(rows, selection)`` where ``selection [M']`` picks those rows out of this view.
        """
        if examples.numel() == self.batch:
            return self, torch.arange(self.index.shape[0], device=self.index.device)
        lookup = torch.full((self.batch,), -1, dtype=torch.long, device=self.index.device)
        lookup[examples] = torch.arange(examples.numel(), device=self.index.device)
        new = lookup[self.example]
        sel = (new >= 0).nonzero()[:, 0]
        new = new[sel]
        shift = ((new - self.example[sel]) * (self.size // self.batch))[:, None]
        sub = PlanRows.__new__(PlanRows)
        sub._set(
            (examples.numel(), *self.shape[1:]), self.index[sel] + shift[:, 0], self.mass[sel], new,
            self.valid[sel], self.target[sel] + shift, self.cost, self.total[examples],
        )
        return sub, sel

    @property
    def size(self) -> int:
        """Number of pixels ``B*C*H*W``."""
        return math.prod(self.shape)

    def gather(self, plan: torch.Tensor) -> torch.Tensor:
        """Rows ``[M, k*k]`` of a full plan ``[B, C, H*W, k*k]`` (entries off the window zeroed)."""
        return plan.reshape(-1, self.kk)[self.index] * self.validf

    def scatter(self, rows: torch.Tensor) -> torch.Tensor:
        """Full plan ``[B, C, H*W, k*k]`` with these rows and zero elsewhere."""
        b, c, h, w = self.shape
        out = rows.new_zeros(b * c * h * w, self.kk)
        out[self.index] = rows
        return out.reshape(b, c, h * w, self.kk)

    def per_example(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of per-row ``values [M]`` over each example: ``[B]``."""
        return values.new_zeros(self.batch).index_add_(0, self.example, values)

    def columns(self, rows: torch.Tensor) -> torch.Tensor:
        """Column sums of the plan given by ``rows`` (the image it produces), flat ``[B*C*H*W]``."""
        # On the device: a gather kernel (no atomics, deterministic); the code below is the reference.
        if not (rows.requires_grad and torch.is_grad_enabled()) and use_triton(rows):
            from .triton_capacity import columns_rows_triton

            return columns_rows_triton(self, rows)
        flat = (rows * self.validf).reshape(-1)
        return rows.new_zeros(self.size).scatter_add_(0, self._target_flat, flat)

    def image(self, rows: torch.Tensor) -> torch.Tensor:
        """Return the image ``[B, C, H, W]`` that the plan given by ``rows`` produces."""
        return self.columns(rows).reshape(self.shape)

    def at_targets(self, pixels: torch.Tensor) -> torch.Tensor:
        """Value of a pixel map (``[B, C, H, W]`` or flat) at each entry's target: ``[M, k*k]``.

        With an image gradient this is the plan gradient (``column_sums``' adjoint) restricted to the rows.
        """
        return pixels.reshape(-1).index_select(0, self._target_flat).view(self.target.shape) * self.validf

    def identity(self) -> torch.Tensor:
        """Rows of the identity plan: all mass on "stay"."""
        out = self.mass.new_zeros(self.index.shape[0], self.kk)
        out[:, self.kk // 2] = self.mass
        return out

    def transport_cost(self, rows: torch.Tensor) -> torch.Tensor:
        """Unnormalised cost ``sum(P * C)`` per example ``[B]``."""
        return self.per_example(rows @ self.cost)


def public_rows(values: torch.Tensor, x: torch.Tensor, threat: WassersteinBall, name: str):
    """Validate a public kernel's inputs; return its compact rows and per-example budgets ``eps * N``."""
    if not isinstance(threat, WassersteinBall) or threat.kernel_size is None:
        raise ValueError("threat must be a WassersteinBall with an odd kernel_size (local plans)")
    check_images(x, "x")
    b, c, h, w = x.shape
    shape = (b, c, h * w, threat.kernel_size**2)
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != shape or not values.is_floating_point():
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"{name} must be a float tensor [B, C, H*W, k*k] = {shape}, got {got}")
    rows = PlanRows(x, threat.kernel_size, threat.p)
    return rows, cost_budget(rows, threat.eps_for(b).to(x.device))


def check_solver(solver: str) -> str:
    """Return ``solver`` if it is a multiplier search of ``multiplier_search``."""
    if solver not in ("bisection", "newton"):
        raise ValueError(f"solver must be 'bisection' (the authors') or 'newton' (ours), got {solver!r}")
    return solver


def cost_budget(rows: PlanRows, eps: torch.Tensor) -> torch.Tensor:
    """Cost allowed per example, ``eps * N`` (unnormalised): ``[B]``."""
    return eps.to(rows.mass.dtype) * rows.total


def example_max(rows: PlanRows, values: torch.Tensor) -> torch.Tensor:
    """Per-example maximum of per-row ``values [M]`` (0 for examples without rows): ``[B]``."""
    out = values.new_zeros(rows.batch)
    return out.scatter_reduce(0, rows.example, values, reduce="amax", include_self=True)


def shrink_to_budget(rows: PlanRows, S: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Move rows ``S`` back toward the identity so that each example's cost is at most ``budget``."""
    cost = rows.transport_cost(S)
    scale = torch.where(cost > budget, budget / cost.clamp_min(1e-30), torch.ones_like(cost)).clamp(0, 1)
    if bool((scale == 1).all()):
        return S
    return toward_identity(S, scale[rows.example], rows.mass)


def toward_identity(plan: torch.Tensor, scale: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """``I + s (P - I)`` for plans ``[..., k*k]`` with rows summing to ``mass [...]``, ``s = scale [...]``.

    The one "shrink toward the identity plan" of the package (cost scales by ``s``, row sums are kept),
    computed as ``s P + (1 - s) I`` with ``I`` the rows' mass on "stay" alone: no identity plan is built.
    """
    out = plan * scale[..., None]
    out[..., plan.shape[-1] // 2] += (1 - scale) * mass
    return out
