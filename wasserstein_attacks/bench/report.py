"""What a person sees of a run: the plots, the printed summary and the optional wandb log.

Nothing here changes ``results.json``; the PNGs are written atomically beside it.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .._util import radius_key, save_png
from ..attacks.suite import SuiteResult

__all__ = ["plot_curve", "plot_examples", "print_summary", "warn_exact_check", "log_wandb"]


def plot_curve(results: dict, path: Path) -> None:
    """Robust accuracy against radius (cumulative per attack, and the suite's worst case) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radii = results["radii"]
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(results["per_attack_robust_accuracy"])
    for j, name in enumerate(names[:-1]):
        curve = results["per_attack_robust_accuracy"][name]
        label = "after " + " + ".join(names[: j + 1])
        ax.plot(radii, [curve[radius_key(r)] for r in radii], marker="o", lw=1, alpha=0.8, label=label)
    ax.plot(
        radii,
        [results["robust_accuracy"][radius_key(r)] for r in radii],
        marker="o",
        lw=2.5,
        color="black",
        label=f"suite worst case ({' + '.join(names)})",
    )
    ax.axhline(results["clean_accuracy"], ls=":", color="gray", label="clean accuracy")
    if all(r > 0 for r in radii) and max(radii) / min(radii) > 5:
        ax.set_xscale("log")
    t = results["threat"]
    ax.set_xlabel(f"radius eps ({t['name']}; fraction of mass x pixel distance^{t['p']})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(
        f"{results['model']['name']} / {results['suite']['name']} v{results['suite']['version']} "
        f"(n={results['n_examples']})",
        fontsize=9,
    )
    ax.legend(
        title="cumulative: each attack runs on what the earlier ones left", fontsize=7, title_fontsize=7
    )
    ax.grid(alpha=0.3)
    save_png(fig, path)


def plot_examples(res: SuiteResult, clean: torch.Tensor, path: Path, n: int = 8) -> None:
    """Clean / adversarial / difference images of up to ``n`` broken examples (clean ``[N, C, H, W]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = (res.broken_attack >= 0).nonzero()[:, 0][:n].tolist()
    if not picked:
        picked = list(range(min(n, clean.shape[0])))
    fig, axes = plt.subplots(3, len(picked), figsize=(1.6 * len(picked), 5.0), squeeze=False)
    by = res.broken_by
    for col, i in enumerate(picked):
        x, y = clean[i], res.adversarial[i]
        diff = (y - x).sum(0).numpy()
        lim = max(float(np.abs(diff).max()), 1e-6)
        show = (lambda t: t[0].numpy()) if x.shape[0] == 1 else (lambda t: t.permute(1, 2, 0).numpy())
        axes[0, col].imshow(show(x), cmap="gray", vmin=0, vmax=1)
        axes[1, col].imshow(show(y), cmap="gray", vmin=0, vmax=1)
        axes[2, col].imshow(diff, cmap="bwr", vmin=-lim, vmax=lim)
        cost = float(res.broken_cost[i])
        axes[0, col].set_title(f"#{int(res.indices[i])} y={int(res.labels[i])}", fontsize=7)
        axes[1, col].set_title(
            f"{by[i] or '-'}\ncost {cost:.3g}" if math.isfinite(cost) else "not broken", fontsize=7
        )
        for row in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    for row, name in enumerate(("clean", "adversarial", "difference")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    save_png(fig, path)


def print_summary(results: dict, paths: dict, run_dir: Path) -> None:
    """Print the accuracy table, the exact LP re-check and where the outputs are."""
    names = list(results["per_attack_robust_accuracy"])
    short = [n[:14] for n in names]
    head = f"{'radius':>8}  {'robust':>7}  " + "  ".join(f"{'+' + s:>15}" for s in short)
    lines = [
        f"{results['model']['name']} on {results['dataset'].get('name')} (n={results['n_examples']}), suite "
        f"{results['suite']['name']} v{results['suite']['version']}, threat {results['threat']['name']}",
        f"clean accuracy {results['clean_accuracy']:.4f}",
        head,
    ]
    for r in results["radii"]:
        k = radius_key(r)
        cum = "  ".join(f"{results['per_attack_robust_accuracy'][n][k]:>15.4f}" for n in names)
        lines.append(f"{k:>8}  {results['robust_accuracy'][k]:>7.4f}  {cum}")
    ec = results["exact_check"]
    lines.append(
        f"exact LP re-check: {ec['within_counted_radius']}/{ec['checked']} sampled adversarial examples "
        "inside the smallest ball they are counted in"
    )
    lines.append(f"outputs in {run_dir}:")
    lines += [f"  {p}" for p in paths.values()]
    print("\n".join(lines), flush=True)


def warn_exact_check(results: dict) -> None:
    """Warn on stderr if the exact LP found a sampled adversarial example outside a ball it is counted in."""
    ec = results["exact_check"]
    if ec["within_counted_radius"] != ec["checked"]:
        bad = ec["checked"] - ec["within_counted_radius"]
        print(
            f"WARNING: exact LP distance outside the counted radius for {bad} sampled adversarial examples:"
            " a verification bug, please report it",
            file=sys.stderr,
            flush=True,
        )


def log_wandb(logger: dict, results: dict, res: SuiteResult, clean: torch.Tensor, paths: dict, run_dir: Path):
    """Log the numbers, plots and a table of broken examples to Weights & Biases (``logger`` config)."""
    import wandb

    mode = os.environ.get("WANDB_MODE") or logger.get("mode", "offline")
    run = wandb.init(
        project=logger.get("project", "wasserstein-attacks"),
        entity=logger.get("entity"),
        mode=mode,
        dir=str(run_dir),
        name=f"{results['model']['name']}-{results['config_hash']}",
        config={
            "config": results["config"],
            "threat": results["threat"],
            "suite": results["suite"],
            "config_hash": results["config_hash"],
        },
        tags=list(logger.get("tags") or []),
        reinit="finish_previous",
    )
    try:
        metrics = {"clean_accuracy": results["clean_accuracy"]}
        metrics.update({f"robust_accuracy/{k}": v for k, v in results["robust_accuracy"].items()})
        for a, curve in results["per_attack_robust_accuracy"].items():
            metrics.update({f"cumulative/{a}/{k}": v for k, v in curve.items()})
        run.log(metrics)
        run.log(
            {
                "curve": wandb.Image(str(paths["curve.png"])),
                "examples_grid": wandb.Image(str(paths["examples.png"])),
            }
        )
        table = wandb.Table(columns=["index", "label", "broken_by", "broken_cost", "clean", "adversarial"])
        as_img = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()  # noqa: E731
        by = res.broken_by
        for i in (res.broken_attack >= 0).nonzero()[:, 0][: int(logger.get("n_images", 16))].tolist():
            table.add_data(
                int(res.indices[i]),
                int(res.labels[i]),
                by[i],
                float(res.broken_cost[i]),
                wandb.Image(as_img(clean[i])),
                wandb.Image(as_img(res.adversarial[i])),
            )
        run.log({"examples": table})
        run.summary.update(metrics)
    finally:
        run.finish()
