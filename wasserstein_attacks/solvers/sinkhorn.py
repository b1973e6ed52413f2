"""Projection onto the Wasserstein ball by entropic regularisation (Wong et al. 2019; Hu et al. 2020).

- ``ProjectedSinkhorn`` ("sinkhorn_wong"): Wong, Schmidt, Kolter, "Wasserstein Adversarial
  Examples via Projected Sinkhorn Iterations", ICML 2019 (sign steps + entropic projection).
- ``ConstrainedSinkhorn`` ("sinkhorn_hu"): Hu, Swaminathan, Salman, Yang, "Improved Image
  Wasserstein Attacks and Defenses", 2020 (box inside the projection, l_inf-normalised gradient steps
  scaled by the image mass, warm-started duals).

Both share ONE projection kernel, ``sinkhorn_projection``, which approximately solves the entropic
projection problem of Wong et al. (their "projected Sinkhorn iteration"; with Hu et al.'s optional
per-pixel cap ``z <= u``), for images normalised to unit mass::

    min_{z, P >= 0}  lam/2 ||w - z||^2 + sum P log P
    s.t.  P 1 = x,  P^T 1 = z,  <P, C> <= eps  (, z <= u)

by block-coordinate ascent on its dual. Writing the plan as ``P_ij = exp(f_i + g_j - psi C_ij - 1)``
(``f = -alpha``, ``g = -beta`` in the papers' notation, ``K = exp(-psi C - 1)``), one iteration is::

    f   <- log x - log(K e^g)                                      (rows: P 1 = x)
    u   =  K^T e^f
    g1  =  lam w - W0(lam e^{lam w} u),  z1 = W0(...) / lam         (Wong et al., Lambert W step)
    Hu: g0 = -log(u / cap),  phi = lam (w - cap) - g0;  where phi >= 0: g = g0, z = cap, else g1, z1
    psi <- max(0, psi - t g'(psi) / g''(psi))   damped Newton, t = 1/2^k, k <= 7 (authors' rule)
           g'(psi) = <P, C> - eps,  g''(psi) = -<P, C^2>

The window operator ``v -> log sum_{j in window(i)} exp(v_j - psi C_ij - 1)`` (the ``k x k`` local
``K``, per channel) is evaluated in the log domain: ``exp(v - max v)`` is summed over each window by
cost class (``C`` depends on ``(|dh|, |dw|)`` only, so ``(r+1)^2`` shifted sums serve every ``psi``),
and an example whose values span more than float64 can hold falls back to an exact log-sum-exp over
the plan layout (``wasserstein_attacks.transport.gather_neighbours``). The Lambert W argument
``lam e^{lam w} u``, which overflows float32 in the authors' code (hence Hu et al.'s cap
``x/N <= 60/(H W n_ch)``, kept in the attack), is handled as ``W0(e^s)`` (``lambertw_exp``). All
of it runs in float64.

What the attacks return: the plan of the final duals, ``N exp(f_i + g_j - psi C_ij - 1)`` in the local
layout (its row sums are ``x`` up to the projection's convergence; the common ending rescales them
exactly, returns box overflow to its sources and scales toward the identity plan where the cost
overshoots). ``result.info`` records how far the raw outputs were from the ball (cost overshoot of
the plan, mass change of the authors' clamp) and the radius each example was claimed at.

Units: the projection works on images divided by the clean image's mass ``N`` (total over channels),
so its ``eps`` is exactly the threat model's ``eps`` (``threat/threat_model.md``): both authors'
codes normalise the same way and use the cost ``||d||_2 ** p`` in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import transport as T

__all__ = [
    "lambertw",
    "lambertw_exp",
    "SinkhornDuals",
    "Projection",
    "sinkhorn_projection",
    "sinkhorn_plan",
    "dual_objective",
]


_INV_E = math.exp(-1.0)


_F64 = torch.float64


def _lambertw_exp(x: torch.Tensor) -> torch.Tensor:
    """``W0(e^x)`` for a float64 tensor without NaN (the kernel of ``lambertw_exp``).

    Start: Winitzki's approximation ``W(a) ~ L (1 - log(1+L)/(2+L))``, ``L = log(1+a)``, for
    ``a = e^x <= e^20``, and ``x - log x + log x / x`` above (relative error < 2 % everywhere). Then three
    Halley steps on ``h(w) = w + log w - x`` (``h' = (w+1)/w``, ``h'' = -1/w^2``), multiplied through by
    ``w^2`` so that tiny ``w`` cannot overflow: ``w <- w - 2 h w (w+1) / (2 (w+1)^2 + h)``. Halley
    triples the number of correct digits per step: 2e-2, 1e-6, 1e-15 (rounding).
    """
    big_l = torch.log1p(torch.exp(x.clamp(max=20.0)))
    w = big_l * (1 - torch.log1p(big_l) / (2 + big_l))
    xl = x.clamp(min=20.0)
    ls = torch.log(xl)
    w = torch.where(x > 20, xl - ls + ls / xl, w)
    # Below e^-745 the start underflows to 0 (W0(a) = a (1 - a + ...) underflows as well); +-inf are
    # fixed points handled at the end.
    ok = torch.isfinite(x) & (w > 0)
    w = torch.where(ok, w, 1.0)
    xs = torch.where(ok, x, 1.0)
    for _ in range(3):
        h = w + torch.log(w) - xs
        w1 = w + 1
        new = w - h * w * w1 / (w1 * w1 + 0.5 * h)
        w = torch.where(new > 0, new, w / 2)  # a step may never leave w > 0 (never taken from this start)
    w = torch.where(ok, w, torch.where(x == math.inf, math.inf, 0.0))
    return w


def lambertw_exp(s: torch.Tensor) -> torch.Tensor:
    """Principal Lambert W of ``exp(s)``, ``W0(e^s)``, for any real ``s`` without forming ``e^s``.

    ``w = W0(e^s)`` solves ``w + log w = s``; this is the log-domain form of Wong et al.'s update
    ``W0(lam e^{lam w} u)``, whose argument overflows floating point for large ``lam w``.

    Args:
        s: real tensor (any shape); ``-inf`` gives 0, ``+inf`` gives ``+inf``.

    Returns:
        ``W0(e^s)``, same shape and dtype as ``s`` (computed in float64; relative error ~1e-15; 0
        where ``e^s`` underflows float64, ``s < -745``).

    """
    if not isinstance(s, torch.Tensor) or not s.is_floating_point():
        raise ValueError(f"s must be a floating-point tensor, got {type(s).__name__}")
    if torch.isnan(s).any():
        raise ValueError("s contains NaN")
    return _lambertw_exp(s.to(_F64)).to(s.dtype)


def lambertw(z: torch.Tensor) -> torch.Tensor:
    """Principal branch ``W0(z)`` of the Lambert W function for real ``z >= -1/e``, vectorised.

    ``W0(z)`` solves ``w e^w = z`` with ``w >= -1``. For ``z > 0`` it is ``lambertw_exp`` of
    ``log z`` (no overflow for any finite ``z``); for ``-1/e <= z <= 0``, Halley's iteration on
    ``w e^w - z`` from the branch-point series ``-1 + p - p^2/3 + 11 p^3/72``, ``p = sqrt(2 (e z + 1))``
    (near ``-1/e``) or the Taylor series ``z - z^2 + 3 z^3 / 2`` (near 0).

    Args:
        z: real floating-point tensor, every entry ``>= -1/e``.

    Returns:
        ``W0(z)``, same shape and dtype (float64 inside; relative error ~1e-15 except within ~1e-8 of
        the branch point ``-1/e``, where the problem itself is ill-conditioned).

    """
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got {type(z).__name__}")
    x = z.to(_F64)
    if torch.isnan(x).any() or bool((x < -_INV_E * (1 + 1e-12)).any()):
        raise ValueError("z must be >= -1/e (real principal branch) and not NaN")
    x = x.clamp(min=-_INV_E)
    out = torch.zeros_like(x)
    pos = x > 0
    if bool(pos.any()):
        out = torch.where(pos, lambertw_exp(torch.log(torch.where(pos, x, 1.0))), out)
    neg = x < 0
    if bool(neg.any()):
        xn = torch.where(neg, x, -0.1)
        p = torch.sqrt((2 * (math.e * xn + 1)).clamp_min(0))
        w = torch.where(xn < -0.25, -1 + p - p**2 / 3 + 11 * p**3 / 72, xn - xn**2 + 1.5 * xn**3)
        for _ in range(20):
            ew = torch.exp(w)
            f = w * ew - xn
            den = ew * (w + 1) - (w + 2) * f / (2 * w + 2)
            step = torch.where((f != 0) & (den.abs() > 0) & (w > -1), f / den, torch.zeros_like(w))
            new = (w - step).clamp(min=-1.0)
            if bool(((new - w).abs() <= 4 * torch.finfo(_F64).eps * new.abs()).all()):
                w = new
                break
            w = new
        out = torch.where(neg, w, out)
    return out.to(z.dtype)


@dataclass(frozen=True)
class SinkhornDuals:
    """Dual variables of the entropic projection; the plan is ``P_ij = exp(f_i + g_j - psi C_ij - 1)``.

    Attributes:
        f: float64 ``[B, C, H, W]`` log row scaling (``-alpha`` of Wong et al.), ``-inf`` on empty pixels.
        g: float64 ``[B, C, H, W]`` log column scaling (``-beta``).
        psi: float64 ``[B]`` multiplier of the cost constraint (scaled by ``lam``).

    """

    f: torch.Tensor
    g: torch.Tensor
    psi: torch.Tensor

    @staticmethod
    def initial(shape: torch.Size | tuple, device=None) -> SinkhornDuals:
        """Return the authors' start: ``alpha = beta = log(1/m)`` (``m = C*H*W``), ``psi = 1``."""
        m = math.prod(shape[1:])
        f = torch.full(shape, math.log(m), dtype=_F64, device=device)
        return SinkhornDuals(f, f.clone(), torch.ones(shape[0], dtype=_F64, device=device))


@dataclass(frozen=True)
class Projection:
    """Output of ``sinkhorn_projection`` (all tensors ``[B, ...]``, float64).

    Attributes:
        z: ``[B, C, H, W]`` the projected point (unit-mass units, like the inputs): Wong et al.'s
            ``w + beta/lam`` (Hu et al.: ``w + (beta - phi)/lam``), as the authors return it.
        duals: final ``SinkhornDuals`` (warm start for the next call; ``sinkhorn_plan``).
        phi: ``[B, C, H, W]`` multiplier of the cap (zeros without a cap).
        cost: ``[B]`` transport cost ``<P, C>`` of the plan of ``duals``.
        iterations: long ``[B]`` iterations run per example.
        converged: bool ``[B]``: the objective settled (and, with ``feasibility``, the checks held) at
            the last iteration; False when the example was stopped by ``maxiters`` / ``hard_maxiters``.

    """

    z: torch.Tensor
    duals: SinkhornDuals
    phi: torch.Tensor
    cost: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor


class _Window:
    """The local window operator of one image size and cost.

    The cost of an offset ``(dh, dw)`` depends only on ``(|dh|, |dw|)``: the ``(r+1)^2`` "pairs" group
    the ``k*k`` offsets into classes of equal cost (``pair = |dh| (r+1) + |dw|``).
    """

    def __init__(self, height: int, width: int, kernel_size: int, p: int, device) -> None:
        self.k = T.check_kernel_size(kernel_size)
        self.r = r = kernel_size // 2
        self.h, self.w = height, width
        self.cost = T.offset_costs(kernel_size, p, dtype=_F64, device=device)  # [kk]
        valid = T.valid_mask(height, width, kernel_size, device=device)  # [HW, kk]
        self.outside = torch.where(valid, 0.0, -math.inf).to(_F64)
        off = T.window_offsets(kernel_size).to(device)
        self.pair_of = off[:, 0].abs() * (r + 1) + off[:, 1].abs()  # [kk]
        d = torch.arange(r + 1, device=device, dtype=_F64)
        self.pair_cost = T.squared_to_cost((d[:, None] ** 2 + d[None, :] ** 2).reshape(-1), p)  # [(r+1)^2]

    def logits(self, v: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """``v_j - psi C_ij - 1`` for every plan entry ``(i, j)``: ``[b,C,H,W]`` -> ``[b,C,HW,kk]``.

        ``-inf`` where the target leaves the image or ``v_j = -inf``.
        """
        nb = T.gather_neighbours(v, self.k)
        return nb.add_(self.outside).sub_(psi[:, None, None, None] * self.cost + 1)

    def pair_sums(self, e: torch.Tensor) -> torch.Tensor:
        """``M[b, pair, (c, i)]``: sum of ``e[b, c, i + o]`` over the offsets ``o`` of the pair (0 outside).

        Shifted sums, separable by rows and columns: about ``(r+1)^2 + 2r`` additions of an image,
        instead of materialising the ``[B, C, H*W, k*k]`` window tensor.
        """
        b, c, h, w = e.shape
        r = self.r
        ep = torch.nn.functional.pad(e, (r, r, r, r))
        cols = [ep[..., r : r + w]]
        cols += [ep[..., r - a : r - a + w] + ep[..., r + a : r + a + w] for a in range(1, r + 1)]
        out = torch.empty(b, r + 1, r + 1, c, h, w, dtype=e.dtype, device=e.device)
        for dh in range(r + 1):
            for a, col in enumerate(cols):
                if dh == 0:
                    out[:, 0, a] = col[:, :, r : r + h]
                else:
                    up, down = col[:, :, r - dh : r - dh + h], col[:, :, r + dh : r + dh + h]
                    torch.add(up, down, out=out[:, dh, a])
        return out.reshape(b, (r + 1) ** 2, c * h * w)


class _Gathered:
    """``exp(v)`` summed over every pixel's window, for any multiplier ``psi`` (the operator ``K e^v``).

    In the log domain with one shift per image: ``E = exp(v - s)``, ``s`` the image's largest finite
    ``v``; the window sums of ``E`` are grouped by cost class (``_Window.pair_sums``), so that
    ``log sum_j exp(v_j - psi C_ij - 1)`` for any ``psi`` is a ``(r+1)^2``-term weighted sum. When the
    spread of the finite ``v`` plus ``psi C_max`` exceeds 600 (a product could then underflow and a
    window lose a significant term), that example is computed instead by an exact per-window
    log-sum-exp on the plan layout. The window is symmetric
    and so is ``C``: the same sums give ``K e^v`` and ``K^T e^v``.
    """

    def __init__(self, win: _Window, v: torch.Tensor) -> None:
        self.win, self.v = win, v
        finite = torch.isfinite(v)
        s = torch.where(finite, v, -math.inf).flatten(1).amax(1)
        self.shift = torch.where(torch.isfinite(s), s, torch.zeros_like(s))  # [b]
        low = torch.where(finite, v, math.inf).flatten(1).amin(1)
        self.spread = torch.where(torch.isfinite(low), self.shift - low, torch.zeros_like(low))  # [b]
        self.maps = win.pair_sums(torch.exp(v - self.shift[:, None, None, None]))  # [b, pairs, C*H*W]

    def _risky(self, psi: torch.Tensor | None) -> torch.Tensor:
        # The smallest product E_j exp(-psi C_ij - 1) is about exp(-spread - psi C_max): keep it far
        # above the float64 underflow (e^-745) so that no window's sum can lose a significant term.
        return self.spread + (0 if psi is None else psi * self.win.pair_cost[-1]) > 600

    def _exact(self, idx, psi):
        return self.win.logits(self.v[idx], psi[idx])

    def log_window(self, psi: torch.Tensor) -> torch.Tensor:
        """``log sum_j exp(v_j - psi C_ij - 1)`` per pixel ``i``, ``[b, C, H, W]`` (``-inf`` if empty)."""
        weights = torch.exp(-psi[:, None] * self.win.pair_cost - 1)  # [b, pairs]
        out = torch.log(torch.bmm(weights[:, None, :], self.maps)[:, 0]) + self.shift[:, None]
        out = out.reshape(self.v.shape)
        risky = self._risky(psi)
        if bool(risky.any()):
            idx = risky.nonzero()[:, 0]
            out[idx] = torch.logsumexp(self._exact(idx, psi), -1).reshape(out[idx].shape)
        return out

    def log_pair_totals(self, f: torch.Tensor) -> torch.Tensor:
        """``log sum_i e^{f_i} sum_{o in pair} e^{v_{i+o}}`` per example and cost class, ``[b, pairs]``.

        With it, ``sum(P C^q)`` for the plan ``exp(f_i + v_j - psi C_ij - 1)`` and any ``psi`` is a
        sum over the ``(r+1)^2`` classes.
        """
        b = f.shape[0]
        fs = f.reshape(b, -1)
        top = torch.where(torch.isfinite(fs), fs, -math.inf).amax(1).clamp_min(-1e300)  # [b]
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        ef = torch.exp(fs - top[:, None])[:, :, None]
        out = torch.log(torch.bmm(self.maps, ef)[..., 0]) + (self.shift + top)[:, None]
        risky = self._risky(None) | (top - torch.where(torch.isfinite(fs), fs, top[:, None]).amin(1) > 600)
        if bool(risky.any()):
            idx = risky.nonzero()[:, 0]
            zero = torch.zeros(b, dtype=_F64, device=f.device)
            e = self._exact(idx, zero) + 1 + f[idx].reshape(idx.numel(), f.shape[1], -1, 1)  # f_i + v_j
            e = e.flatten(1, 2)  # [n, C*HW, kk]
            out[idx] = torch.stack(
                [torch.logsumexp(e[..., self.win.pair_of == q].flatten(1), 1)
                 for q in range(self.win.pair_cost.numel())], 1)
        return out


def _pair_moments(log_totals: torch.Tensor, win: _Window, psi: torch.Tensor, powers: tuple[int, ...]):
    """``sum(P C^q)`` per example ``[b, len(powers)]`` from ``_Gathered.log_pair_totals``."""
    per = torch.exp(log_totals - psi[:, None] * win.pair_cost - 1)  # [b, pairs]
    return torch.stack([(per * win.pair_cost**q).sum(1) for q in powers], 1)


def _sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def _check_pair(x: torch.Tensor, w: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor [B, C, H, W] (non-negative, unit mass each)")
    if not isinstance(w, torch.Tensor) or w.shape != x.shape or not w.is_floating_point():
        raise ValueError(f"w must be a floating-point tensor of the shape of x {tuple(x.shape)}")
    if bool((x < 0).any()) or not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError("x must be finite and non-negative, w finite")


def _per_example(v, b: int, name: str, device) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=_F64, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{name} must be a non-negative float or a tensor [B] = [{b}] of them")
    return t.clone()


def dual_objective(
    x: torch.Tensor,
    w: torch.Tensor,
    eps,
    duals: SinkhornDuals,
    *,
    lam: float = 1000.0,
    p: int = 1,
    kernel_size: int = 5,
    cap=None,
    phi: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dual objective of the (lam-scaled) entropic projection problem at ``duals`` (and ``phi``), ``[B]``.

    With ``a = -f``, ``b = -g``: ``-||b - phi||^2 / (2 lam) - psi eps - a.x - (b - phi).w - sum P -
    u sum phi``, a lower bound on ``lam/2 ||w - z||^2 + sum P log P`` at every feasible ``(z, P)``
    (weak duality), equal to the optimum at the solution. Inputs as in ``sinkhorn_projection``.
    """
    _check_pair(x, w)
    b = x.shape[0]
    X, Y = x.to(_F64), w.to(_F64)
    win = _Window(x.shape[2], x.shape[3], kernel_size, p, X.device)
    eps = _per_example(eps, b, "eps", X.device)
    f, g, psi = duals.f, duals.g, duals.psi
    phi = torch.zeros_like(Y) if phi is None else phi.to(_F64)
    lg = _Gathered(win, g).log_window(psi)
    mass = _sum(torch.exp(f + lg))
    fx = _sum(torch.where(X > 0, f * X, torch.zeros_like(X)))
    bp = -g - phi
    obj = -_sum(bp**2) / (2 * lam) - psi * eps + fx - _sum(bp * Y) - mass
    if cap is not None:
        obj = obj - _per_example(cap, b, "cap", X.device) * _sum(phi)
    return obj


def _check_projection_args(stopping: str, lam: float, maxiters: int, tol: float) -> None:
    """Raise ``ValueError`` on a bad scalar argument of ``sinkhorn_projection``."""
    if stopping not in ("authors", "dual"):
        raise ValueError(f"stopping must be 'authors' or 'dual', got {stopping!r}")
    if not (isinstance(lam, (int, float)) and lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a positive float, got {lam!r}")
    if isinstance(maxiters, bool) or not isinstance(maxiters, int) or maxiters < 0:
        raise ValueError(f"maxiters must be an int >= 0, got {maxiters!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a non-negative float, got {tol!r}")


def _column_update(lam: float, w: torch.Tensor, lu: torch.Tensor, cap: torch.Tensor | None):
    """Wong et al.'s beta update (Lambert W) and, with a cap ``[b]``, Hu et al.'s switch to ``z = cap``.

    ``w``: point to project, ``lu = log(K^T e^f)`` at the current ``psi`` (``[b, C, H, W]``). Returns
    ``(g, z, phi)``, each ``[b, C, H, W]``: log column scaling, projected point, cap multiplier.
    """
    wl = _lambertw_exp(math.log(lam) + lam * w + lu)
    g1, z1 = lam * w - wl, wl / lam  # Wong et al.'s beta update; z1 = w + beta/lam
    if cap is None:
        return g1, z1, torch.zeros_like(w)
    ca = cap[:, None, None, None]
    beta0 = lu - torch.log(ca)  # makes the column sum equal the cap
    phi = lam * (w - ca) + beta0
    free = phi < 0
    return torch.where(free, g1, -beta0), torch.where(free, z1, ca.expand_as(w)), phi.clamp_min(0)


def _psi_step(win: _Window, f: torch.Tensor, g: torch.Tensor, psi: torch.Tensor, eps: torch.Tensor):
    """Damped Newton step on ``psi [b]`` with the plan ``(f, g, psi)`` (``f, g``: ``[b, C, H, W]``).

    ``g'(psi) = <P, C> - eps``, ``g''(psi) = -<P, C^2>``; the step is halved (at most 7 times) while it
    would make ``psi`` negative (the authors' rule). Returns ``(psi_new [b], log(K e^g) at psi_new
    [b, C, H, W], mass [b], cost [b])``, the last two those of the plan at ``psi_new``.
    """
    gg = _Gathered(win, g)
    totals = gg.log_pair_totals(f)
    moments = _pair_moments(totals, win, psi, (1, 2))
    dpsi, ddpsi = moments[:, 0] - eps, -moments[:, 1]
    curved = ddpsi < 0
    delta = torch.where(curved, dpsi / torch.where(curved, ddpsi, -1.0), torch.zeros_like(dpsi))
    t = torch.ones_like(psi)
    for _ in range(7):  # the authors halve t while psi - t delta < 0 and t > 1e-2
        t = torch.where(psi - t * delta < 0, t / 2, t)
    psin = torch.where(curved, (psi - t * delta).clamp_min(0), torch.where(dpsi < 0, 0.0, psi))
    lgn = gg.log_window(psin)  # the plan at the new psi: its row sums, mass and cost
    del gg
    mass, cost = _pair_moments(totals, win, psin, (0, 1)).unbind(1)
    return psin, lgn, mass, cost


def _sinkhorn_step(win: _Window, lam: float, w, logx, lg, psi, eps, cap) -> dict[str, torch.Tensor]:
    """One projected Sinkhorn iteration (module docstring) on a sub-batch, float64.

    ``w, logx`` (point to project, ``log x``), ``lg = log(K e^g)`` of the previous duals: ``[b, C, H, W]``;
    previous ``psi``, ``eps`` and ``cap`` (or ``None``): ``[b]``. Returns ``f, g, lg, z, phi, lu``
    (``[b, C, H, W]``; ``lg`` at the new duals, ``lu = log(K^T e^f)`` at the previous ``psi``) and
    ``psi, mass, cost`` (``[b]``; mass and cost of the new plan) by name.
    """
    f = logx - lg  # alpha update: exact row sums x
    lu = _Gathered(win, f).log_window(psi)  # log u = log(K^T e^f)
    g, z, phi = _column_update(lam, w, lu, cap)
    psin, lgn, mass, cost = _psi_step(win, f, g, psi, eps)
    return dict(f=f, g=g, psi=psin, lg=lgn, z=z, phi=phi, lu=lu, mass=mass, cost=cost)


def _watched_objective(stopping: str, lam: float, x, w, eps, cap, it: dict) -> torch.Tensor:
    """Return the objective ``[b]`` the stopping rule watches at the iterate ``it`` (``_sinkhorn_step``).

    ``"dual"``: ``dual_objective``; ``"authors"``: the expression the released code evaluates
    (see ``sinkhorn_projection``). ``x, w``: ``[b, C, H, W]``; ``eps``, ``cap`` (or ``None``): ``[b]``.
    """
    f, g, phi, psi = it["f"], it["g"], it["phi"], it["psi"]
    fx = _sum(torch.where(x > 0, f * x, torch.zeros_like(x)))
    if stopping == "dual":
        bp = -g - phi
        obj = -_sum(bp**2) / (2 * lam) - psi * eps + fx - _sum(bp * w) - it["mass"]
        if cap is not None:
            obj = obj - cap * _sum(phi)
        return obj
    if cap is None:
        ef = torch.exp(f)
        return (-_sum(ef**2) / (2 * lam) - psi * eps + fx - _sum(ef.clamp(max=1e10) * w)
                + _sum(g * torch.exp(it["lg"])))
    bpp = -g + phi
    return (-_sum(bpp**2) / (2 * lam) - psi * eps + fx - _sum(bpp * w)
            - _sum(torch.exp(g + it["lu"])) - _sum(phi))


def _start_state(win: _Window, w: torch.Tensor, duals: SinkhornDuals) -> dict[str, torch.Tensor]:
    """Return the loop state of ``sinkhorn_projection`` before its first iteration, float64 copies.

    ``f, g, lg = log(K e^g), z, phi``: ``[B, C, H, W]`` (``z = phi = 0``); ``psi, cost = 0, old = -inf``:
    ``[B]``; ``iters = 0`` (long) and ``converged = False`` (bool): ``[B]``.
    """
    b, dev = w.shape[0], w.device
    st = dict(f=duals.f.to(_F64).clone(), g=duals.g.to(_F64).clone(), psi=duals.psi.to(_F64).clone())
    st["z"], st["phi"] = torch.zeros_like(w), torch.zeros_like(w)
    st["cost"] = torch.zeros(b, dtype=_F64, device=dev)
    st["old"] = torch.full((b,), -math.inf, dtype=_F64, device=dev)
    st["iters"] = torch.zeros(b, dtype=torch.long, device=dev)
    st["converged"] = torch.zeros(b, dtype=torch.bool, device=dev)
    st["lg"] = _Gathered(win, st["g"]).log_window(st["psi"])  # log(K e^g), reused by each f update
    return st


def sinkhorn_projection(
    x: torch.Tensor,
    w: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    lam: float = 1000.0,
    p: int = 1,
    kernel_size: int = 5,
    cap: float | torch.Tensor | None = None,
    maxiters: int = 50,
    stopping: str = "authors",
    feasibility: tuple[float, float] | None = None,
    init: SinkhornDuals | None = None,
    hard_maxiters: int | None = None,
    tol: float = 1e-4,
) -> Projection:
    """Project ``w`` entropically onto the local Wasserstein ball around ``x``.

    Wong et al. 2019's projected Sinkhorn iteration; with ``cap``, Hu et al. 2020's constrained version
    (equations as in the papers of Wong et al. 2019 and Hu et al. 2020, and the authors' code). See the module
    docstring for the updates.

    Args:
        x: ``[B, C, H, W]`` centre, non-negative, each example summing to 1 (image / its mass ``N``).
        w: ``[B, C, H, W]`` point to project, same units (any sign, any mass).
        eps: radius, float or ``[B]``: bound on ``<P, C>`` (threat-model units).
        lam: entropy regularisation (inverse temperature): 1000 for MNIST, 3000 for CIFAR-10.
        p: ground-cost exponent (cost ``||d||_2 ** p`` in pixels), as in the threat model.
        kernel_size: odd window size ``k``, as in the threat model.
        cap: ``None`` (Wong et al.) or the per-pixel upper bound ``u`` on ``z``, float or ``[B]``
            (Hu et al.: ``1/N``, i.e. pixel value 1).
        maxiters: an example stops once ``iterations > maxiters`` (the authors' ``i > maxiters`` test:
            at most ``maxiters + 1`` iterations) or once its objective changes by at most
            ``tol + tol |obj|`` between iterations (the authors: ``tol = 1e-4``).
        stopping: which objective that rule watches. ``"authors"``: the expression the released code
            evaluates (Wong et al.'s passes ``exp(-alpha)`` and ``beta`` in swapped argument positions;
            Hu et al.'s uses ``beta + phi`` and ``sum phi`` where the dual has ``beta - phi`` and
            ``u sum phi``); ``"dual"``: the true dual objective (``dual_objective``).
        feasibility: ``(cost_tol, mass_tol)``: additionally require ``<P, C> - eps <= cost_tol`` and
            ``|sum z - 1| <= mass_tol`` before stopping (Hu et al.: ``(1e-3, 1e-2)``). Their loop has
            no bound when these never hold; here ``hard_maxiters`` bounds it.
        init: warm start (Hu et al. reuse the previous PGD step's duals); default the authors' start.
        hard_maxiters: absolute bound on iterations (default ``10 (maxiters + 1)`` with
            ``feasibility``, else ``maxiters + 1``); examples stopped by it have ``converged = False``.
        tol: tolerance of the stopping rule (see ``maxiters``).

    Returns:
        ``Projection``. Every example runs and stops on its own (the authors stop the whole batch
        when all have converged, so a batch there is not the same as its examples one by one).

    """
    _check_pair(x, w)
    _check_projection_args(stopping, lam, maxiters, tol)
    (b, _, h, wd), dev = x.shape, x.device
    X, Y = x.to(_F64), w.to(_F64)
    eps = _per_example(eps, b, "eps", dev)
    capv = None if cap is None else _per_example(cap, b, "cap", dev)
    if hard_maxiters is None:
        hard_maxiters = 10 * (maxiters + 1) if feasibility is not None else maxiters + 1
    win = _Window(h, wd, kernel_size, T.check_p(p), dev)
    logx = torch.log(X)
    duals = SinkhornDuals.initial(x.shape, dev) if init is None else init
    st = _start_state(win, Y, duals)
    active = torch.arange(b, device=dev)
    full = True  # while every example is active, work on the tensors themselves (no gather / scatter)
    while active.numel() > 0:
        A = active
        sel = (lambda t: t) if full else (lambda t, a=A: t[a])  # noqa: E731
        Xa, Ya, epsa = sel(X), sel(Y), sel(eps)
        capa = None if capv is None else sel(capv)
        it = _sinkhorn_step(win, lam, Ya, sel(logx), sel(st["lg"]), sel(st["psi"]), epsa, capa)
        obj = _watched_objective(stopping, lam, Xa, Ya, epsa, capa, it)
        ia = sel(st["iters"]) + 1
        close = (sel(st["old"]) - obj).abs() <= tol + tol * obj.abs()
        stop = close | (ia > maxiters)
        if feasibility is not None:
            feasible = (it["cost"] - epsa <= feasibility[0]) & ((_sum(it["z"]) - 1).abs() <= feasibility[1])
            stop &= feasible
            close &= feasible
        stop |= ia >= hard_maxiters
        new = {k: it[k] for k in ("f", "g", "psi", "lg", "z", "phi", "cost")}
        new.update(old=obj, iters=ia, converged=close)
        if full:
            st.update(new)
        else:
            for key, v in new.items():
                st[key][A] = v
        if bool(stop.any()):
            active = A[~stop]
            if full:  # from now on the loop scatters into its own copies
                st = {key: v.clone() for key, v in st.items()}
            full = False
    return Projection(st["z"], SinkhornDuals(st["f"], st["g"], st["psi"]), st["phi"], st["cost"], st["iters"],
                      st["converged"])


def sinkhorn_plan(duals: SinkhornDuals, *, p: int = 1, kernel_size: int = 5) -> torch.Tensor:
    """Return the entropic plan ``P_ij = exp(f_i + g_j - psi C_ij - 1)``, layout ``[B, C, H*W, k*k]``.

    Float64, zero on entries that leave the image; in the units of the projection (unit mass).
    """
    f = duals.f
    win = _Window(f.shape[2], f.shape[3], kernel_size, T.check_p(p), f.device)
    b, c, h, w = f.shape
    return torch.exp(f.reshape(b, c, h * w, 1) + win.logits(duals.g, duals.psi))
