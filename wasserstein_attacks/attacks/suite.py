"""Attack ensembles: the worst case per example over attacks and radii, AutoAttack style.

A ``Suite`` runs its attacks at each radius of a grid (smallest radius first, or largest first: see
``order``); at each radius the attacks run in order, each only on the examples that are still robust.
Every adversarial example is certified by the common ending of
``Attack``; one with certified cost ``c`` lies inside every ball
of radius ``>= c``, so it breaks the example at all those radii:

    robust at r  <=>  clean-correct and no verified adversarial example of cost <= r * (1 + cost_tol).

``cost_tol`` is the threat model's relative cost tolerance (the one the certificate uses). Clean errors
are broken at radius 0. Each example keeps its cheapest verified break: the attack, the grid radius and
the certified cost describe it.

Named, versioned suites live in ``conf/suite/<name>.yaml`` (``load_suite``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..threat import WassersteinBall, check_images, check_labels
from .base import Attack, clean_logits, eval_mode

__all__ = ["Suite", "SuiteResult", "load_suite", "suite_from_config", "check_radii", "in_exact_sample"]


def check_radii(radii, name: str = "radii") -> tuple[float, ...]:
    """Return radii as an ascending tuple of distinct floats ``>= 0`` (units of eps).

    Raises ``ValueError`` naming ``name`` otherwise.
    """
    if isinstance(radii, (int, float)) and not isinstance(radii, bool):
        radii = [radii]
    try:
        values = [float(r) for r in radii]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of radii >= 0, e.g. [0.01, 0.05], got {radii!r}") from None
    if not values:
        raise ValueError(f"{name} must hold at least one radius >= 0, got an empty list")
    bad = [r for r in values if not np.isfinite(r) or r < 0]
    if bad:
        raise ValueError(f"{name} must be finite and >= 0, got {bad[0]!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a radius, got {values}")
    return tuple(sorted(values))


def in_exact_sample(indices: torch.Tensor | np.ndarray, fraction: float) -> np.ndarray:
    """Bool ``[B]``: whether each dataset index falls in the exact-LP sample of size ``fraction``.

    Depends only on the index (a hash), so shards, resumed runs and batch sizes pick the same examples.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"exact_fraction must be in [0, 1], got {fraction!r}")
    out = []
    for i in np.asarray(indices).tolist():
        h = hashlib.blake2b(f"exact-check:{int(i)}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(h, "little") / 2.0**64 < fraction)
    return np.array(out, dtype=bool)


@dataclass(frozen=True)
class SuiteResult:
    """Per-example outcome of ``Suite.run`` (all tensors on CPU, ``[B]`` unless stated).

    Attributes:
        radii: the grid, ascending (units of eps).
        attacks: labels of the suite's attacks, in order.
        indices: long, dataset index of each example.
        labels: long, true classes.
        clean_correct: bool, the model classifies the clean image correctly.
        broken_cost: float64, certified cost of the verified adversarial example that broke the example
            (units of eps); 0 for clean errors, ``+inf`` if no attack broke it.
        broken_attack: long, position in ``attacks`` of the attack that broke it; -1 if none or a clean error.
        broken_radius: float64, smallest grid radius at which it was broken; 0 for clean errors, ``+inf`` if
            never.
        adversarial: ``[B, C, H, W]``, the verified adversarial example (the clean image if none).
        exact_distance: float64, exact LP distance of the adversarial example for the sampled successes,
            NaN elsewhere (see ``in_exact_sample``).
        cost_tol: relative cost tolerance (from the threat model) used to decide "broken at radius r".
        timings: one dict per (radius, attack) call: radius, attack, attacked, broken, seconds; a pooled
            near-miss call (``near_miss_pass="pooled"``) gives one per radius it spans, with
            ``pooled: True`` and its seconds shared in proportion to the examples attacked there.
        attack_cost: float64 ``[B, A]``, the cheapest certified break found by each attack (``+inf`` where
            it found none; clean errors: 0 for every attack). Default: derived from ``broken_cost`` and
            ``broken_attack`` (each example broken by one attack at most, as in an ascending walk).

    """

    radii: tuple[float, ...]
    attacks: tuple[str, ...]
    indices: torch.Tensor
    labels: torch.Tensor
    clean_correct: torch.Tensor
    broken_cost: torch.Tensor
    broken_attack: torch.Tensor
    broken_radius: torch.Tensor
    adversarial: torch.Tensor
    exact_distance: torch.Tensor
    cost_tol: float
    timings: list[dict] = field(default_factory=list)
    attack_cost: torch.Tensor | None = None

    #: The per-example tensor fields (leading dimension ``B``), e.g. what a saved batch holds.
    ARRAYS: ClassVar[tuple[str, ...]] = (
        "indices", "labels", "clean_correct", "broken_cost", "broken_attack", "broken_radius",
        "adversarial", "exact_distance", "attack_cost",
    )

    def __post_init__(self):
        if self.attack_cost is None:
            cost = torch.full((self.broken_cost.numel(), len(self.attacks)), torch.inf, dtype=torch.float64)
            hit = self.broken_attack >= 0
            cost[hit.nonzero()[:, 0], self.broken_attack[hit]] = self.broken_cost[hit].double()
            cost[~self.clean_correct] = 0.0
            object.__setattr__(self, "attack_cost", cost)

    @property
    def broken_by(self) -> list[str | None]:
        """Label of the attack that broke each example, ``None`` where none did (and for clean errors)."""
        return [self.attacks[j] if j >= 0 else None for j in self.broken_attack.tolist()]

    def robust(self, radius: float, upto: int | None = None) -> torch.Tensor:
        """Bool ``[B]``: robust at ``radius``, counting only attacks ``0..upto`` (default: all)."""
        cost = self.broken_cost if upto is None else self.attack_cost[:, : upto + 1].amin(1)
        return self.clean_correct & ~(cost <= float(radius) * (1.0 + self.cost_tol))

    def counted_radius(self) -> torch.Tensor:
        """Float64 ``[B]``: the smallest grid radius at which each example counts as broken.

        ``r`` with ``broken_cost <= r (1 + cost_tol)``; 0 for clean errors, ``+inf`` if never broken. An
        exact re-check must test this claim: the example's exact distance within ``r (1 + cost_tol)``.
        """
        out = torch.full_like(self.broken_cost, torch.inf)
        for r in sorted(self.radii, reverse=True):
            inside = self.broken_cost <= r * (1.0 + self.cost_tol)
            out = torch.where(inside, torch.tensor(r, dtype=out.dtype), out)
        return torch.where(self.clean_correct, out, torch.zeros_like(out))

    def robust_accuracy(self, radius: float) -> float:
        """Fraction of examples clean-correct with no verified adversarial of certified cost ``<= radius``."""
        return float(self.robust(radius).double().mean())

    @property
    def clean_accuracy(self) -> float:
        """Fraction of examples classified correctly without attack."""
        return float(self.clean_correct.double().mean())

    def cumulative_robust_accuracy(self) -> dict[str, dict[float, float]]:
        """Robust accuracy per radius after attacks ``1..j`` for each attack ``j`` of the suite, in order.

        Later attacks ran only on what earlier ones left robust, so the curve of attack ``j`` is the
        suite's worst case restricted to its first ``j`` attacks; the last curve is the suite's.
        """
        return {
            a: {r: float(self.robust(r, upto=j).double().mean()) for r in self.radii}
            for j, a in enumerate(self.attacks)
        }

    @staticmethod
    def concatenate(parts: list[SuiteResult]) -> SuiteResult:
        """Join results of consecutive batches (same grid, attacks and tolerance) into one."""
        if not parts:
            raise ValueError("parts must hold at least one SuiteResult")
        head = parts[0]
        for p in parts[1:]:
            if (p.radii, p.attacks, p.cost_tol) != (head.radii, head.attacks, head.cost_tol):
                raise ValueError("parts must share radii, attacks and cost_tol")
        cat = {name: torch.cat([getattr(p, name) for p in parts]) for name in SuiteResult.ARRAYS}
        return SuiteResult(
            radii=head.radii,
            attacks=head.attacks,
            cost_tol=head.cost_tol,
            timings=[t for p in parts for t in p.timings],
            **cat,
        )


class _Walk:
    """Per-example state of a suite run: the cheapest verified break so far, per attack and overall."""

    def __init__(self, x: torch.Tensor, clean_correct: torch.Tensor, n_attacks: int, tol: float):
        b = x.shape[0]
        self.clean_correct, self.tol = clean_correct, tol
        self.broken_cost = torch.where(clean_correct, torch.inf, 0.0).double()
        self.broken_radius = self.broken_cost.clone()
        self.broken_attack = torch.full((b,), -1, dtype=torch.long)
        self.attack_cost = torch.full((b, n_attacks), torch.inf, dtype=torch.float64)
        self.attack_cost[~clean_correct] = 0.0
        self.adversarial = x.clone()
        self.resisted = torch.zeros(b, dtype=torch.bool)  # descending walk: resisted a larger ball
        self.last_plan: torch.Tensor | None = None  # [B, C, H*W, k*k]: where the last attack ended
        self.has_plan = torch.zeros(b, dtype=torch.bool)
        # Float64 [B]: the nearest any attack came to fooling the model at this radius (closeness).
        self.closest = torch.full((b,), -torch.inf, dtype=torch.float64)

    def robust_at(self, r: float) -> torch.Tensor:
        """Bool ``[B]``: clean-correct and not yet broken within ``r`` (with the cost tolerance)."""
        return self.clean_correct & ~(self.broken_cost <= r * (1.0 + self.tol))

    def keep_plan(self, idx: torch.Tensor, plan: torch.Tensor) -> None:
        """Remember where an attack ended on the examples ``idx`` (``plan [n, C, H*W, k*k]``)."""
        if self.last_plan is None:
            self.last_plan = plan.new_zeros((self.has_plan.shape[0], *plan.shape[1:]))
        self.last_plan[idx.to(plan.device)] = plan
        self.has_plan[idx] = True

    def record(self, idx: torch.Tensor, won: torch.Tensor, cost: torch.Tensor, adv: torch.Tensor, j: int,
               radius: torch.Tensor) -> None:
        """Keep the breaks ``won [n]`` that attack ``j`` found among the examples ``idx [n]``.

        ``idx`` is distinct where ``won``; ``radius`` (float64 ``[n]``) is each entry's grid radius.
        """
        hit = idx[won]
        self.broken_cost[hit] = cost[won]
        self.attack_cost[hit, j] = torch.minimum(self.attack_cost[hit, j], self.broken_cost[hit])
        self.broken_attack[hit] = j
        self.broken_radius[hit] = radius[won]
        self.adversarial[hit.to(adv.device)] = adv[won.to(adv.device)].to(self.adversarial.dtype)


def _cheapest(idx: torch.Tensor, won: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Return ``won [n]`` with one break per example of ``idx [n]``: its cheapest (first of equal ones)."""
    if idx.unique().numel() == idx.numel():
        return won
    keep = torch.zeros_like(won)
    seen: set[int] = set()
    for p in sorted(won.nonzero()[:, 0].tolist(), key=lambda q: (float(cost[q]), q)):
        if int(idx[p]) not in seen:
            seen.add(int(idx[p]))
            keep[p] = True
    return keep


def _target_classes(logits: torch.Tensor, labels: torch.Tensor, rank: int) -> torch.Tensor:
    """Return the ``rank``-th most likely wrong class (1 = the runner-up) of each example: long ``[B]``."""
    wrong = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), -torch.inf)
    return wrong.topk(rank, dim=1).indices[:, rank - 1]


class Suite:
    """A named, versioned, ordered ensemble of attacks.

    Args:
        name: suite name (e.g. ``"standard"``).
        version: integer version; changing the attacks or their settings means a new version.
        attacks: the attacks, in the order they run at each radius.
        labels: one distinct label per attack (default: the attacks' registry names, which must then be
            distinct).
        order: how the radius grid is walked.

            - ``"ascending"``: smallest radius first; an example broken at ``r`` is not attacked again
              (its adversarial example lies in every larger ball). An example that resists runs every
              attack's full budget again at each larger radius. Nothing is assumed: every example is
              attacked at every radius below its cheapest verified break.
            - ``"descending"``: largest radius first; an example is attacked at a smaller radius only if
              it was broken at the larger one, and one that resists every attack at a radius is not
              attacked at smaller radii (their balls lie inside the one it resisted). Each example spends
              a full budget at most once per attack instead of at every radius below its breaking point,
              which is several times cheaper on models that resist small radii; the price is the
              assumption that an attack that fails in a ball would also fail in the balls inside it
              (not true in general: kept for the frozen ``standard-v2``).
        targets: per attack, ``0`` (untargeted, the default) or ``n >= 1``: the attack runs targeted at
            each of the ``n`` most likely wrong classes of the clean image in turn (AutoAttack's
            targeted runs); an example is broken by the cheapest of those breaks.
        starts: per attack, ``"identity"`` (the default: from the clean image) or ``"previous"``: at each
            radius, each example begins from the plan at which the attack before it ended there (a warm
            start: a run that came close hands its plan on). Only attacks with ``supports_start``; the
            first attack starts from the identity.
        near_miss: per attack, ``None`` (the default: it attacks every example still robust) or a
            threshold ``tau`` (a float, usually a little below 0): at each radius it attacks only the
            examples still robust that an attack before it there came near to fooling, those whose
            ``closest`` (the untargeted DLR value of the nearest iterate: best other logit minus the
            true one over ``z_(1) - z_(3)``, > 0 when fooled) is above ``tau``: further runs spent where
            earlier ones came close (the README's ablation measures what that buys). Not for the first
            attack; an attack before it must report ``closest`` (``tracks_closest``: the plan attacks).
        near_miss_pass: when the near-miss attacks run.

            - ``"per_radius"`` (the default): at each radius, in their place in the list.
            - ``"pooled"``: once, after the whole walk, each in one call on every (example, radius) pair
              still robust whose nearest approach at that radius is above its threshold; each pair is
              attacked in its own ball (a per-example radius). Near misses are few at each radius, and a
              call's fixed cost per step weighs on small batches: one call instead of one per radius
              costs less (about 40 % less in the README's ablation). A break found there does not
              re-open the smaller radii to the other attacks (in a descending walk they were skipped as
              resisted). The near-miss attacks must come last.

    """

    def __init__(
        self,
        name: str,
        version: int,
        attacks: list[Attack],
        *,
        labels: list[str] | None = None,
        order: str = "ascending",
        targets: list[int] | None = None,
        starts: list[str] | None = None,
        near_miss: list[float | None] | None = None,
        near_miss_pass: str = "per_radius",
    ):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be an integer >= 1, got {version!r}")
        attacks = list(attacks)
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise ValueError("attacks must be a non-empty list of Attack instances")
        labels = [a.name for a in attacks] if labels is None else [str(s) for s in labels]
        if len(labels) != len(attacks) or len(set(labels)) != len(labels):
            raise ValueError(f"labels must give one distinct label per attack, got {labels}")
        if order not in ("ascending", "descending"):
            raise ValueError(f"order must be 'ascending' or 'descending', got {order!r}")
        targets = [0] * len(attacks) if targets is None else list(targets)
        bad = len(targets) != len(attacks) or any(isinstance(t, bool) or not isinstance(t, int) or t < 0
                                                  for t in targets)
        if bad:
            raise ValueError(f"targets must give one int >= 0 per attack ({len(attacks)}), got {targets}")
        starts = ["identity"] * len(attacks) if starts is None else [str(s) for s in starts]
        if len(starts) != len(attacks) or any(s not in ("identity", "previous") for s in starts):
            raise ValueError(f"starts must give 'identity' or 'previous' per attack ({len(attacks)}), "
                             f"got {starts}")
        for i, (label, attack, how) in enumerate(zip(labels, attacks, starts, strict=True)):
            if how == "previous" and (i == 0 or not attack.supports_start):
                why = "the first attack has no attack before it" if i == 0 else \
                    f"{type(attack).__name__} does not begin from a plan"
                raise ValueError(f"starts: {label} cannot start from the previous attack's plan: {why}")
        near_miss = [None] * len(attacks) if near_miss is None else list(near_miss)
        self._check_near_miss(near_miss, attacks, labels)
        self._check_near_miss_pass(near_miss_pass, near_miss, starts, labels)
        self.name, self.version, self.attacks, self.labels, self.order = name, version, attacks, labels, order
        self.targets, self.starts = targets, starts
        self.near_miss = [None if t is None else float(t) for t in near_miss]
        self.near_miss_pass = near_miss_pass

    @staticmethod
    def _check_near_miss(near_miss: list, attacks: list[Attack], labels: list[str]) -> None:
        if len(near_miss) != len(attacks):
            raise ValueError(f"near_miss must give None or a float threshold per attack ({len(attacks)}), "
                             f"got {near_miss}")
        for i, (label, tau) in enumerate(zip(labels, near_miss, strict=True)):
            if tau is None:
                continue
            if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not np.isfinite(tau):
                raise ValueError(f"near_miss: {label} needs None or a finite float threshold, got {tau!r}")
            if not any(a.tracks_closest for a in attacks[:i]):
                why = "it is the first attack" if i == 0 else \
                    "no attack before it reports how near it came (plan attacks do)"
                raise ValueError(f"near_miss: {label} cannot select near misses: {why}")

    @staticmethod
    def _check_near_miss_pass(how, near_miss: list, starts: list[str], labels: list[str]) -> None:
        if how not in ("per_radius", "pooled"):
            raise ValueError(f"near_miss_pass must be 'per_radius' or 'pooled', got {how!r}")
        if how == "per_radius":
            return
        pooled = [tau is not None for tau in near_miss]
        if not any(pooled):
            raise ValueError("near_miss_pass 'pooled' needs at least one near_miss attack (a threshold)")
        first = pooled.index(True)
        if not all(pooled[first:]):
            late = labels[first + pooled[first:].index(False)]
            raise ValueError(f"near_miss_pass 'pooled': the near-miss attacks must come last, but {late} "
                             f"follows {labels[first]}")
        for label, how_start, tau in zip(labels, starts, near_miss, strict=True):
            if tau is not None and how_start == "previous":
                raise ValueError(f"near_miss_pass 'pooled': {label} cannot start from the previous attack's "
                                 f"plan (a pooled call spans radii)")

    def __repr__(self) -> str:
        extra = f", targets={self.targets}" if any(self.targets) else ""
        extra += f", starts={self.starts}" if "previous" in self.starts else ""
        extra += f", near_miss={self.near_miss}" if any(t is not None for t in self.near_miss) else ""
        extra += f", near_miss_pass={self.near_miss_pass!r}" if self.near_miss_pass != "per_radius" else ""
        return (f"Suite(name={self.name!r}, version={self.version}, attacks={self.labels}, "
                f"order={self.order!r}{extra})")

    @property
    def losses(self) -> list[str]:
        """The losses the suite's attacks maximise, each once, in order (for ``check_model``)."""
        out = []
        for a in self.attacks:
            loss = getattr(a, "loss", None)
            if isinstance(loss, str) and loss not in out:
                out.append(loss)
        return out or ["margin"]

    def run(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        radii: tuple[float, ...] | list[float],
        *,
        threat: WassersteinBall,
        seed: int = 0,
        indices: torch.Tensor | None = None,
        exact_fraction: float = 0.0,
        progress: bool = True,
        gradient_model: torch.nn.Module | None = None,
    ) -> SuiteResult:
        """Worst case over the suite's attacks at each radius of ``radii``, per example.

        Args:
            model: classifier returning logits.
            images: ``[B, C, H, W]`` in ``[0, 1]``.
            labels: long ``[B]`` true classes.
            radii: radii (units of eps), walked in the suite's ``order``.
            threat: the ball's convention (``p``, ``kernel_size``, box, tolerances); its ``eps`` is ignored.
            seed: run seed; each attack call derives per-example seeds from it and ``indices``.
            indices: long ``[B]`` dataset indices (default ``arange(B)``): a shard made of the same batches
                reproduces the full run (other batches round differently: borderline examples can change).
            exact_fraction: fraction of examples (chosen by index hash) whose adversarial example is
                re-checked with the exact LP solver (``threat.distance``).
            progress: show a tqdm bar per (radius, attack) with the examples still robust.
            gradient_model: optional model the attacks take gradients on (e.g. a straight-through
                estimate of a thresholding defense); success is always judged on ``model``.

        Returns:
            A ``SuiteResult`` on CPU.

        """
        radii = check_radii(radii)
        if not isinstance(threat, WassersteinBall):
            raise ValueError(f"threat must be a WassersteinBall, got {type(threat).__name__}")
        check_images(images, "images")
        b = images.shape[0]
        check_labels(labels, b, "labels")
        if indices is None:
            indices = torch.arange(b)
        if not isinstance(indices, torch.Tensor) or tuple(indices.shape) != (b,):
            raise ValueError(f"indices must be a long tensor [B] = [{b}] of dataset indices")
        indices = indices.detach().cpu().long()
        x = images.detach()
        labels = labels.to(x.device)
        with eval_mode(model):
            logits = clean_logits(model, x)
        check_labels(labels, b, "labels", num_classes=logits.shape[1])
        threat.check_window(x.shape[-2], x.shape[-1])
        walk = _Walk(x, (logits.argmax(1) == labels).cpu(), len(self.attacks), threat.cost_tol)
        timings = []
        extra = {} if gradient_model is None else {"gradient_model": gradient_model}
        call = dict(model=model, seed=seed, extra=extra)
        pooled = self.near_miss_pass == "pooled"
        walked = [j for j in range(len(self.attacks)) if not (pooled and self.near_miss[j] is not None)]
        near = {}  # radius -> float64 [B]: the nearest approach there, for the pooled near-miss pass
        start = time.perf_counter()
        for r in radii if self.order == "ascending" else radii[::-1]:
            attacked = torch.zeros(b, dtype=torch.bool)
            walk.has_plan[:] = False  # plans of another radius belong to another ball
            walk.closest[:] = -torch.inf  # so do near misses
            for j in walked:
                label = self.labels[j]
                todo = walk.robust_at(r) & ~walk.resisted
                if self.near_miss[j] is not None:
                    todo &= walk.closest > self.near_miss[j]
                attacked |= todo
                n = int(todo.sum())
                if n == 0:
                    continue
                bar = tqdm(total=n, desc=f"r={r:g} {label}", unit="ex", leave=False, disable=not progress)
                with bar:
                    idx = todo.nonzero()[:, 0]
                    radius = torch.full((n,), r, dtype=torch.float64)
                    won, seconds, closest = self._attack(j, walk, idx, x, labels, logits, indices,
                                                         threat.with_eps(r), radius, **call)
                    if closest is not None:
                        walk.closest[idx] = torch.maximum(walk.closest[idx], closest)
                    bar.update(n)
                    still = int(walk.robust_at(r).sum())
                    bar.set_postfix(robust=f"{still}/{b}", elapsed=f"{time.perf_counter() - start:.1f}s")
                timings.append(dict(radius=r, attack=label, attacked=n, broken=int(won.sum()),
                                    seconds=seconds))
            if self.order == "descending":
                walk.resisted |= attacked & walk.robust_at(r)
            if pooled:
                near[r] = walk.closest.clone()
        if pooled:
            for j in range(len(walked), len(self.attacks)):
                timings += self._pooled(j, walk, near, radii, x, labels, logits, indices, threat, progress,
                                        call)
        return self._result(walk, radii, x, labels, indices, threat, exact_fraction, timings)

    def _pooled(self, j, walk: _Walk, near: dict, radii, x, labels, logits, indices, threat, progress,
                call) -> list[dict]:
        """Run near-miss attack ``j`` once on every near (example, radius) pair; return its timings.

        The pairs: still robust at ``r`` and nearest approach there (``near[r]``, float64 ``[B]``, raised
        in place) above the attack's threshold. The call's seconds are shared among its radii in proportion
        to the pairs at each.
        """
        at = {r: walk.robust_at(r) & (near[r] > self.near_miss[j]) for r in radii}
        idx = torch.cat([m.nonzero()[:, 0] for m in at.values()])
        radius = torch.cat([torch.full((int(m.sum()),), r, dtype=torch.float64) for r, m in at.items()])
        n = idx.numel()
        if n == 0:
            return []
        label = self.labels[j]
        ball = threat.with_eps(radius.to(x.device))
        bar = tqdm(total=n, desc=f"near misses {label}", unit="pair", leave=False, disable=not progress)
        with bar:
            won, seconds, closest = self._attack(j, walk, idx, x, labels, logits, indices, ball, radius,
                                                 **call)
            bar.update(n)
        out = []
        for r in radii:
            mine = radius == r
            if closest is not None:
                near[r][idx[mine]] = torch.maximum(near[r][idx[mine]], closest[mine])
            if bool(mine.any()):
                out.append(dict(radius=r, attack=label, attacked=int(mine.sum()), broken=int(won[mine].sum()),
                                seconds=seconds * float(mine.sum()) / n, pooled=True))
        return out

    def _attack(self, j, walk: _Walk, idx, x, labels, logits, indices, ball, radius, *, model, seed, extra):
        """Run attack ``j`` (each of its targeted runs) on the examples ``idx [n]``; record the breaks.

        ``ball``'s radius is a float or one per example; ``radius`` (float64 ``[n]``) is each entry's grid
        radius, recorded with its break. An example may appear more than once (at several radii): it keeps
        its cheapest break.
        Returns ``(broken, seconds, closest)``: bool ``[n]``, the entries whose break was kept; float64
        ``[n]``, the nearest approach over the runs (``None`` if the attack does not track it).
        """
        attack, dev_idx = self.attacks[j], idx.to(x.device)
        # An untargeted attack runs once; a targeted one once per target rank (1 = the runner-up class).
        runs = list(range(1, self.targets[j] + 1)) if self.targets[j] else [None]
        broken, seconds, closest = torch.zeros(idx.numel(), dtype=torch.bool), 0.0, None
        start = {}
        if self.starts[j] == "previous" and bool(walk.has_plan[idx].all()):
            start = {"start": walk.last_plan[dev_idx]}
        for rank in runs:
            targets = None if rank is None else _target_classes(logits[dev_idx], labels[dev_idx], rank)
            res = attack(model, x[dev_idx], labels[dev_idx], threat=ball, targets=targets, seed=seed,
                         indices=indices[idx], **extra, **start)
            if self.starts[j + 1:j + 2] == ["previous"]:  # only the next attack reads it
                walk.keep_plan(idx, res.plan)
            seconds += res.seconds
            if res.closest is not None:
                c = res.closest.cpu().double()
                closest = c if closest is None else torch.maximum(closest, c)
            cost = res.cost.cpu().double()
            # A targeted success is misclassified too; keep it only where it is cheaper than what we have.
            won = _cheapest(idx, res.success.cpu() & (cost < walk.broken_cost[idx]), cost)
            walk.record(idx, won, cost, res.adversarial, j, radius)
            broken |= won
        return broken, seconds, closest

    def _result(self, walk: _Walk, radii, x, labels, indices, threat, exact_fraction, timings) -> SuiteResult:
        b = x.shape[0]
        exact = torch.full((b,), float("nan"), dtype=torch.float64)
        check = torch.from_numpy(in_exact_sample(indices, exact_fraction)) & (walk.broken_attack >= 0)
        if bool(check.any()):
            sel = check.nonzero()[:, 0]
            exact[sel] = threat.distance(x[sel.to(x.device)].cpu(), walk.adversarial[sel.to(x.device)].cpu())
        return SuiteResult(
            radii=radii,
            attacks=tuple(self.labels),
            indices=indices,
            labels=labels.detach().cpu().long(),
            clean_correct=walk.clean_correct,
            broken_cost=walk.broken_cost,
            broken_attack=walk.broken_attack,
            broken_radius=walk.broken_radius,
            adversarial=walk.adversarial.detach().cpu(),
            exact_distance=exact,
            cost_tol=float(threat.cost_tol),
            timings=timings,
            attack_cost=walk.attack_cost,
        )


def _conf_dir() -> Path:
    # The Hydra configs ship inside the package (wasserstein_attacks/conf), so a wheel install finds them.
    return Path(__file__).resolve().parents[1] / "conf"


def suite_from_config(cfg) -> Suite:
    """Build a ``Suite`` from a composed suite config (``name``, ``version``, ``attacks`` mapping).

    ``cfg.attacks`` maps a label to an attack config (``_target_`` plus the constructor's keyword
    arguments), in run order; optional ``cfg.targets`` maps labels to their number of targeted runs
    (``Suite``'s ``targets``), optional ``cfg.starts`` maps labels to ``previous`` (``Suite``'s ``starts``),
    optional ``cfg.near_miss`` maps labels to thresholds (``Suite``'s ``near_miss``, run as
    ``cfg.near_miss_pass`` says), ``cfg.order`` is the walk. Raises ``ValueError`` naming the failing field.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for key in ("name", "version", "attacks"):
        if key not in cfg or cfg[key] is None:
            raise ValueError(f"suite.{key} is missing: a suite config needs name, version and attacks")
    if not OmegaConf.is_dict(cfg.attacks) or len(cfg.attacks) == 0:
        raise ValueError("suite.attacks must map labels to attack configs (conf/attack/<name>.yaml)")
    attacks = []
    for label, acfg in cfg.attacks.items():
        try:
            attack = instantiate(acfg, _convert_="all")
        except Exception as exc:  # noqa: BLE001 - Hydra wraps import and argument errors alike
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"suite.attacks.{label}: cannot build the attack: {reason}") from exc
        if not isinstance(attack, Attack):
            raise ValueError(
                f"suite.attacks.{label}: _target_ must build an Attack, got {type(attack).__name__}"
            )
        attacks.append(attack)
    order = str(cfg.get("order", "ascending"))
    if order not in ("ascending", "descending"):
        raise ValueError(f"suite.order must be 'ascending' or 'descending', got {order!r}")
    labels = [str(k) for k in cfg.attacks]
    targets = dict(cfg.get("targets") or {})
    unknown = sorted(set(map(str, targets)) - set(labels))
    if unknown:
        raise ValueError(f"suite.targets names attacks that are not in suite.attacks: {unknown}")
    counts = [targets.get(label, 0) for label in labels]
    starts = dict(cfg.get("starts") or {})
    unknown = sorted(set(map(str, starts)) - set(labels))
    if unknown:
        raise ValueError(f"suite.starts names attacks that are not in suite.attacks: {unknown}")
    near = dict(cfg.get("near_miss") or {})
    unknown = sorted(set(map(str, near)) - set(labels))
    if unknown:
        raise ValueError(f"suite.near_miss names attacks that are not in suite.attacks: {unknown}")
    try:
        return Suite(str(cfg.name), int(cfg.version), attacks, labels=labels, order=order, targets=counts,
                     starts=[str(starts.get(label, "identity")) for label in labels],
                     near_miss=[near.get(label) for label in labels],
                     near_miss_pass=str(cfg.get("near_miss_pass", "per_radius")))
    except ValueError as exc:
        raise ValueError(f"suite: {exc}") from None


def load_suite(name: str, conf_dir: str | Path | None = None) -> Suite:
    """Build the named, versioned suite of ``conf/suite/<name>.yaml`` (e.g. ``load_suite("standard-v1")``).

    Args:
        name: file name without ``.yaml``.
        conf_dir: config root (default: the project's ``conf/``).

    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    root = Path(conf_dir) if conf_dir is not None else _conf_dir()
    if not (root / "suite" / f"{name}.yaml").is_file():
        names = sorted(p.stem for p in (root / "suite").glob("*.yaml"))
        raise ValueError(f"suite: unknown suite {name!r}; available: {', '.join(names)}")
    # Composing needs Hydra's global state; keep a running application's state intact.
    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(root.resolve()), version_base="1.3"):
            cfg = compose(config_name=f"suite/{name}")
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
    return suite_from_config(cfg.suite if "suite" in cfg and "attacks" not in cfg else cfg)
