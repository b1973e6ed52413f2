"""``results.json`` and the certified-accuracy plot of a certification run (``wattack-certify``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..._util import radius_key, save_png, write_json
from .certify import CertifyResult
from .noise import FlowNoise

__all__ = ["certification_results", "write_certification", "plot_certified_accuracy"]


def certification_results(
    result: CertifyResult,
    labels: torch.Tensor,
    *,
    radii,
    noise: FlowNoise,
    n0: int,
    n: int,
    alpha: float,
    seed: int,
    indices: torch.Tensor,
    extra: dict | None = None,
) -> dict:
    """Summarise a CERTIFY run as JSON-ready data: per-example radii (units of eps) and certified accuracy.

    ``certified_accuracy[r]`` is the fraction of examples whose certified class is the label with
    radius strictly above ``r`` (the ball of radius ``r`` is then covered); ``max_certifiable_radius``
    is the ceiling ``n`` draws allow at level ``alpha`` (relative noise; ``null`` otherwise).
    """
    y = labels.cpu()
    acc = result.certified_accuracy(y, radii)
    ceiling = noise.max_radius(n, alpha) / 2**0.5 if noise.relative else None
    return {
        "noise": noise.describe(),
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "seed": seed,
        "p": 1,
        "radius_units": "eps: fraction of the image's mass x Euclidean pixel distance (p = 1), any window",
        "radii": [float(r) for r in radii],
        "certified_accuracy": {radius_key(r): a for r, a in acc.items()},
        "smoothed_accuracy": float((result.prediction == y).double().mean()),
        "abstentions": int(result.abstain.sum()),
        "abstention_rate": float(result.abstain.double().mean()),
        "max_certifiable_radius": ceiling,
        "n_examples": int(y.shape[0]),
        "seconds": result.seconds,
        "examples": {
            "index": indices.tolist(),
            "label": y.tolist(),
            "prediction": result.prediction.tolist(),
            # Draws (of n) giving the class the n0 draws chose: p_lower = Clopper-Pearson(count, n, alpha).
            "selected": result.selected.tolist(),
            "count": result.counts.gather(1, result.selected[:, None]).squeeze(1).tolist(),
            "p_lower": result.p_lower.tolist(),
            "radius_flow": result.radius_flow.tolist(),
            "radius": result.radius.tolist(),
        },
        **(extra or {}),
    }


def plot_certified_accuracy(results: dict, path: str | Path) -> Path:
    """Certified accuracy against radius (the grid, and the curve over every example's radius) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = results["examples"]
    correct = sorted(r for r, p, y in zip(ex["radius"], ex["prediction"], ex["label"], strict=True) if p == y)
    total = max(len(ex["label"]), 1)
    top = max([*results["radii"], *(correct[-1:] or [0.0])]) * 1.05 or 1.0
    xs = [0.0] + correct + [top]
    # Certified accuracy at r: correct examples with radius > r; a step down just after each radius.
    ys = [len(correct) / total] + [(len(correct) - i - 1) / total for i in range(len(correct))] + [0.0]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(xs, ys, where="post", lw=1.5, label="certified accuracy")
    grid = results["radii"]
    ax.plot(grid, [results["certified_accuracy"][radius_key(r)] for r in grid], "o", label="grid radii")
    if results.get("max_certifiable_radius") is not None:
        ax.axvline(
            results["max_certifiable_radius"], ls=":", color="gray", label=f"ceiling (n={results['n']})"
        )
    nz = results["noise"]
    ax.set_title(
        f"{nz['name']} flow noise, sigma={nz['sigma']}, n={results['n']}, alpha={results['alpha']}",
        fontsize=9,
    )
    ax.set_xlabel("radius eps (W1, Euclidean, fraction of mass x pixels)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    save_png(fig, path)
    return path


def write_certification(results: dict, run_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json`` and ``certified_accuracy.png`` (both atomically) into ``run_dir``."""
    run_dir = Path(run_dir)
    return {
        "results": write_json(run_dir / "results.json", results),
        "plot": plot_certified_accuracy(results, run_dir / "certified_accuracy.png"),
    }
