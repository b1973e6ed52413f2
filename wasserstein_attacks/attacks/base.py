"""The attack contract: one template ``__call__``, a frozen result, the common verified ending.

Every attack subclasses ``Attack`` and implements ``_run``, which returns a transport plan in
the local layout (preferred) or an image. ``__call__`` then, for every attack alike
(the threat model's "Exactness" rule, ``wasserstein_attacks.threat``):

1. validates the inputs and puts the model in eval mode (restoring its mode afterwards);
2. repairs the plan: exact row sums ``x``; where the box or the cost does not hold, moves back along
   the plan toward the identity plan until they do (``result.repair`` says how far: 1 = untouched);
3. takes the adversarial image to BE the plan's column sums, certifies it in float64, and
   re-evaluates the model on exactly that image. An uncertified example is never a success.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import transport as T
from ..solvers.capacity import grid_overflow, overflow_slack
from ..solvers.rows import toward_identity
from ..threat import WassersteinBall, check_images, check_labels
from ..threat.exact import exact_plan

__all__ = [
    "Attack",
    "AttackResult",
    "RunOutput",
    "eval_mode",
    "example_seeds",
    "example_generators",
    "loss_per_example",
    "LOSSES",
    "check_logits",
    "predict",
    "clean_logits",
    "repair_plan",
    "iterate",
    "register",
    "get",
    "available",
]


_REGISTRY: dict[str, type[Attack]] = {}


def register(name: str):
    """Class decorator: make an attack available as ``get(name)`` (and set its ``name``)."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"attack name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names of the registered attacks, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs) -> Attack:
    """Instantiate the registered attack ``name`` with keyword arguments ``kwargs``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](**kwargs)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run ``model`` in eval mode, warn if it was in train mode, restore every submodule's mode after."""
    modes = [(m, m.training) for m in model.modules()]
    if model.training:
        warnings.warn("model was in train mode: evaluating in eval mode and restoring train mode afterwards",
                      stacklevel=3)
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def example_seeds(seed: int, indices: torch.Tensor) -> list[int]:
    """Per-example seeds from the run seed and each example's dataset index (stable across batching)."""
    out = []
    for i in indices.tolist():
        h = hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(h, "little") & ((1 << 63) - 1))
    return out


def example_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per example (draw per example, then stack, so batching does not matter)."""
    return [torch.Generator().manual_seed(s) for s in seeds]


#: The losses an attack can maximise (see ``loss_per_example``).
LOSSES = ("ce", "margin", "dlr")


def check_logits(logits, what: str = "model outputs") -> torch.Tensor:
    """Return ``logits`` if they are finite float logits ``[B, num_classes]``; else a one-line ``ValueError``.

    A model that outputs NaN would otherwise be scored as predicting class 0 (``argmax`` of NaN).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{what} must be float logits [B, num_classes], got {got}")
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(1).sum())
        n = logits.shape[0]
        raise ValueError(f"{what} are NaN or infinite on {bad} of {n} examples: the model is broken")
    return logits


def clean_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits ``[B, classes]`` (no grad), in chunks of ``batch_size``; ``ValueError`` if any is NaN/inf."""
    with torch.no_grad():
        chunks = range(0, images.shape[0], batch_size)
        return check_logits(torch.cat([model(images[i : i + batch_size]) for i in chunks]))


def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits ``[B, classes]`` (no grad), in chunks of ``batch_size``; ``ValueError`` on NaN/inf logits."""
    with torch.no_grad():
        chunks = range(0, images.shape[0], batch_size)
        return torch.cat([check_logits(model(images[i : i + batch_size])) for i in chunks])


def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes ``[B]`` (no grad), in chunks of ``batch_size``; ``ValueError`` on NaN/inf logits."""
    return predict_logits(model, images, batch_size).argmax(1)


def loss_per_example(
    logits: torch.Tensor, labels: torch.Tensor, loss: str, targets: torch.Tensor | None = None
):
    """Per-example loss to MAXIMISE, ``[B]``.

    ``loss="ce"``: cross-entropy of the true class (untargeted) or minus that of the target.
    ``loss="margin"``: best other logit minus the true logit (untargeted; > 0 means fooled), or target
    logit minus best other logit (targeted), as the difference-of-logits margin of AutoAttack's DLR
    without its scale normalisation.
    ``loss="dlr"``: that margin divided by the spread of the logits (Croce & Hein 2020's DLR; largest
    minus third-largest logit, or for a target its mean with the fourth), so it does not change when
    the logits are scaled: neither saturates like the cross-entropy of a confident model in float32.
    """
    if loss == "ce":
        return (
            -F.cross_entropy(logits, targets, reduction="none")
            if targets is not None
            else F.cross_entropy(logits, labels, reduction="none")
        )
    if loss == "margin":
        cls = targets if targets is not None else labels
        own = logits.gather(1, cls[:, None])[:, 0]
        other = logits.masked_fill(F.one_hot(cls, logits.shape[1]).bool(), float("-inf")).amax(1)
        return own - other if targets is not None else other - own
    if loss == "dlr":
        return loss_per_example(logits, labels, "margin", targets) / _dlr_scale(logits, targets is not None)
    raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")


def closeness(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How near each prediction is to a wrong class, ``[B]``: the untargeted DLR value.

    Best other logit minus the true one, over the spread ``z_(1) - z_(3)`` of the logits: > 0 exactly
    when the example is misclassified, and unchanged when the logits are scaled, so examples of one
    model (and of different models) compare. What a suite's near-miss runs select on.
    """
    return loss_per_example(logits, labels, "dlr")


def _dlr_scale(logits: torch.Tensor, targeted: bool) -> torch.Tensor:
    """DLR's denominator ``[B]``: ``z_(1) - z_(3)`` (untargeted) or ``z_(1) - (z_(3) + z_(4)) / 2``."""
    k = min(logits.shape[1], 4 if targeted else 3)
    top = logits.topk(k, dim=1).values
    low = (top[:, 2] + top[:, 3]) / 2 if targeted and k == 4 else top[:, -1]
    return (top[:, 0] - low).clamp_min(1e-12)


def repair_plan(
    x: torch.Tensor, plan: torch.Tensor, threat: WassersteinBall, *, max_rounds: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``plan`` feasible for ``threat`` around ``x``; only ever moves mass back to where it came from.

    1. Clean-up: NaN, negative and out-of-image entries are dropped; rows are rescaled to sum to ``x``
       (a row with no mass gets ``x`` on "stay").
    2. Box (local): a pixel that would exceed 1 keeps only the share of its incoming moved mass that
       fits; the rest returns to its sources' "stay" entries. Repeated until no pixel overflows (a
       source that receives mass back can overflow in turn); cost only decreases. Pixels of ``x`` at
       exactly 1 make a global scaling useless (any inflow overflows them), hence the local step.
    3. Cost and any remaining overflow (global): ``P <- I + s (P - I)`` with the largest ``s in [0, 1]``
       that keeps cost ``<= eps`` and the box.

    Args:
        x: ``[B, C, H, W]`` clean images in ``[0, 1]``.
        plan: ``[B, C, H*W, k*k]`` local plan (any dtype; entries need not be valid yet).
        threat: the ball: ``eps`` (per example), ``p``, ``kernel_size`` ``k`` and ``box`` (``None``:
            no ``[0, 1]`` box, so step 2 and the box bound of step 3 are skipped).
        max_rounds: most rounds of the local box repair (step 2), passed to
            ``grid_overflow``.

    Returns:
        ``(plan, kept)``: float64 feasible plan and, per example ``[B]``, the fraction of the moved
        (off-"stay") mass that survived the repair (1 = untouched).

    """
    b, c, h, w = x.shape
    k = threat.kernel_size
    stay = k * k // 2
    X = x.detach().to(plan.device, torch.float64)
    P = torch.nan_to_num(plan.detach().to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    P = P * T.valid_mask(h, w, k, device=P.device)
    rows = P.sum(-1)
    xf = X.reshape(b, c, h * w)
    ident = T.identity_plan(X, k)
    P = torch.where((rows > 0)[..., None], P * (xf / rows.clamp_min(1e-300))[..., None], ident)
    moved_before = (P.sum(-1) - P[..., stay]).sum(dim=(1, 2))
    if threat.box is not None:
        P = grid_overflow(P, h, w, max_rounds=max_rounds)
    n = X.sum(dim=(1, 2, 3))
    eps = threat.eps_for(b).to(P.device)
    cost = T.plan_cost(P, threat.p, mass=n)
    # Aim just inside the radius so that float32 rounding of the image cannot push it out.
    s = torch.where(
        cost > 0, (eps * (1 - 1e-6) / cost.clamp_min(1e-300)).clamp(max=1.0), torch.ones_like(cost)
    )
    if threat.box is not None:
        Y = T.column_sums(P, h, w)
        # A pixel of x at exactly 1 left a few ulps over 1 would otherwise scale the whole plan to identity.
        over = Y > 1 + overflow_slack(P.dtype)
        ratio = torch.where(over, (1 - X) / (Y - X).clamp_min(1e-300), torch.ones_like(Y))
        s = torch.minimum(s, ratio.flatten(1).amin(1) * (1 - 1e-7))
    s = s.clamp(0, 1)
    P = toward_identity(P, s[:, None, None].expand(P.shape[:-1]), xf)
    moved_after = (P.sum(-1) - P[..., stay]).sum(dim=(1, 2))
    kept = torch.where(
        moved_before > 0, moved_after / moved_before.clamp_min(1e-300), torch.ones_like(moved_before)
    )
    return P, kept


def iterate(
    model: torch.nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    steps: int,
    loss: str,
    state: dict[str, torch.Tensor],
    image: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    step: Callable[[dict[str, torch.Tensor], torch.Tensor, int, torch.Tensor], dict[str, torch.Tensor]],
    stop_on_success: bool = True,
    closest: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the one iterative loop shared by every gradient attack (PGD, Frank-Wolfe, Sinkhorn PGD).

    Per-example logic: each iteration evaluates the current iterate of the examples still active;
    with ``stop_on_success`` an example whose iterate fools the model is frozen there (the authors'
    whole-batch stopping is replaced by this, so a batch equals its examples one by one). Only
    active examples go through the model, so fooled examples cost nothing.

    Args:
        model: network returning logits ``[b, classes]``, differentiated through (an attack passes
            its gradient model here).
        x: ``[B, C, H, W]`` clean images in ``[0, 1]``; only its batch size and device are used.
        labels: long ``[B]`` true classes.
        targets: long ``[B]`` target classes (targeted attack), or ``None`` (untargeted).
        steps: iterations at most per example.
        loss: ``"ce"`` or ``"margin"``, the loss to maximise (see ``loss_per_example``).
        state: per-example tensors with leading dim ``B``; ``state["var"]`` is the variable the
            gradient is taken with respect to (a plan ``[B,C,H*W,k*k]`` or an image ``[B,C,H,W]``).
            Updated in place for the active examples. If it holds ``"objective"`` (``[B]``), ``step``
            finds there the loss of the iterate its gradient was taken at.
        image: ``sub_state -> [b, C, H, W]`` differentiable image of the (sub-)state.
        step: ``(sub_state, grad, t, idx) -> new sub_state`` for the examples ``idx`` (dataset
            positions in the batch) that are still active and not fooled; ``grad`` is the gradient of
            the loss (to maximise) w.r.t. ``sub_state["var"]``.
        stop_on_success: freeze an example at the first iterate that fools the model (misclassified,
            or classified as its target); otherwise every example runs all ``steps``.
        closest: optional float ``[B]``, raised in place to the largest ``closeness`` (untargeted DLR
            value) of any iterate evaluated: how near the run came to a misclassification.

    Returns:
        long ``[B]``: iterations run per example.

    """
    b = x.shape[0]
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    iters = torch.zeros(b, dtype=torch.long, device=x.device)
    for t in range(steps):
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        sub = {k: v[idx] for k, v in state.items()}
        var = sub["var"].detach().requires_grad_(True)
        sub["var"] = var
        with torch.enable_grad():
            logits = model(image(sub))
            obj = loss_per_example(logits, labels[idx], loss, None if targets is None else targets[idx])
            # A model whose input transform cuts the graph (a hard threshold) gives no gradient: zeros,
            # and the gradient-masking checks / a BPDA gradient_model are the remedy.
            (grad,) = (
                torch.autograd.grad(obj.sum(), var, allow_unused=True) if obj.requires_grad else (None,)
            )
            if grad is None:
                grad = torch.zeros_like(var)
        with torch.no_grad():
            if "objective" in sub:  # a step that adapts to the loss it reached (APGD's schedule) reads it
                sub["objective"] = obj.detach().to(sub["objective"].dtype)
            if closest is not None:
                near = closeness(logits.detach(), labels[idx]).to(closest.dtype)
                closest[idx] = torch.maximum(closest[idx], near)
            pred = logits.argmax(1)
            fooled = (pred == targets[idx]) if targets is not None else (pred != labels[idx])
            if stop_on_success:
                active[idx[fooled]] = False
                upd = ~fooled
            else:
                upd = torch.ones_like(fooled)
            if not bool(upd.any()):
                continue
            iters[idx[upd]] += 1
            sub = {k: v.detach()[upd] for k, v in sub.items()}
            new = step(sub, grad[upd], t, idx[upd])
            for k, v in new.items():
                state[k][idx[upd]] = v.to(state[k].dtype)
    return iters


@dataclass(frozen=True)
class RunOutput:
    """What an attack's ``_run`` returns.

    Attributes:
        plan: ``[B, C, H*W, k*k]`` local plan from ``x`` (preferred), or ``None``.
        adversarial: ``[B, C, H, W]`` image when the attack has no plan; the common ending then solves
            an exact plan to it (each channel's mass rescaled to ``x``'s).
        iterations: long ``[B]`` iterations used per example.
        info: anything else worth reporting (JSON-ready values).
        closest: optional float ``[B]``, the largest ``closeness`` any iterate reached (see
            ``AttackResult.closest``).

    """

    plan: torch.Tensor | None
    adversarial: torch.Tensor | None
    iterations: torch.Tensor
    info: dict = field(default_factory=dict)
    closest: torch.Tensor | None = None


@dataclass(frozen=True)
class AttackResult:
    """Outcome of an attack on a batch. Tensors are ``[B, ...]`` on the input's device.

    Attributes:
        adversarial: ``[B, C, H, W]`` images, every row certified inside ``threat`` around the input
            (the clean image where the attack found nothing certifiable).
        success: bool ``[B]``: certified and the model misclassifies (or hits the target).
        plan: ``[B, C, H*W, k*k]`` the plan that certifies ``adversarial`` (float32 unless the input is
            float64).
        cost: float64 ``[B]``: certified cost ``sum(P*c)/N`` (units of eps).
        certified: bool ``[B]``: the certificate of ``plan`` holds.
        iterations: long ``[B]``.
        repair: float64 ``[B]``: fraction of the moved mass kept by the common ending's repair
            (1 = no repair needed).
        clean_correct: bool ``[B]``: the model classifies the clean input correctly.
        threat: the ball.
        attack: registry name.
        seconds: wall time of the call.
        info: attack-specific diagnostics (e.g. gradient-masking checks).
        closest: float ``[B]``, how near the attack came to fooling the model: the largest ``closeness``
            (untargeted DLR value, > 0 when misclassified) of any iterate it evaluated, or of the returned
            example where larger; ``None`` for attacks that do not track it (``tracks_closest``).

    """

    adversarial: torch.Tensor
    success: torch.Tensor
    plan: torch.Tensor
    cost: torch.Tensor
    certified: torch.Tensor
    iterations: torch.Tensor
    repair: torch.Tensor
    clean_correct: torch.Tensor
    threat: WassersteinBall
    attack: str
    seconds: float
    info: dict = field(default_factory=dict)
    closest: torch.Tensor | None = None

    @property
    def robust(self) -> torch.Tensor:
        """Bool ``[B]``: correct on the clean input and not broken by this attack."""
        return self.clean_correct & ~self.success

    @property
    def robust_accuracy(self) -> float:
        """Fraction of the batch classified correctly and not broken (clean errors count as broken)."""
        return float(self.robust.float().mean())

    @property
    def success_rate(self) -> float:
        """Fraction of the batch with a certified successful adversarial example."""
        return float(self.success.float().mean())


class Attack:
    """Base class: subclasses set hyperparameters in a keyword-only ``__init__`` and implement ``_run``.

    Call as ``attack(model, images, labels, threat=WassersteinBall(eps=0.1))``. Randomness is seeded
    per example from ``seed`` and the example's dataset index, and stopping is per example, so a batch
    gives the same result as its examples one by one.
    """

    name: ClassVar[str] = "attack"
    #: Whether the attack can begin from a given plan (``start``) instead of the clean image.
    supports_start: ClassVar[bool] = False
    #: Whether its results report ``closest`` (how near each example came to a misclassification).
    tracks_closest: ClassVar[bool] = False

    def __call__(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        threat: WassersteinBall,
        targets: torch.Tensor | None = None,
        seed: int = 0,
        indices: torch.Tensor | None = None,
        gradient_model: torch.nn.Module | None = None,
        start: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` on ``images [B,C,H,W]`` in ``[0,1]`` with true ``labels [B]`` inside ``threat``.

        Args:
            model: network returning logits ``[B, classes]``; success is judged on it.
            images: ``[B, C, H, W]`` clean images in ``[0, 1]``.
            labels: long ``[B]`` true classes.
            threat: the ball; ``kernel_size`` must be an odd int (local plans), not ``None``.
            targets: optional target classes ``[B]`` (targeted attack).
            seed: run seed; per-example seeds derive from it and ``indices``.
            indices: dataset index of each example ``[B]`` (default ``arange(B)``).
            gradient_model: model whose gradients the attack follows (default ``model``), e.g. the same
                network with a straight-through (BPDA) input transform; success is always judged on
                ``model``.
            start: optional local plan ``[B, C, H*W, k*k]`` (as ``AttackResult.plan``, e.g. where another
                attack ended) that the first run begins from instead of the identity plan; only attacks
                with ``supports_start`` (the plan attacks) take it. It need not be feasible: the iterates
                are projected, and the common ending certifies whatever the attack returns.

        """
        began = time.perf_counter()
        if not isinstance(threat, WassersteinBall):
            raise ValueError(f"threat must be a WassersteinBall, got {type(threat).__name__}")
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
        check_images(images, "images")
        b = images.shape[0]
        check_labels(labels, b, "labels")
        if targets is not None:
            check_labels(targets, b, "targets")
        if threat.kernel_size is None:
            raise ValueError("attacks need local plans: threat.kernel_size must be an odd int, not None")
        threat.eps_for(b)
        threat.check_window(images.shape[-2], images.shape[-1])
        if indices is None:
            indices = torch.arange(b)
        elif not isinstance(indices, torch.Tensor) or indices.shape != (b,):
            raise ValueError(f"indices must be a tensor [B] = [{b}] of dataset indices")
        run_extra = {} if start is None else {"start": self._check_start(start, images, threat)}
        x = images.detach()
        labels = labels.to(x.device)
        targets = targets.to(x.device) if targets is not None else None
        gm = model if gradient_model is None else gradient_model
        with eval_mode(model), eval_mode(gm):
            logits = clean_logits(model, x)
            check_labels(labels, b, "labels", num_classes=logits.shape[1])
            if targets is not None:
                check_labels(targets, b, "targets", num_classes=logits.shape[1])
            clean_pred = logits.argmax(1)
            out = self._run(gm, x, labels, threat=threat, targets=targets, seeds=example_seeds(seed, indices),
                            **run_extra)
            result = self._finish(model, x, labels, targets, clean_pred, threat, out)
        return AttackResult(**result, threat=threat, attack=self.name, seconds=time.perf_counter() - began)

    def _check_start(self, start, images: torch.Tensor, threat: WassersteinBall) -> torch.Tensor:
        """Validate a starting plan: this attack takes one, right shape, finite; returned detached."""
        if not self.supports_start:
            raise ValueError(f"start: {type(self).__name__} does not begin from a plan (plan attacks do)")
        b, c, h, w = images.shape
        shape = (b, c, h * w, threat.kernel_size ** 2)
        if not isinstance(start, torch.Tensor) or tuple(start.shape) != shape:
            got = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
            raise ValueError(f"start must be a local plan tensor [B, C, H*W, k*k] = {list(shape)}, got {got}")
        if not bool(torch.isfinite(start).all()):
            raise ValueError("start must be finite (no NaN or inf entries)")
        return start.detach().to(images.device, images.dtype)

    def _finish(self, model, x, labels, targets, clean_pred, threat, out: RunOutput) -> dict:
        b, c, h, w = x.shape
        plan = out.plan
        if plan is None:
            if out.adversarial is None:
                raise RuntimeError(f"{type(self).__name__}._run returned neither a plan nor an image")
            adv = out.adversarial.detach().to(torch.float64).clamp_min(0)
            # Rescale each channel to the source mass, then solve the exact plan to the attack's image.
            src_mass = x.to(torch.float64).sum((2, 3), keepdim=True)
            scale = src_mass / adv.sum((2, 3), keepdim=True).clamp_min(1e-300)
            plan, ok = exact_plan(x, adv * scale, kernel_size=threat.kernel_size, p=threat.p, mass_tol=1e-6)
            plan = plan.to(x.device)
        plan64, s = repair_plan(x, plan, threat)
        plan_out = plan64.to(x.dtype)
        adv = T.column_sums(plan_out, h, w)
        if threat.box is not None:
            adv = adv.clamp(0, 1)
        cert = threat.certify(x, adv, plan_out)
        certified = cert.feasible.to(x.device)
        # An example whose certificate fails (numerically) falls back to the clean image.
        if not bool(certified.all()):
            ident = T.identity_plan(x, threat.kernel_size)
            m = certified[:, None, None, None]
            plan_out = torch.where(m, plan_out, ident)
            adv = torch.where(m, adv, x)
        logits = predict_logits(model, adv)
        pred = logits.argmax(1)
        fooled = (pred == targets) if targets is not None else (pred != labels)
        success = fooled & certified
        closest = None
        if out.closest is not None:
            closest = torch.maximum(out.closest.to(x.device).double(), closeness(logits, labels).double())
        return dict(
            adversarial=adv,
            success=success,
            plan=plan_out,
            cost=cert.cost.to(x.device),
            certified=certified,
            iterations=out.iterations.to(x.device),
            repair=s.to(x.device),
            clean_correct=(clean_pred == labels),
            info=dict(out.info),
            closest=closest,
        )

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
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"
