"""The Wasserstein threat model ("W1, local 5x5, box [0,1]"), implemented once.

See ``threat_model.md`` beside this file (also a page of the documentation) for the definition. In
short, for images ``x, x'`` of shape ``[C, H, W]`` with values in ``[0, 1]``::

    W(x, x') = min_P sum(P * c) / N(x),   N(x) = sum(x) over all channels,

over non-negative plans supported on ``k x k`` windows, one block per channel, with row sums ``x``
and column sums ``x'`` (up to the mass tolerance below); ``c = ||d||_2 ** p`` in pixels.
``eps = 0.1`` is moving 10 % of the mass by one pixel (Hu et al. report ``eps * C*H*W``: convert
with ``WassersteinBall.from_hu_units``).

The plan certificate (``WassersteinBall.certify``) is sound for any plan, not only the
project's own. It evaluates the clamped plan ``Q = max(P, 0)`` (entries below ``-eps_dtype``, the
plan dtype's machine epsilon, are refused outright; below that is float rounding) and measures the
TOTAL L1 mismatches, summed over every pixel and channel: ``R = |rows(Q) - x|_1`` (every entry),
``O`` = mass on out-of-image entries and ``S = |cols(Q) - x_adv|_1``; it requires
``R + O + S <= mass_tol * N`` and certifies the cost ``(sum(Q * c) + c_max * (R + O + S)) / N`` with
``c_max = (sqrt(2) * (k // 2)) ** p``, the window's dearest move. Why this bounds the exact distance:
scaling down the rows of ``Q`` that send too much, dropping the out-of-image entries and dropping
the excess of the columns that receive too much (relative to ``x_adv`` rescaled to the mass of
``x``, as the exact solver does) gives a plan ``F <= Q`` (so ``sum(F * c) <= sum(Q * c)``) whose
rows are at most ``x`` and columns at most the rescaled ``x_adv``. It leaves
``u_c = mass_c(x) - mass_c(F)`` of channel ``c`` unmatched on each side, and
``u_c <= R_c + O_c + S_c``: writing ``R^+ / R^-`` (``S^+ / S^-``) for the excess and the shortfall
of the rows (columns), ``x_adv`` scaled up gives ``u_c <= R^- + O + S^+``; scaled down, the column
excess grows by ``mass_c(x_adv) - mass_c(x) = S^- - S^+ - O + R^+ - R^-`` and
``u_c <= R^+ + S^-``. Summed over the channels, ``u <= R + O + S <= mass_tol * N``. The exact
referee (``exact``) lets up to ``mass_tol * N`` in total over the channels stay unmatched at
``c_max`` per unit, whether or not an exact plan exists; so the exact distance is at most
``(sum(F * c) + c_max * u) / N <= (sum(Q * c) + c_max * (R + O + S)) / N``, the certified cost.
The float64 sums add only rounding (relative ~1e-15).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch

from .. import transport as T
from .exact import exact_distance

__all__ = ["WassersteinBall", "Certificate", "check_images", "check_labels"]


def check_images(
    images: torch.Tensor, name: str = "images", box: tuple[float, float] | None = (0.0, 1.0)
) -> None:
    """Raise ``ValueError`` naming ``name`` unless it is a finite float ``[B, C, H, W]`` tensor in the box."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape [B, C, H, W] (rank 4), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}"
        )
    if images.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf")
    if box is not None:
        lo, hi = box
        mn, mx = images.min().item(), images.max().item()
        if mn < lo or mx > hi:
            raise ValueError(
                f"{name} must lie in [{lo}, {hi}] (pixel space, before normalization); got [{mn}, {mx}]"
            )


def check_labels(
    labels: torch.Tensor, batch: int, name: str = "labels", num_classes: int | None = None
) -> None:
    """Raise ``ValueError`` unless ``labels`` is an integer ``[B]`` tensor of class indices.

    Indices must be ``>= 0`` (an "ignore" label such as -100 is not a class), and ``< num_classes`` when
    the number of classes (the model's logits) is known.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != batch:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor of shape [{batch}], got {shape}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
        bad = low if low < 0 else high
        raise ValueError(f"{name} must be class indices in {bound}, got {bad}")


# Plan entries per chunk in certify (8 MiB of float64): no plan-sized buffer is ever allocated (page
# faults on fresh large buffers cost more than the arithmetic), and few enough chunks that per-op
# overhead stays small. Measured on MNIST: 2**18 to 2**22 perform alike.
_CERTIFY_CHUNK = 1 << 20


def _plan_statistics(
    plan: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor, costs: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Compute certify's per-example statistics for a chunk of plans ``[b, C, H*W, k*k]``, in float64.

    ``x, x_adv`` are the chunk's float64 images ``[b, C, H, W]`` and ``costs [k*k]`` the offset costs.
    Returns, each ``[b]`` and unnormalised: all entries finite, the most negative raw entry, and for
    the clamped plan ``Q = max(P, 0)``: the mass on out-of-image entries, the L1 row mismatch
    ``sum |rows(Q) - x|`` (every entry counted), the L1 column mismatch ``sum |cols(Q) - x_adv|``
    (in-image entries only) and the cost ``sum(Q * c)``. Non-finite entries count as zero.
    """
    P = plan.detach().to(torch.float64)
    bb, c, hw, kk = P.shape

    def sums(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Row sums and a matrix-vector product for the cost: no plan-sized temporary.
        return q.sum(-1), q.reshape(-1, kk).mv(costs).reshape(bb, c * hw).sum(1)

    rows, cost = sums(P)
    # A NaN or inf entry makes its example's totals non-finite (entries are bounded, so finite sums
    # cannot overflow).
    finite = torch.isfinite(rows.sum(dim=(1, 2)) + cost)
    if not bool(finite.all()):
        P = torch.nan_to_num(P, nan=0.0, posinf=0.0, neginf=0.0)
    negative = P.amin(dim=(1, 2, 3))
    # Everything below is computed on the clamped plan: a negative entry can then neither cut the cost
    # nor cancel mass elsewhere; what clamping changes shows up in the (charged) mismatches.
    if bool((negative < 0).any()) or not bool(finite.all()):
        P = P.clamp_min(0)
        rows, cost = sums(P)
    cols = T.column_sums(P, x.shape[2], x.shape[3])  # drops the out-of-image entries
    # With no negative entry, out-of-image mass is all row sums minus all column sums (no gather).
    outside = (rows.sum(dim=(1, 2)) - cols.sum(dim=(1, 2, 3))).clamp_min(0)
    row_l1 = (rows - x.reshape(bb, c, hw)).abs().sum(dim=(1, 2))
    col_l1 = (cols - x_adv).abs().sum(dim=(1, 2, 3))
    return finite, negative, outside, row_l1, col_l1, cost


@dataclass(frozen=True)
class Certificate:
    """Per-example outcome of ``WassersteinBall.certify`` (all tensors ``[B]``, on CPU).

    Attributes:
        feasible: the plan proves ``W(x, x_adv) <= eps * (1 + cost_tol)`` (see the module docstring)
            and ``x_adv`` is in the box.
        cost: certified cost ``(sum(Q * c) + c_max * (row_error + outside_mass + column_error) * N) / N``
            of the clamped plan ``Q = max(P, 0)`` (float64, units of ``eps``): an upper bound on the
            exact distance whenever the mismatch checks pass; non-finite entries count as zero
            (``feasible`` is then False).
        negative: most negative raw plan entry (<= 0) / N (refused below minus the plan dtype's
            machine epsilon, in absolute terms).
        row_error: total L1 error of the clamped plan's row sums (every entry counted), relative to
            ``N``.
        column_error: total L1 error of the clamped plan's column sums (the in-image entries' targets,
            i.e. the image the plan produces) against ``x_adv``, relative to ``N``.
        outside_mass: mass of the clamped plan on out-of-image entries, relative to ``N``.
        box_violation: how far ``x_adv`` leaves the box (0 if inside).
        mass_error: max per-channel ``|N_c(x) - N_c(x_adv)| / N``.

    """

    feasible: torch.Tensor
    cost: torch.Tensor
    negative: torch.Tensor
    row_error: torch.Tensor
    column_error: torch.Tensor
    outside_mass: torch.Tensor
    box_violation: torch.Tensor
    mass_error: torch.Tensor


@dataclass(frozen=True)
class WassersteinBall:
    """The ball ``{x' in box : W(x, x') <= eps}`` of ``threat_model.md`` (beside this module).

    Args:
        eps: radius, a scalar or a per-example tensor ``[B]``, in units of "fraction of the image's
            total mass times pixel distance ** p" (``eps = 0.1``: 10 % of the mass moved one pixel).
        p: ground-cost exponent, 1 (default, Euclidean pixel distance) or 2 (squared Euclidean, what
            Wong et al.'s code bounds; the value is then the squared-distance cost, not its root).
        kernel_size: odd window size ``k`` (default 5) or ``None`` for dense plans (exact solver only).
        box: ``(0.0, 1.0)`` (default) or ``None`` (no box, as Wu et al. return).
        mass_tol: per-channel mass tolerance relative to ``N(x)`` (float32 default 1e-5).
        cost_tol: relative cost tolerance: certified iff ``cost <= eps * (1 + cost_tol)``.
        box_tol: absolute tolerance on the box (float32 rounding of column sums).

    """

    eps: float | torch.Tensor
    p: int = 1
    kernel_size: int | None = 5
    box: tuple[float, float] | None = (0.0, 1.0)
    mass_tol: float = 1e-5
    cost_tol: float = 1e-4
    box_tol: float = 1e-6
    _eps_cache: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        eps = self.eps
        if isinstance(eps, torch.Tensor):
            if eps.dim() > 1:
                raise ValueError(
                    f"eps must be a scalar or a per-example tensor [B], got shape {tuple(eps.shape)}"
                )
            e = eps.detach().to("cpu", torch.float64).reshape(-1)
        elif isinstance(eps, numbers.Real) and not isinstance(eps, bool):
            e = torch.tensor([float(eps)], dtype=torch.float64)
        else:
            raise ValueError(f"eps must be a non-negative float or a tensor [B] of them, got {eps!r}")
        if not torch.isfinite(e).all() or (e < 0).any():
            raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
        object.__setattr__(self, "_eps_cache", e)
        T.check_p(self.p)
        if self.kernel_size is not None:
            T.check_kernel_size(self.kernel_size)
        if self.box is not None and (
            not isinstance(self.box, (tuple, list)) or tuple(self.box) != (0.0, 1.0)
        ):
            raise ValueError(f"box must be (0.0, 1.0) or None, got {self.box!r}")
        for name in ("mass_tol", "cost_tol", "box_tol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite float >= 0, got {v!r}")

    # ------------------------------------------------------------------ helpers
    @classmethod
    def from_hu_units(cls, eps_times_pixels: float, n_pixels: int, **kwargs) -> WassersteinBall:
        """Ball from Hu et al.'s units ``eps * C*H*W`` (784 for MNIST, 3072 for CIFAR-10)."""
        return cls(eps=eps_times_pixels / n_pixels, **kwargs)

    def eps_for(self, batch: int) -> torch.Tensor:
        """Radius per example, float64 ``[B]`` on CPU (a scalar ``eps`` is broadcast)."""
        e = self._eps_cache
        if e.numel() == 1:
            return e.expand(batch).clone()
        if e.numel() != batch:
            raise ValueError(f"eps has {e.numel()} entries but the batch has {batch} examples")
        return e.clone()

    def with_eps(self, eps: float | torch.Tensor) -> WassersteinBall:
        """Return the same ball with another radius."""
        return WassersteinBall(
            eps, self.p, self.kernel_size, self.box, self.mass_tol, self.cost_tol, self.box_tol
        )

    def describe(self) -> dict:
        """Return the threat model's parameters as recorded with every result (JSON-ready)."""
        e = self._eps_cache
        k = self.kernel_size
        window = f"local {k}x{k}" if k else "dense"
        return {
            "name": f"W{self.p}, {window}, box {'[0,1]' if self.box else 'none'}",
            "p": self.p,
            "kernel_size": self.kernel_size,
            "box": list(self.box) if self.box is not None else None,
            "eps": float(e.item()) if e.numel() == 1 else e.tolist(),
            "eps_units": "fraction of total image mass x pixel distance^p (Hu et al.'s units / (C*H*W))",
            "mass_normalisation": "total over channels",
            "tolerances": {"mass_rel": self.mass_tol, "cost_rel": self.cost_tol, "box_abs": self.box_tol},
        }

    def _check_pair(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        check_images(x, "x")
        check_images(x_adv, "x_adv", box=None)
        if x.shape != x_adv.shape:
            raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
        if (x_adv < 0).any():
            raise ValueError("x_adv must be non-negative (it is a mass distribution)")
        self.eps_for(x.shape[0])
        self.check_window(x.shape[-2], x.shape[-1])

    def check_window(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if the window is far larger than images of ``height x width`` can use.

        A window wider than ``2 max(H, W) - 1`` only adds entries outside the image while plans grow with
        ``k**2`` (``k = 10001`` on 8x8 images would need 51 GB). A small overhang is allowed so that the
        usual windows work on tiny test images; ``kernel_size=None`` (dense plans) is the unrestricted ball.
        """
        limit = 2 * max(height, width) + 5
        if self.kernel_size is not None and self.kernel_size > limit:
            raise ValueError(
                f"kernel_size must be <= 2 * max(H, W) + 5 = {limit} for {height}x{width} images, got "
                f"{self.kernel_size} (a larger window adds only entries outside the image; None = dense)"
            )

    # ------------------------------------------------------------------ checks
    def certify(self, x: torch.Tensor, x_adv: torch.Tensor, plan: torch.Tensor) -> Certificate:
        """Check that ``plan`` proves ``x_adv`` inside the ball around ``x``, in float64.

        Checked per example: every entry finite; no entry below ``-finfo(plan.dtype).eps`` (absolute:
        float rounding, independent of ``N``); for the clamped plan ``Q = max(P, 0)``, the total L1
        mismatch ``row_error + outside_mass + column_error <= mass_tol`` (relative to ``N``, summed
        over all pixels and channels, never per pixel); per-channel mass within ``mass_tol``; the
        box within ``box_tol``; and ``cost <= eps * (1 + cost_tol)``, where ``cost`` charges that
        mismatch at the window's dearest move ``c_max = (sqrt(2) * (k // 2)) ** p``. The module
        docstring says why a passing plan bounds the exact distance, whatever plan it is.

        Args:
            x: ``[B, C, H, W]`` clean images in ``[0, 1]``.
            x_adv: ``[B, C, H, W]`` the claimed image (non-negative; the box is checked, not assumed).
            plan: ``[B, C, H*W, k*k]`` local plan (layout in ``wasserstein_attacks.transport``).

        Returns:
            A ``Certificate``; cost O(B*C*H*W*k*k).

        """
        self._check_pair(x, x_adv)
        if self.kernel_size is None:
            raise ValueError("certify needs local plans: kernel_size=None (dense) is for distance() only")
        b, c, h, w = x.shape
        kk = self.kernel_size**2
        if not isinstance(plan, torch.Tensor) or tuple(plan.shape) != (b, c, h * w, kk):
            got = tuple(plan.shape) if isinstance(plan, torch.Tensor) else type(plan).__name__
            raise ValueError(f"plan must have shape [B, C, H*W, k*k] = {(b, c, h * w, kk)}, got {got}")
        dev = plan.device
        X = x.detach().to(dev, torch.float64)
        Y = x_adv.detach().to(dev, torch.float64)
        n = X.sum(dim=(1, 2, 3))
        scale = n.clamp_min(1e-300)
        costs = T.offset_costs(self.kernel_size, self.p, device=dev)
        step = max(1, _CERTIFY_CHUNK // (c * h * w * kk))
        parts = [
            _plan_statistics(plan[s : s + step], X[s : s + step], Y[s : s + step], costs)
            for s in range(0, b, step)
        ]
        finite, negative, outside, row_l1, col_l1, total = (torch.cat(t) for t in zip(*parts, strict=True))
        # Rounding of a plan computed in its own dtype, in absolute terms: not a budget that grows with N.
        neg_ok = negative >= -torch.finfo(plan.dtype if plan.is_floating_point() else torch.float64).eps
        mismatch = (row_l1 + outside + col_l1) / scale
        # Each unit of unmatched mass is charged the window's dearest move (module docstring).
        total = total + costs.max() * (row_l1 + outside + col_l1)
        mass_err = (X.sum(dim=(2, 3)) - Y.sum(dim=(2, 3))).abs().amax(1) / scale
        y_min, y_max = Y.flatten(1).aminmax(dim=1)
        box_v = (-y_min).clamp_min(0)
        if self.box is not None:
            box_v = torch.maximum(box_v, y_max - 1)
        # An all-zero image's ball is {x}: only the zero image (and the zero plan) qualifies.
        cost = torch.where(n <= 0, torch.where(y_max > 0, torch.inf, 0.0), total / scale)
        tol = self.mass_tol
        feasible = (
            finite
            & neg_ok
            & (mismatch <= tol)
            & (mass_err <= tol)
            & (box_v <= self.box_tol)
            & (cost <= self.eps_for(b).to(dev) * (1 + self.cost_tol))
        )
        fields = (feasible, cost, negative.clamp_max(0) / scale, row_l1 / scale, col_l1 / scale)
        fields += (outside / scale, box_v, mass_err)
        return Certificate(*(t.detach().cpu() for t in fields))

    def distance(self, x: torch.Tensor, x_adv: torch.Tensor, *, workers: int | None = None) -> torch.Tensor:
        """Exact ``W(x, x_adv)`` per example, float64 ``[B]`` on CPU (``+inf`` if infeasible).

        Solves the transport LP exactly (see ``wasserstein_attacks.threat.exact``). The box is not part
        of the distance: ``contains`` checks it.

        Properties: symmetric for equal masses; the triangle inequality holds only for ``p = 1`` with
        dense plans (``kernel_size=None``): with windows a long move can be two legal short ones, and
        with ``p = 2`` the cost is a squared distance.
        """
        self._check_pair(x, x_adv)
        return exact_distance(
            x, x_adv, kernel_size=self.kernel_size, p=self.p, mass_tol=self.mass_tol, workers=workers
        )

    def contains(self, x: torch.Tensor, x_adv: torch.Tensor, tol: float | None = None) -> torch.Tensor:
        """Bool ``[B]``: ``x_adv`` in the box and ``W(x, x_adv) <= eps * (1 + tol)`` by the exact solver.

        ``tol`` defaults to the ball's ``cost_tol``.
        """
        tol = self.cost_tol if tol is None else tol
        d = self.distance(x, x_adv)
        b = x.shape[0]
        inside = d <= self.eps_for(b) * (1 + tol)
        if self.box is not None:
            y = x_adv.detach().cpu().to(torch.float64)
            inside &= ((y >= -self.box_tol) & (y <= 1 + self.box_tol)).flatten(1).all(1)
        return inside
