"""The committed adversarial examples re-checked exactly, as ``validate`` and ``verify`` do for every entry.

Each committed example must be a finite, non-negative image in the box (``box_abs``) whose exact
distance (``WassersteinBall.distance``, the transport LP) to its clean image lies inside the ball of
its counted radius, ``d <= r (1 + cost_rel)`` with ``r`` the smallest grid radius its certified cost
counts in (``examples.radius``), and within its certified cost, ``d <= cost (1 + cost_rel)``. The
ball is the entry's threat at the CANONICAL tolerances, whatever the entry states. Then the claimed
numbers must leave room for the examples: an example with certified cost ``c`` and an exact distance
inside its ball is broken at every radius ``r >= c``, so the claimed robust accuracy at ``r`` is at
most ``(clean correct - such examples) / n``. About 1 ms of LP per 1x28x28 example.
"""

from __future__ import annotations

import numpy as np
import torch

from ..threat import WassersteinBall
from .schema import CANONICAL_TOLERANCES

__all__ = ["canonical_ball", "exact_distances", "example_problems", "claims_problems"]

# Slack on claimed fractions, as in .schema (float noise of accuracies computed as means).
_SLACK = 1e-9
# Failing dataset indices named in one problem line.
_LIST = 20


def canonical_ball(threat: dict, eps) -> WassersteinBall:
    """Build the entry's threat model (``p``, window, box) at radius ``eps`` with the canonical tolerances."""
    tol = CANONICAL_TOLERANCES
    box = (0.0, 1.0) if threat["box"] is not None else None
    return WassersteinBall(eps, threat["p"], threat["kernel_size"], box, tol["mass_rel"], tol["cost_rel"],
                           tol["box_abs"])


def exact_distances(data: dict, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    """Exact distance (float64 ``[m]``, ``+inf`` for non-images) and in-box flag (bool ``[m]``) per example.

    ``arrays`` must hold ``sample_clean`` and ``sample_adversarial`` of equal shape ``[m, C, H, W]``
    with clean images in ``[0, 1]`` (``.schema.array_problems`` checks that first).
    """
    x = torch.from_numpy(arrays["sample_clean"]).to(torch.float64)
    y = torch.from_numpy(arrays["sample_adversarial"]).to(torch.float64)
    m = x.shape[0]
    dist = torch.full((m,), torch.inf, dtype=torch.float64)
    # NaN, inf or negative pixels are not images (nor masses): outside without an LP.
    sane = (torch.isfinite(y) & (y >= 0)).flatten(1).all(1) if m else torch.zeros(0, dtype=torch.bool)
    if sane.any():
        dist[sane] = canonical_ball(data["threat"], 1.0).distance(x[sane], y[sane])
    box_tol = CANONICAL_TOLERANCES["box_abs"]
    in_box = sane & (y <= 1 + box_tol).flatten(1).all(1) if data["threat"]["box"] is not None else sane
    return dist.numpy(), in_box.numpy()


def _listed(indices: list[int]) -> str:
    return f"{indices[:_LIST]}{' ...' if len(indices) > _LIST else ''}"


def example_problems(data: dict, dist: np.ndarray, in_box: np.ndarray) -> list[str]:
    """Problems of the committed examples given their exact distances ``dist`` and box flags ``in_box``."""
    ex = data["examples"]
    tol = CANONICAL_TOLERANCES["cost_rel"]
    radius = np.asarray([float(r) for r in ex["radius"]], dtype=np.float64)
    cost = np.asarray(ex["cost"], dtype=np.float64)
    index = np.asarray(ex["index"], dtype=np.int64)
    out = []
    if not in_box.all():
        out.append(f"examples: committed adversarial examples outside the box (or not images): dataset "
                   f"indices {_listed(index[~in_box].tolist())}")
    outside = in_box & ~(dist <= radius * (1 + tol))
    if outside.any():
        out.append(f"examples: exact LP distance above the counted radius r (1 + cost_rel), cost_rel "
                   f"{tol:g}: dataset indices {_listed(index[outside].tolist())} (exact / radius up to "
                   f"{float(np.max(dist[outside] / radius[outside])):.6g})")
    above = in_box & ~outside & ~(dist <= cost * (1 + tol))
    if above.any():
        out.append(f"examples: exact LP distance above the certified examples.cost (1 + cost_rel): dataset "
                   f"indices {_listed(index[above].tolist())}")
    return out


def _cap(cl: dict, proven: np.ndarray, costs: np.ndarray, radius: float) -> float:
    """Highest robust accuracy at ``radius`` that the proven committed examples leave possible."""
    broken = int(np.count_nonzero(proven & (costs <= radius)))
    return cl["clean_accuracy"] - broken / cl["n_examples"]


def claims_problems(data: dict, dist: np.ndarray) -> list[str]:
    """Claimed robust accuracies (table and curve) above what the committed examples allow (module doc)."""
    cl, ex = data["claimed"], data["examples"]
    tol = CANONICAL_TOLERANCES["cost_rel"]
    costs = np.asarray(ex["cost"], dtype=np.float64)
    radius = np.asarray([float(r) for r in ex["radius"]], dtype=np.float64)
    # Only examples proven inside their counted ball bound the claims; the others are reported already.
    proven = (dist <= radius * (1 + tol)) & (dist <= costs * (1 + tol))
    out = []
    for key, acc in cl["robust_accuracy"].items():
        cap = _cap(cl, proven, costs, float(key))
        if acc > cap + _SLACK:
            out.append(f"claimed.robust_accuracy[{key}] = {acc} exceeds {cap}, what the committed "
                       f"adversarial examples allow (clean accuracy minus those broken at {key}, exact LP)")
    for r, acc in zip(cl["curve"]["radius"], cl["curve"]["accuracy"], strict=True):
        cap = _cap(cl, proven, costs, r)
        if acc > cap + _SLACK:
            out.append(f"claimed.curve at radius {r}: {acc} exceeds {cap}, what the committed adversarial "
                       "examples allow")
            break  # one line for the curve: its points are neighbours
    return out
