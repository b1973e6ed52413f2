"""A minimal-distance attack with GeomLoss's Sinkhorn divergence as a differentiable penalty.

Carlini-Wagner / Lagrangian style (Carlini & Wagner, "Towards Evaluating the Robustness of Neural
Networks", S&P 2017, Eq. 6 with the constant moved onto the distance), over transport plans in the
local layout of the threat model (``threat/threat_model.md``):

    minimise over Z   max(-margin(Y), -kappa) + c * (S_blur(x, Y) + cost_weight * <P, C> / N),
    P = R(x_i * softmax_o(Z_io)),  Y = column sums of P,

where the row sums of ``P`` are ``x`` by construction and ``R`` is the local box repair (overflow
above 1 returns to its sources), so ``Y`` is in ``[0, 1]`` for every ``Z`` (a capacity-respecting
map), and ``S_blur`` is the debiased Sinkhorn divergence of GeomLoss (Feydy et al., "Interpolating
between Optimal Transport and MMD using Sinkhorn Divergences", AISTATS 2019) between each channel
of the clean and the adversarial image seen as weighted point clouds (pixel coordinates, weights =
intensities normalised per channel), weighted by the channel's share of the mass so that it is in
units of ``eps``. The constant ``c`` is set per example by a binary search (CW). The divergence is an
entropic, window-free approximation: it only steers the search. What is reported is certified: the
returned plan's row sums are ``x``, its column sums are the adversarial image, and with
``exact_refine`` the plan is replaced by an exact optimal plan to the same image (never costlier).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import transport as T
from .._util import check_bool, check_choice, check_float, check_int
from ..solvers.capacity import grid_overflow
from ..threat import WassersteinBall
from ..threat.exact import exact_plan
from .base import LOSSES, Attack, RunOutput, example_generators, iterate, loss_per_example, register

__all__ = ["SinkhornPenalty", "sinkhorn_divergence"]

# Candidates must be inside the box up to this absolute overflow: the common ending's local box
# repair then returns at most this much mass per pixel, too little to undo a success in practice.
_BOX_SLACK = 1e-4
# Rounds of the local box repair inside the plan map; what overflow remains after them (rare) keeps
# an iterate from being a candidate.
_BOX_ROUNDS = 20


def _padded_support(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the indices of the True entries of each row of ``mask [R, n]``, padded to a common length.

    Returns ``(idx [R, m], valid [R, m])`` with ``m`` the largest row count (at least 1).
    """
    counts = mask.sum(1)
    m = max(int(counts.max()) if counts.numel() else 0, 1)
    # A stable sort of ~mask lists each row's True positions first, in increasing order.
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :m]
    valid = torch.arange(m, device=mask.device)[None, :] < counts[:, None]
    return order, valid


class _SinkhornTerm:
    """Per-channel Sinkhorn divergence between clean images and plan images, in units of ``eps``.

    The clean channel's cloud is its support; the adversarial channel's cloud is the support
    dilated by the window (the only pixels a local plan can reach), so the dense ``[N, M]``
    GeomLoss problems stay small. Built once per batch; called on any subset of its examples.
    """

    def __init__(self, x: torch.Tensor, kernel_size: int, p: int, blur: float, scaling: float):
        from geomloss import SamplesLoss

        b, c, h, w = x.shape
        self.c, self.h, self.w = c, h, w
        self.p = p
        xr = x.detach().reshape(b * c, h * w)
        self.mass = xr.sum(1)  # [B*C]
        total = x.detach().sum((1, 2, 3)).repeat_interleave(c)
        self.share = torch.where(total > 0, self.mass / total.clamp_min(1e-30), torch.zeros_like(total))
        has = self.mass > 0
        src = xr > 0
        r = kernel_size // 2
        tgt = F.max_pool2d(src.to(x.dtype).reshape(b * c, 1, h, w), kernel_size, 1, r).reshape(b * c, -1) > 0
        # Massless channels get a one-point dummy cloud on both sides (divergence exactly 0, weight 0).
        src[~has, 0] = True
        tgt[~has, 0] = True
        self.has = has
        self.si, self.sv = _padded_support(src)
        self.ti, self.tv = _padded_support(tgt)
        hh = torch.arange(h, device=x.device, dtype=x.dtype).repeat_interleave(w)
        ww = torch.arange(w, device=x.device, dtype=x.dtype).repeat(h)
        grid = torch.stack([hh, ww], 1)
        self.sx = grid[self.si].contiguous()  # [R, N, 2]
        self.ty = grid[self.ti].contiguous()  # [R, M, 2]
        a = xr.gather(1, self.si) * self.sv
        self.alpha = torch.where(has[:, None], a / self.mass.clamp_min(1e-30)[:, None], self.sv.to(x.dtype))
        # GeomLoss's cost for p = 2 is |x - y|^2 / 2: the factor 2 brings it to the threat model's units.
        self.unit = 2.0 if p == 2 else 1.0
        self.loss = SamplesLoss(
            "sinkhorn", p=p, blur=blur, scaling=scaling, backend="tensorized", diameter=math.hypot(h, w)
        )

    def __call__(self, y: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
        """Return the divergence ``[b]`` of images ``y [b, C, H, W]`` at batch positions ``examples [b]``."""
        rows = (examples[:, None] * self.c + torch.arange(self.c, device=examples.device)).reshape(-1)
        yr = y.reshape(-1, self.h * self.w)
        ti, tv, has = self.ti[rows], self.tv[rows], self.has[rows]
        beta = yr.gather(1, ti) * tv / self.mass[rows].clamp_min(1e-30)[:, None]
        beta = torch.where(has[:, None], beta, tv.to(y.dtype))
        s = self.loss(self.alpha[rows], self.sx[rows], beta, self.ty[rows])
        return (self.unit * s * self.share[rows]).reshape(-1, self.c).sum(1)


def sinkhorn_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    p: int = 1,
    blur: float = 0.25,
    scaling: float = 0.3,
    kernel_size: int = 5,
) -> torch.Tensor:
    """GeomLoss Sinkhorn divergence between images per example, in units of ``eps``; differentiable in ``y``.

    Each channel is a weighted point cloud (pixel coordinates in pixels, weights = intensities
    normalised per channel); channel divergences are weighted by the channel's share of the total
    mass of ``x``. Only ``y``'s pixels within the window of ``x``'s support are seen (what a local
    plan can reach). An entropic approximation of ``W`` (below it at small scales), not a bound.

    Args:
        x: ``[B, C, H, W]`` clean images (non-negative).
        y: ``[B, C, H, W]`` images with the same per-channel masses.
        p: 1 (cost ``|d|``) or 2 (cost ``|d|^2``).
        blur: entropic blur in pixels.
        scaling: GeomLoss's epsilon-scaling ratio in (0, 1).
        kernel_size: window size defining the reachable support.

    Returns:
        ``[B]`` divergence.

    """
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    if x.dim() != 4 or x.shape != y.shape:
        got = f"{tuple(x.shape)} and {tuple(y.shape)}"
        raise ValueError(f"x and y must be [B, C, H, W] tensors of one shape, got {got}")
    term = _SinkhornTerm(x, T.check_kernel_size(kernel_size), p, blur, scaling)
    return term(y, torch.arange(x.shape[0], device=x.device))


class _Recorder(torch.nn.Module):
    """Passes through to ``model`` and keeps its last logits, so the step can read them for free."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.logits = out.detach()
        return out


def _plan(z: torch.Tensor, xf: torch.Tensor, valid: torch.Tensor, box: tuple[int, int, int] | None):
    """Map logits ``z`` to the plan ``x_i * softmax(z_i)`` over in-image offsets, then make the box hold.

    ``box = (H, W, k)`` applies the local box repair
    (``grid_overflow``: the share of moved mass that overflows a
    pixel goes back to its sources' "stay") as part of the map, so every plan it produces is inside
    ``[0, 1]`` (capacity-respecting); ``None`` skips it (no box). The repair's keep factors are held
    constant in the backward pass: differentiating through them divides by the inflow, which is 0 at
    most pixels. ``[b, C, H*W, k*k]``.
    """
    plan = xf[..., None] * torch.softmax(z.masked_fill(~valid, float("-inf")), dim=-1)
    if box is None:
        return plan
    h, w, k = box
    stay = k * k // 2
    with torch.no_grad():
        fixed = grid_overflow(plan, h, w, max_rounds=_BOX_ROUNDS)
        keep = torch.where(plan > 0, fixed / plan, torch.ones_like(plan)).clamp(0, 1)
        keep[..., stay] = 1.0
    back = ((1 - keep) * plan).sum(-1, keepdim=True)
    return plan * keep + back * F.one_hot(torch.tensor(stay, device=plan.device), k * k).to(plan.dtype)


class _Best:
    """The best iterates per example, by kind; scores are maximised.

    ``"cand"``: fooling plans inside the ball (score ``-cost``); ``"att"``: non-fooling plans inside it
    (score: the margin); ``"fool"``: fooling plans of any cost (score ``-cost``; tried exactly at the
    end). Per kind: ``z [B, C, H*W, k*k]`` plan logits, ``score [B]`` (``-inf``: none yet) and
    ``const [B]``, the ``c`` it was found at (NaN: none).
    """

    def __init__(self, x: torch.Tensor, kk: int) -> None:
        b, c, h, w = x.shape
        self.z, self.score, self.const = {}, {}, {}
        for name in ("cand", "att", "fool"):
            self.z[name] = x.new_zeros(b, c, h * w, kk)
            self.score[name] = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
            self.const[name] = torch.full((b,), math.nan, dtype=x.dtype, device=x.device)

    def keep(self, name: str, where, pos, z, score, const) -> None:
        """Store the sub-batch's iterates ``where [b]`` (``z``, ``score``, ``const``) at positions ``pos``."""
        # Trackers live outside ``iterate``'s state (indexed by batch position) so that the loop does not
        # copy these plan-sized tensors in and out at every step.
        sel = pos[where]
        self.z[name][sel] = z[where]
        self.score[name][sel] = score[where]
        self.const[name][sel] = const[where]

    def update(self, pos, z, fooled, in_box, inside, margin, cost, const) -> None:
        """Keep the step's plans that beat each kind's best; ``z [b, C, H*W, k*k]``, the others ``[b]``."""
        self.keep("cand", fooled & inside & (-cost > self.score["cand"][pos]), pos, z, -cost, const)
        self.keep("att", ~fooled & inside & (margin > self.score["att"][pos]), pos, z, margin, const)
        self.keep("fool", fooled & in_box & (-cost > self.score["fool"][pos]), pos, z, -cost, const)


def _adam(z, g, m, v, t: int, lr: float, beta1: float = 0.9, beta2: float = 0.999):
    """Take one Adam step (Kingma & Ba 2015) on ``z`` along ``-g`` at 0-based step ``t``.

    Returns ``(z, m, v)``, each of the shape of ``z``.
    """
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** (t + 1))
    vhat = v / (1 - beta2 ** (t + 1))
    return z - lr * mhat / (vhat.sqrt() + 1e-8), m, v


def _next_const(const, lo, hi, fooled):
    """CW's update of ``c [b]`` after a round: x10 until bracketed, then geometric bisection.

    ``lo``/``hi`` ``[b]``: the largest fooling / smallest non-fooling ``c`` so far (0 / inf: none).
    Returns ``(const, lo, hi)``.
    """
    lo, hi = torch.where(fooled, const, lo), torch.where(fooled, hi, const)
    up = torch.where(lo == 0, const / 10, (lo * hi).sqrt())
    return torch.where(torch.isinf(hi), const * 10, up), lo, hi


def _listed(t: torch.Tensor) -> list:
    """Return a ``[B]`` tensor as a list of floats, ``None`` for NaN (JSON has no NaN)."""
    return [None if math.isnan(v) else v for v in t.detach().cpu().tolist()]


class _Search:
    """What the Adam steps of one ``SinkhornPenalty`` call share: ``iterate``'s ``image`` and ``step``.

    Holds the attack (hyperparameters), the recording model, labels / targets ``[B]``, the plan map's
    mask and box, the divergence term of the batch and the best iterates (``_Best``).
    """

    def __init__(self, attack, model, x, labels, targets, threat: WassersteinBall) -> None:
        b, c, h, w = x.shape
        k = threat.kernel_size
        self.attack, self.threat, self.labels, self.targets = attack, threat, labels, targets
        self.h, self.w = h, w
        self.valid = T.valid_mask(h, w, k, device=x.device)
        self.box = None if threat.box is None else (h, w, k)
        self.term = _SinkhornTerm(x, k, threat.p, attack.blur, attack.scaling)
        self.rec = _Recorder(model)
        self.best = _Best(x, k * k)

    def image(self, sub: dict) -> torch.Tensor:
        """Return the images ``[b, C, H, W]`` of the sub-state's plan logits (differentiable)."""
        return T.column_sums(_plan(sub["var"], sub["xf"], self.valid, self.box), self.h, self.w)

    def _outcome(self, pos: torch.Tensor):
        """Return the margin ``[b]`` and fooled ``[b]`` of the recorded logits of batch positions ``pos``."""
        logits = self.rec.logits
        if logits is None or logits.shape[0] != pos.shape[0]:
            raise RuntimeError("iterate() must evaluate exactly the examples it steps")
        tgt = None if self.targets is None else self.targets[pos]
        margin = loss_per_example(logits, self.labels[pos], "margin", tgt)
        pred = logits.argmax(1)
        fooled = (pred == tgt) if tgt is not None else (pred != self.labels[pos])
        return margin, fooled

    def _penalty(self, sub: dict, t: int, new: dict):
        """Gradient of ``c (divergence + cost_weight * cost)`` w.r.t. the plan logits at step ``t``.

        Refreshes the divergence's gradient into ``new["gdiv"]`` every ``divergence_every`` steps.
        Returns ``(z [b, C, H*W, k*k], y [b, C, H, W], cost [b], grad [b, C, H*W, k*k])``, detached.
        """
        a = self.attack
        with torch.enable_grad():
            z = sub["var"].detach().requires_grad_(True)
            plan = _plan(z, sub["xf"], self.valid, self.box)
            y = T.column_sums(plan, self.h, self.w)
            if t % a.divergence_every == 0:
                yd = y.detach().requires_grad_(True)
                div = self.term(yd, sub["pos"])
                (gdiv,) = torch.autograd.grad(div.sum(), yd)
                new["gdiv"] = gdiv
            else:
                gdiv = sub["gdiv"]
            # The divergence enters through its gradient at the last refresh (exact when refreshed
            # every step): a linear model of it between refreshes.
            lin = (gdiv * y).sum((1, 2, 3))
            cost = T.plan_cost(plan, self.threat.p, mass=sub["n"])
            pen = sub["const"] * (lin + a.cost_weight * cost)
            (gpen,) = torch.autograd.grad(pen.sum(), z)
        return z.detach(), y.detach(), cost.detach(), gpen

    def step(self, sub: dict, grad: torch.Tensor, t: int, idx: torch.Tensor) -> dict:
        """Record the best iterates, then take one Adam step on the plan logits (``iterate``'s step).

        ``grad [b, C, H*W, k*k]`` is the attack loss's gradient; ``idx`` indexes the sub-batch handed to
        ``iterate``, ``sub["pos"]`` the positions in the batch.
        """
        pos = sub["pos"]
        margin, fooled = self._outcome(pos)
        new = {}
        z, y, cost, gpen = self._penalty(sub, t, new)
        with torch.no_grad():
            in_box = (y - 1).flatten(1).amax(1) <= _BOX_SLACK
            inside = in_box & (cost <= sub["eps"])
            self.best.update(pos, z, fooled, in_box, inside, margin, cost, sub["const"])
            new["fooled_round"] = sub["fooled_round"] | fooled
            # CW's max(-margin, -kappa): the attack term is flat once the margin exceeds kappa.
            push = (margin < self.attack.kappa).to(grad.dtype)[:, None, None, None]
            g = gpen - push * grad
            new["var"], new["m"], new["v"] = _adam(z, g, sub["m"], sub["v"], t, self.attack.lr)
        return new


@register("sinkhorn_penalty")
class SinkhornPenalty(Attack):
    """Minimal-distance attack: margin + c * (GeomLoss Sinkhorn divergence + plan cost), CW binary search.

    Our own attack (no published defaults): Carlini & Wagner (2017, Eq. 6 and their binary search
    on the constant) over transport plans, with the debiased Sinkhorn divergence of GeomLoss
    (Feydy et al. 2019) as the differentiable distance. The variable is the logits ``Z`` of a
    row-stochastic local plan ``P = x * softmax(Z)`` (mass and row sums kept by construction),
    followed by the local box repair (overflow goes back to its sources), so the box holds for every
    ``Z`` without a penalty; Adam on ``Z``.

    Per example, each binary-search round runs ``steps`` Adam steps at constant ``c`` from the
    initial plan (as CW); a round in which the model was fooled multiplies ``c`` by 10 (or
    bisects geometrically once bracketed), otherwise it is divided. Aiming at ``threat.eps``: the
    attack returns the smallest-cost fooling plan seen with plan cost ``<= eps`` and pixels ``<= 1``;
    failing that, the closest non-fooling attempt inside the ball (largest margin); failing that,
    the identity plan. With ``exact_refine`` the returned image's plan is replaced by an exact
    optimal plan (POT) when cheaper, and an example without a candidate also gets its cheapest
    fooling iterate tried exactly (its plan may be wasteful while its image is inside the ball).

    Per-example logic throughout (constants, candidates, restarts, random init from the example's
    seed): a batch equals its examples one by one; there is no whole-batch stopping or batch-level
    best-so-far. Every example runs all its steps (a minimal-distance search does not stop at
    the first success). ``threat.eps`` is the cap of a fixed-radius evaluation; the search itself
    looks for the smallest radius (there is no ramp protocol: this is not a published attack).

    ``result.info`` holds, per example (``None`` where not applicable): ``sinkhorn_divergence``
    (GeomLoss value of the returned image, units of ``eps``; an approximation, not a bound),
    ``plan_cost`` (cost of the returned plan before the common ending; ``result.cost`` is the
    certified one), ``exact_cost`` (exact LP cost of the returned image, where re-solved) and
    ``const`` (the ``c`` at which the returned plan was found). The divergence dominates the cost
    of a step (dense ``[N, M]`` Sinkhorn problems per channel), hence ``divergence_every``.

    Args:
        steps: Adam steps per binary-search round.
        binary_search_steps: rounds of the search on ``c``.
        initial_const: starting ``c`` (logit units per unit of ``eps``).
        lr: Adam step size on the plan logits.
        blur: GeomLoss entropic blur in pixels (smaller = closer to ``W``, slower).
        scaling: GeomLoss epsilon-scaling ratio in (0, 1) (larger = more Sinkhorn iterations).
        divergence_every: recompute the divergence and its gradient every this many steps (it
            dominates the cost of a step) and use its linearisation in between; 1 = every step.
        cost_weight: weight of the plan's own linear cost ``<P, C> / N`` next to the divergence
            (0 = divergence only).
        kappa: CW confidence: the attack term ``max(-margin, -kappa)`` stops pushing once the
            margin (best other logit minus true logit) exceeds ``kappa``.
        loss: ``"margin"`` (CW's logit difference) or ``"ce"`` (cross-entropy) for the attack term.
        restarts: number of starts; restarts after the first use a random init drawn from the
            example's seed and run only for examples without a candidate yet.
        init_logit: logit of "stay" at the start (others 0): the initial plan moves a fraction
            about ``(k*k - 1) * exp(-init_logit)`` of the mass.
        init_noise: standard deviation of the Gaussian noise on the logits of random restarts.
        exact_refine: replace the final plan by an exact optimal plan to the same image (see above).

    """

    def __init__(
        self,
        *,
        steps: int = 100,
        binary_search_steps: int = 5,
        initial_const: float = 1.0,
        lr: float = 0.5,
        blur: float = 0.25,
        scaling: float = 0.3,
        divergence_every: int = 5,
        cost_weight: float = 1.0,
        kappa: float = 0.0,
        loss: str = "margin",
        restarts: int = 1,
        init_logit: float = 10.0,
        init_noise: float = 1.0,
        exact_refine: bool = True,
    ):
        check_int(steps, "steps")
        check_int(binary_search_steps, "binary_search_steps")
        check_int(restarts, "restarts")
        check_int(divergence_every, "divergence_every")
        check_float(initial_const, "initial_const")
        check_float(lr, "lr")
        check_float(blur, "blur")
        check_float(cost_weight, "cost_weight", allow_zero=True)
        check_float(kappa, "kappa", allow_zero=True)
        check_float(init_logit, "init_logit", allow_zero=True)
        check_float(init_noise, "init_noise", allow_zero=True)
        if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not 0 < scaling < 1:
            raise ValueError(f"scaling must be a float in (0, 1), got {scaling!r}")
        check_choice(loss, "loss", LOSSES)
        check_bool(exact_refine, "exact_refine")
        self.steps = steps
        self.binary_search_steps = binary_search_steps
        self.initial_const = float(initial_const)
        self.lr = float(lr)
        self.blur = float(blur)
        self.scaling = float(scaling)
        self.divergence_every = divergence_every
        self.cost_weight = float(cost_weight)
        self.kappa = float(kappa)
        self.loss = loss
        self.restarts = restarts
        self.init_logit = float(init_logit)
        self.init_noise = float(init_noise)
        self.exact_refine = exact_refine

    def _run(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        *,
        threat: WassersteinBall,
        targets: torch.Tensor | None,
        seeds: list[int],
    ) -> RunOutput:
        b, c, h, w = x.shape
        dev = x.device
        xf = x.reshape(b, c, h * w)
        n = x.sum((1, 2, 3))
        eps = threat.eps_for(b).to(dev, x.dtype)
        search = _Search(self, model, x, labels, targets, threat)
        gens = example_generators(seeds)
        iterations = torch.zeros(b, dtype=torch.long, device=dev)
        for r in range(self.restarts):
            no_cand = torch.isinf(search.best.score["cand"])
            todo = torch.arange(b, device=dev) if r == 0 else no_cand.nonzero()[:, 0]
            if todo.numel() == 0:
                break
            state = dict(xf=xf[todo], n=n[todo], eps=eps[todo], pos=todo, gdiv=torch.zeros_like(x[todo]))
            z = self._start(x, todo, r, gens, threat.kernel_size)
            iterations[todo] += self._binary_search(search, x, labels, targets, todo, z, state)
        plan, exact_cost, used = self._final_plan(search, x, threat, eps)
        with torch.no_grad():
            div = search.term(T.column_sums(plan.to(x.dtype), h, w), torch.arange(b, device=dev))
        info = {
            "sinkhorn_divergence": _listed(div),
            "plan_cost": _listed(T.plan_cost(plan, threat.p, mass=n.to(torch.float64))),
            "exact_cost": _listed(exact_cost),
            "const": _listed(used),
            "blur": self.blur,
            "divergence_units": "eps (GeomLoss divergence per channel, weighted by the channel's mass)",
        }
        return RunOutput(plan=plan, adversarial=None, iterations=iterations, info=info)

    def _start(self, x: torch.Tensor, todo: torch.Tensor, r: int, gens, k: int) -> torch.Tensor:
        """Return the initial plan logits ``[n, C, H*W, k*k]`` of the examples ``todo [n]`` in restart ``r``.

        "Stay" at ``init_logit``, the other offsets 0; restarts after the first add Gaussian noise of
        standard deviation ``init_noise`` drawn from each example's generator in ``gens``.
        """
        b, c, h, w = x.shape
        z = x.new_zeros(todo.numel(), c, h * w, k * k)
        z[..., T.stay_index(k)] = self.init_logit
        if r > 0 and self.init_noise > 0:
            draws = [torch.randn(c, h * w, k * k, generator=gens[int(i)], dtype=x.dtype) for i in todo]
            z = z + self.init_noise * torch.stack(draws).to(x.device)
        return z

    def _binary_search(self, search: _Search, x, labels, targets, todo, z, state: dict) -> torch.Tensor:
        """Run CW's search on ``c`` for the examples ``todo [n]`` from the logits ``z``.

        Returns the Adam steps run per example, long ``[n]``.
        """
        const = torch.full((todo.numel(),), self.initial_const, dtype=x.dtype, device=x.device)
        lo, hi = torch.zeros_like(const), torch.full_like(const, math.inf)
        steps = torch.zeros(todo.numel(), dtype=torch.long, device=x.device)
        for _ in range(self.binary_search_steps):
            # Every round restarts from the init (as CW): warm-starting would inherit logits that a
            # large constant drove far negative, from which Adam needs many steps to climb back.
            state.update(
                var=z.clone(), m=torch.zeros_like(z), v=torch.zeros_like(z), const=const,
                fooled_round=torch.zeros_like(const, dtype=torch.bool),
            )
            steps += iterate(
                search.rec, x[todo], labels[todo], None if targets is None else targets[todo],
                steps=self.steps, loss=self.loss, state=state, image=search.image, step=search.step,
                stop_on_success=False,
            )
            const, lo, hi = _next_const(const, lo, hi, state["fooled_round"])
        return steps

    def _final_plan(self, search: _Search, x: torch.Tensor, threat: WassersteinBall, eps: torch.Tensor):
        """Return the plan: the best candidate, else best attempt inside the ball, else the identity plan.

        With ``exact_refine``, refined by ``_refine``. Returns ``(plan [B, C, H*W, k*k] float64,
        exact_cost [B] float64 (NaN where not re-solved), const [B] (NaN where none))``.
        """
        b, c, h, w = x.shape
        best = search.best
        with torch.no_grad():
            have = torch.isfinite(best.score["cand"])
            some = have | torch.isfinite(best.score["att"])
            z = torch.where(have[:, None, None, None], best.z["cand"], best.z["att"])
            found = _plan(z, x.reshape(b, c, h * w), search.valid, search.box)
            plan = torch.where(some[:, None, None, None], found, T.identity_plan(x, threat.kernel_size))
            plan = plan.to(torch.float64)
            exact_cost = torch.full((b,), math.nan, dtype=torch.float64)
            used = torch.where(have, best.const["cand"], torch.nan)
            if self.exact_refine:
                plan, exact_cost, rescued = self._refine(x, plan, have, best, search.valid, threat, eps)
                used = torch.where(rescued, best.const["fool"], used)
        return plan, exact_cost, used

    def _refine(self, x, plan, have, best: _Best, valid, threat, eps):
        """Swap in exact optimal plans (POT) to the chosen images; try the fooling iterates exactly.

        Returns ``(plan, exact_cost [B], rescued [B])``: ``rescued`` marks examples whose only fooling
        iterate had a plan costlier than ``eps`` but an image inside the ball.
        """
        b, c, h, w = x.shape
        k = threat.kernel_size
        n = x.sum((1, 2, 3)).to(torch.float64)
        exact_cost = torch.full((b,), math.nan, dtype=torch.float64)
        rescued = torch.zeros_like(have)
        fool_only = ~have & torch.isfinite(best.score["fool"])
        if bool(fool_only.any()):
            # An example with no plan inside the ball may still have a fooling image inside it.
            box = None if threat.box is None else (h, w, k)
            alt = _plan(best.z["fool"][fool_only], x.reshape(b, c, h * w)[fool_only], valid, box)
            alt = alt.to(torch.float64)
            alt_plan, ok = exact_plan(x[fool_only], T.column_sums(alt, h, w), kernel_size=k, p=threat.p)
            alt_plan = alt_plan.to(plan.device)
            alt_cost = T.plan_cost(alt_plan, threat.p, mass=n[fool_only])
            use = ok.to(plan.device) & (alt_cost <= eps[fool_only].to(torch.float64))
            sel = fool_only.nonzero()[:, 0][use]
            plan[sel] = alt_plan[use]
            exact_cost[sel.cpu()] = alt_cost[use].cpu()
            rescued[sel] = True
        idx = have.nonzero()[:, 0]
        if idx.numel():
            sub = plan[idx]
            ex_plan, ok = exact_plan(x[idx], T.column_sums(sub, h, w), kernel_size=k, p=threat.p)
            ex_plan = ex_plan.to(plan.device)
            ex_cost = T.plan_cost(ex_plan, threat.p, mass=n[idx])
            ok = ok.to(plan.device)
            # The LP optimum is never costlier; the slack absorbs float rounding of the marginals.
            use = ok & (ex_cost <= T.plan_cost(sub, threat.p, mass=n[idx]) * (1 + 1e-6) + 1e-12)
            plan[idx[use]] = ex_plan[use]
            exact_cost[idx.cpu()] = torch.where(ok, ex_cost, torch.nan).cpu()
        return plan, exact_cost, rescued
