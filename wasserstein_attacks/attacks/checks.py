"""Gradient-masking checks to run before attacking, and straight-through (BPDA) gradient models.

A gradient attack is only as good as the gradients it follows. ``check_model`` spends a couple
of forward/backward passes on a few examples to flag the usual reasons an attack silently fails
(Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018):

- the model was left in train mode (dropout / batch-norm statistics change the function);
- the forward pass is random (two passes on the same input differ), e.g. a noise defense;
- the outputs look like probabilities instead of logits (softmax saturates the gradients);
- input gradients are zero or vanishing, e.g. a thresholding (binarize) input transform;
- the outputs are not finite (an error: a NaN model would otherwise be scored as predicting class 0).

For an input transform with no useful gradient, build a BPDA gradient model with
``StraightThrough`` (forward = the transform, backward = identity) and pass it as
``gradient_model=`` to any attack; success is still judged on the real model::

    model = torch.nn.Sequential(binarize, net)                      # what is evaluated
    bpda = torch.nn.Sequential(StraightThrough(binarize), net)      # what gradients are taken on
    result = get("frank_wolfe", steps=300)(model, x, y, threat=ball, gradient_model=bpda)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..threat import check_images, check_labels
from .base import LOSSES, check_logits, eval_mode, loss_per_example

__all__ = ["ModelChecks", "check_model", "StraightThrough", "straight_through"]


@dataclass(frozen=True)
class ModelChecks:
    """Outcome of ``check_model`` (all values JSON-ready).

    Attributes:
        n_examples: examples the checks used.
        was_training: the model (or one of its submodules) was in train mode; the checks ran in eval
            mode and the modes were restored.
        stochastic: two forward passes on the same input (eval mode) differ (beyond a relative
            1e-5 / absolute 1e-6 tolerance).
        max_output_difference: largest absolute difference between those two passes (logit units).
        probabilities: the outputs look like probabilities (rows non-negative summing to 1, or all
            values in ``[0, 1]``) rather than logits.
        zero_gradient_fraction: the largest, over ``losses``, fraction of examples whose input gradient
            of that loss has every entry of absolute value ``<= tiny`` (exactly zero for a thresholding
            transform; cross-entropy also vanishes in float32 on very confident examples).
        nonfinite: some input gradient is NaN or infinite (non-finite outputs are an error).
        losses: the losses whose input gradients were checked (the losses the attacks will follow).
        zero_gradient_fractions: that fraction per loss, in the order of ``losses``.
        tiny: the vanishing-gradient threshold (loss units per unit of pixel value).
        warnings: one human-readable line per problem found (empty when none).

    """

    n_examples: int
    was_training: bool
    stochastic: bool
    max_output_difference: float
    probabilities: bool
    zero_gradient_fraction: float
    nonfinite: bool
    losses: list[str]
    zero_gradient_fractions: list[float]
    tiny: float
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check raised a warning."""
        return not self.warnings

    def as_dict(self) -> dict:
        """Return the checks as a JSON-ready dict (plain floats, bools, ints, strings)."""
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        d["losses"] = list(self.losses)
        d["zero_gradient_fractions"] = list(self.zero_gradient_fractions)
        d["ok"] = self.ok
        return d


def _input_gradient(objective: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient of ``objective.sum()`` with respect to ``x`` (zeros where the graph does not reach ``x``)."""
    # A graph cut inside the model (e.g. ``(x > 0.5).float()`` before frozen weights) leaves nothing to
    # differentiate: that is a zero input gradient, not an error.
    if not objective.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(objective.sum(), x, allow_unused=True, retain_graph=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def _check_arguments(model, images, labels, max_examples, loss, tiny) -> list[str]:
    """Validate the arguments of ``check_model``; return the losses to check as a list."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    check_images(images, "images")
    check_labels(labels, images.shape[0], "labels")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be an int >= 1, got {max_examples!r}")
    losses = [loss] if isinstance(loss, str) else list(loss)
    if not losses or any(v not in LOSSES for v in losses):
        raise ValueError(f"loss must be one of {LOSSES} or a non-empty list of them, got {loss!r}")
    if not (isinstance(tiny, (int, float)) and math.isfinite(tiny) and tiny >= 0):
        raise ValueError(f"tiny must be a finite float >= 0, got {tiny!r}")
    return losses


def _train_mode_message(model: torch.nn.Module) -> str:
    """Return the warning for a model (or a submodule of it) found in train mode."""
    where = "model" if model.training else "a submodule of the model"
    return f"{where} was in train mode: checks ran in eval mode and the modes were restored"


def _two_passes(model, x: torch.Tensor, y: torch.Tensor, losses: list[str], seed: int):
    """Two eval-mode forward passes on ``x [B, C, H, W]`` and the input gradient of each loss.

    The global RNG is seeded with ``seed`` inside a fork (the caller's state is untouched); the second
    pass continues the first one's stream. Returns ``(out1 [B, K], out2 [B, K], grads)``, ``grads`` one
    ``[B, C, H, W]`` tensor per loss. Raises ``ValueError`` on outputs that are not finite logits.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            out1 = model(xg)
            if not isinstance(out1, torch.Tensor) or out1.dim() != 2 or out1.shape[0] != x.shape[0]:
                shape = tuple(out1.shape) if isinstance(out1, torch.Tensor) else type(out1).__name__
                raise ValueError(f"model must return logits [B, num_classes], B = {x.shape[0]}; got {shape}")
            k = out1.shape[1]
            if int(y.min()) < 0 or int(y.max()) >= k:
                raise ValueError(f"labels must be class indices in [0, {k - 1}] for a model with {k} outputs")
            check_logits(out1, "model outputs on clean images")
            grads = [_input_gradient(loss_per_example(out1, y, v), xg) for v in losses]
        with torch.no_grad():
            out2 = model(x)
    check_logits(out2, "model outputs on clean images")
    return out1.detach(), out2, grads


def _nonfinite_check(grads: list[torch.Tensor]) -> tuple[bool, list[str]]:
    """Whether some input gradient is NaN or infinite, and the warnings (at most one)."""
    nonfinite = not all(bool(torch.isfinite(g).all()) for g in grads)
    return nonfinite, ["input gradients are NaN/inf on clean images"] if nonfinite else []


def _stochastic_check(out1: torch.Tensor, out2: torch.Tensor) -> tuple[bool, float, list[str]]:
    """Whether two passes' logits ``[B, K]`` differ, their largest difference (logit units), the warnings."""
    # NaN in the same place in both passes is a broken model, not a random one; the tolerance keeps
    # nondeterministic GPU kernels (last-bit differences) from passing for a randomised defense.
    same = torch.isclose(out1, out2, rtol=1e-5, atol=1e-6, equal_nan=True)
    both = torch.isfinite(out1) & torch.isfinite(out2)
    diff = torch.where(both, out1 - out2, torch.zeros_like(out1)).abs()
    max_diff = float(diff.max()) if diff.numel() else 0.0
    stochastic = not bool(same.all())
    if not stochastic:
        return False, max_diff, []
    return True, max_diff, [
        f"forward pass is random (two passes on the same input differ by up to {max_diff:.3g}): "
        "attack the expectation (EOT) or fix the randomness; single-sample results are not worst case"
    ]


def _probabilities_check(out: torch.Tensor) -> tuple[bool, list[str]]:
    """Whether the finite rows of ``out [B, K]`` look like probabilities, and the warnings."""
    fin = out[torch.isfinite(out).all(1)]
    simplex = bool(fin.numel()) and bool((fin >= 0).all()) and bool(((fin.sum(1) - 1).abs() <= 1e-3).all())
    unit = bool(fin.numel()) and bool(((fin >= 0) & (fin <= 1)).all())
    if not (simplex or unit):
        return False, []
    what = "rows are non-negative and sum to 1" if simplex else "all outputs lie in [0, 1]"
    return True, [
        f"outputs look like probabilities, not logits ({what}): pass the model without its final "
        "softmax/sigmoid, whose saturation hides the gradients"
    ]


def _vanishing_check(grads: list[torch.Tensor], losses: list[str], tiny: float):
    """Per loss, the fraction of examples whose input gradient ``[B, C, H, W]`` is all ``<= tiny``.

    Returns ``(fractions, warnings)``: one fraction per loss, one warning per loss with a fraction > 0.
    """
    largest = [g.flatten(1).abs().nan_to_num(nan=0.0).amax(1) for g in grads]  # per example
    fractions = [float((m <= tiny).float().mean()) for m in largest]
    found = [
        f"input gradient of the {name} loss vanishes (all |grad| <= {tiny:g}) on {fraction:.0%} of "
        "the examples: gradient masking (a thresholding input transform: use a straight-through "
        "gradient model, StraightThrough, as gradient_model=) or saturation (use the margin loss)"
        for name, fraction in zip(losses, fractions, strict=True)
        if fraction > 0
    ]
    return fractions, found


def check_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    max_examples: int = 8,
    loss: str | Sequence[str] = "margin",
    tiny: float = 1e-10,
) -> ModelChecks:
    """Cheap gradient-masking checks: two forward passes and one backward pass on a few examples.

    Runs the model in eval mode and restores every submodule's mode afterwards. Each problem found
    is raised as a ``UserWarning`` and listed in ``ModelChecks.warnings``.

    Args:
        model: classifier returning logits ``[B, K]`` for images ``[B, C, H, W]`` in ``[0, 1]``.
        images: ``[B, C, H, W]`` images in ``[0, 1]``; the first ``max_examples`` are used.
        labels: integer ``[B]`` true classes.
        seed: seeds the global RNG (inside a fork, so the caller's RNG state is untouched) before
            the first pass, so the stochasticity check is reproducible; the second pass continues
            the same stream, so a random model gives a different output.
        max_examples: how many examples to use (the cost is linear in it).
        loss: the loss, or the losses, whose input gradients are checked: pass the ones the attacks
            will follow (``losses``). ``"margin"`` (default:
            best other logit minus the true logit; its gradient is zero only when the logits are
            locally constant in the input, as behind a threshold), ``"ce"`` (also vanishes when the
            softmax saturates in float32 on very confident examples, which stalls a cross-entropy
            attack) or ``"dlr"``.
        tiny: an example's gradient counts as vanishing when all its entries have absolute value
            ``<= tiny`` (loss units per unit of pixel value).

    Returns:
        ``ModelChecks``.

    Raises:
        ValueError: bad arguments, or outputs that are not finite logits ``[B, num_classes]``.

    """
    losses = _check_arguments(model, images, labels, max_examples, loss, tiny)
    x = images[:max_examples].detach().clone()
    y = labels[:max_examples].to(x.device)
    found: list[str] = []

    def flag(msgs: list[str], warn: bool = True) -> None:
        for msg in msgs:
            found.append(msg)
            if warn:
                warnings.warn(msg, stacklevel=3)

    was_training = any(m.training for m in model.modules())
    if was_training:
        # eval_mode (in _two_passes) already warns about a top-level module in train mode; a submodule
        # left in train mode is as bad and gets its own warning.
        flag([_train_mode_message(model)], warn=not model.training)
    out1, out2, grads = _two_passes(model, x, y, losses, seed)
    nonfinite, msgs = _nonfinite_check(grads)
    flag(msgs)
    stochastic, max_diff, msgs = _stochastic_check(out1, out2)
    flag(msgs)
    probabilities, msgs = _probabilities_check(out1)
    flag(msgs)
    fractions, msgs = _vanishing_check(grads, losses, tiny)
    flag(msgs)
    return ModelChecks(
        n_examples=int(x.shape[0]),
        was_training=was_training,
        stochastic=stochastic,
        max_output_difference=max_diff,
        probabilities=probabilities,
        zero_gradient_fraction=max(fractions),
        nonfinite=nonfinite,
        losses=losses,
        zero_gradient_fractions=fractions,
        tiny=float(tiny),
        warnings=found,
    )


class _StraightThroughFn(torch.autograd.Function):
    """Forward: the precomputed transform output; backward: the incoming gradient unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
        ctx.dtype = x.dtype
        return transformed.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.to(ctx.dtype), None


Transform = Callable[[torch.Tensor], torch.Tensor]


def straight_through(transform: Transform) -> Transform:
    """Wrap an input transform so that its forward value is kept and its gradient is the identity (BPDA).

    Backward Pass Differentiable Approximation (Athalye et al. 2018, Sec. 4.1): for a transform
    ``g`` with ``g(x) ~ x`` whose gradient is useless (zero almost everywhere, like a threshold),
    use ``g(x)`` in the forward pass and ``d g / d x = I`` in the backward pass.

    Args:
        transform: maps ``[B, C, H, W]`` to a tensor of the same shape (e.g. binarisation).

    Returns:
        A function ``x -> transform(x)`` whose backward pass is the identity.

    """
    if not callable(transform):
        got = type(transform).__name__
        raise ValueError(f"transform must be a callable [B,C,H,W] -> [B,C,H,W], got {got}")

    def apply(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = transform(x.detach())
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"transform must return a tensor of the input's shape {tuple(x.shape)} for a "
                f"straight-through gradient, got {got}"
            )
        return _StraightThroughFn.apply(x, out)

    return apply


class StraightThrough(torch.nn.Module):
    """Module form of ``straight_through``: forward = ``transform``, backward = identity.

    Put it in front of the classifier to build a BPDA gradient model, then pass that model as
    ``gradient_model=`` to an attack (the attack follows its gradients; success is judged on the
    real model): ``Sequential(StraightThrough(binarize), net)``. A transform that is a module is
    registered as a submodule, so ``.eval()``, ``.to()`` reach it.

    Args:
        transform: ``[B, C, H, W] -> [B, C, H, W]`` callable or module.

    """

    def __init__(self, transform: Transform):
        super().__init__()
        self._apply_st = straight_through(transform)
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``transform(x)`` with identity gradient; ``x`` is ``[B, C, H, W]``."""
        return self._apply_st(x)
