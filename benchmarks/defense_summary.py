"""Summarise a trained defense: its training log and its verified robust accuracy, in one JSON.

    python benchmarks/defense_summary.py --train runs/adv/<run> --eval runs/eval/<run> [<run> ...] --out NAME
    python benchmarks/defense_summary.py --front     # the robustness front of every committed summary (PNG)

Reads ``<train>/train_log.json`` (written by ``wattack-train defense=adversarial``) and each
``<eval>/results.json`` (``wattack-bench model=mnist_convnet model.checkpoint=<train>/model_state_dict.pt``)
and writes ``benchmarks/results/defense-<NAME>.json`` with the machine, the commit, the training
schedule and time, the sha256 of the weights, and clean and robust accuracy per radius: the first
evaluation as ``evaluation`` (the leaderboard's), further ones (other suites or images, e.g. the published
models' protocol) as ``other_evaluations``. Every evaluation must have attacked these weights.

``--front`` plots robust accuracy at eps 0.5 against eps 0.2 for every ``defense-*.json`` under
``benchmarks/results/``, one panel per protocol (suite version x images), with the best published models
where their protocol applies: ``benchmarks/results/defense-front.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attack_setup import ENTRY_DIR, RESULTS, machine, provenance, write_json  # noqa: E402

from wasserstein_attacks._util import sha256_file  # noqa: E402


def _evaluation(folder: Path, checkpoint: str) -> dict:
    """The accuracies of one ``wattack-bench`` run folder, which must have attacked the checkpoint file
    whose sha256 is ``checkpoint``."""
    results = json.loads((folder / "results.json").read_text())
    attacked = results["model"].get("checkpoint_sha256")
    if attacked != checkpoint:
        raise SystemExit(f"{folder} attacked another checkpoint ({attacked}) than the training run's "
                         f"model_state_dict.pt ({checkpoint})")
    return {
        "suite": results["suite"],
        "n_examples": results["n_examples"],
        "clean_accuracy": results["clean_accuracy"],
        "robust_accuracy": results["robust_accuracy"],
        "exact_check": results["exact_check"],
        "model_checks": results.get("model_checks"),
        "git_commit": results.get("git_commit"),
    }


def summary(train: Path, evaluation: Path, *others: Path) -> dict:
    """The JSON-ready summary of one training run and its evaluation runs (the first is the main one)."""
    log = json.loads((train / "train_log.json").read_text())
    epochs = log["epochs"]
    weights = sha256_file(train / "model_state_dict.pt")
    return {
        "training": {
            "config": log["config"],
            "epochs": epochs,
            "seconds": sum(e["seconds"] for e in epochs),
            "weights_sha256": weights,
        },
        "evaluation": _evaluation(evaluation, weights),
        **({"other_evaluations": [_evaluation(o, weights) for o in others]} if others else {}),
    }


#: The best published Wasserstein-robust MNIST models as issue #12 measured them (``standard-v2``, first 200
#: test images): clean accuracy and robust accuracy at eps 0.2 and 0.5.
PUBLISHED = {"published A": (0.975, 0.81, 0.355), "published B": (0.945, 0.74, 0.44)}
#: The 200-image protocols of the summaries, as (suite version, test images); the published models' first.
PROTOCOLS = ((2, 200), (5, 200))

Point = tuple[str, float, float, float]  # name, clean accuracy, robust accuracy at 0.2 and at 0.5


def front_points(reports: dict[str, dict]) -> dict[tuple[int, int], list[Point]]:
    """Every evaluation of ``reports`` (name -> a ``defense-*.json`` summary) by protocol.

    Returns ``{(suite version, images): [(name, clean, robust at 0.2, robust at 0.5), ...]}`` (fractions),
    names sorted; evaluations without both radii are left out.
    """
    out: dict[tuple[int, int], list[Point]] = {}
    for name in sorted(reports):
        rep = reports[name]
        for ev in [rep["evaluation"], *rep.get("other_evaluations", [])]:
            rob = ev["robust_accuracy"]
            if "0.2" in rob and "0.5" in rob:
                key = (int(ev["suite"]["version"]), int(ev["n_examples"]))
                out.setdefault(key, []).append((name, ev["clean_accuracy"], rob["0.2"], rob["0.5"]))
    return out


def entry_points(folder: Path, prefix: str = "WattackAdv") -> list[Point]:
    """The leaderboard entries in ``folder`` whose id starts with ``prefix``, as ``front_points`` rows."""
    rows = []
    for path in sorted(folder.glob(f"{prefix}*.json")):
        claimed = json.loads(path.read_text())["claimed"]
        rob = claimed["robust_accuracy"]
        rows.append((path.stem, claimed["clean_accuracy"], rob["0.2"], rob["0.5"]))
    return rows


def _scatter(ax, points: list[Point], char: float = 0.26, line: float = 1.25) -> None:
    """Points (filled where clean accuracy >= 97 %) with labels right of them, moved down (with a leader
    line) until they overlap no other label; ``char`` and ``line`` are a label's character width and
    height in data units (percent)."""
    boxes: list[tuple[float, float, float]] = []  # x0, x1, y centre of each placed label
    for name, clean, r2, r5 in sorted(points, key=lambda p: -p[3]):
        x, y = 100 * r2, 100 * r5
        ax.scatter(x, y, s=36, color="tab:blue", facecolors="tab:blue" if clean >= 0.97 else "none")
        x0, x1 = x + 0.4, x + 0.4 + char * len(name)
        ly = y
        while any(x0 < b1 and b0 < x1 and abs(ly - by) < line for b0, b1, by in boxes):
            ly -= line / 2
        boxes.append((x0, x1, ly))
        arrow = {"arrowprops": {"arrowstyle": "-", "lw": 0.4, "color": "grey"}} if ly != y else {}
        ax.annotate(name, (x, y), xytext=(x0, ly), fontsize=6.5, va="center", **arrow)


def plot_front(panels: list[tuple[str, list[Point]]], path: Path) -> Path:
    """Robust accuracy (%) at eps 0.5 against eps 0.2, one panel per ``(title, points)``; the published
    models and the region above both of them on the first panel (their protocol). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wasserstein_attacks._util import save_png

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), sharex=True, sharey=True)
    for ax, (title, points) in zip(axes, panels, strict=True):
        _scatter(ax, points)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("robust accuracy at eps 0.2 (%)")
        ax.grid(alpha=0.3)
    ax = axes[0]
    for name, (_, r2, r5) in PUBLISHED.items():
        ax.scatter(100 * r2, 100 * r5, s=70, marker="*", color="tab:red")
        ax.annotate(name, (100 * r2, 100 * r5), fontsize=7, color="tab:red", xytext=(4, -10),
                    textcoords="offset points")
    x0, y0 = (100 * max(v[i] for v in PUBLISHED.values()) for i in (1, 2))
    ax.fill_between([x0, 100], y0, 100, color="tab:green", alpha=0.12, label="above A and B")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_ylabel("robust accuracy at eps 0.5 (%)")
    xs = [100 * p[2] for _, pts in panels for p in pts] + [100 * v[1] for v in PUBLISHED.values()]
    ys = [100 * p[3] for _, pts in panels for p in pts] + [100 * v[2] for v in PUBLISHED.values()]
    ax.set_xlim(min(xs) - 1.5, max(xs) + 6)
    ax.set_ylim(min(ys) - 3, max(ys) + 4)
    fig.suptitle("Adversarially trained MNIST models: robust accuracy at eps 0.5 against 0.2 "
                 "(filled: clean accuracy >= 97 % on the same images)", fontsize=10)
    return save_png(fig, path)


def front(results: Path = RESULTS, entries: Path = ENTRY_DIR) -> Path:
    """``plot_front`` of every ``defense-*.json`` summary in ``results`` (the 200-image protocols) and of
    the leaderboard's ``WattackAdv*`` entries in ``entries``, to ``results/defense-front.png``."""
    files = sorted(p for p in results.glob("defense-*.json") if not p.name.startswith("defense-curve"))
    if not files:
        raise SystemExit(f"no defense-*.json summaries in {results}")
    reports = {p.stem.removeprefix("defense-").removeprefix("adv-"): json.loads(p.read_text()) for p in files}
    points = front_points(reports)
    panels = [(f"standard-v{v}, first {n} test images (benchmarks/results)", points.get((v, n), []))
              for v, n in PROTOCOLS]
    panels.append(("leaderboard entries: standard-v5, first 1000 test images", entry_points(entries)))
    return plot_front(panels, results / "defense-front.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--front", action="store_true",
                        help="plot the robustness front of every committed summary instead")
    parser.add_argument("--train", type=Path, help="the wattack-train run folder")
    parser.add_argument("--eval", type=Path, nargs="+",
                        help="wattack-bench run folders (the first is the main evaluation)")
    parser.add_argument("--out", help="name of the defense (file defense-<NAME>.json)")
    args = parser.parse_args()
    if args.front:
        print(f"written {front()}")
        return
    if not (args.train and args.eval and args.out):
        parser.error("--train, --eval and --out are required (or --front)")
    report = {"machine": machine(), "provenance": provenance(), **summary(args.train, *args.eval)}
    path = RESULTS / f"defense-{args.out}.json"
    write_json(path, report)
    print(f"written {path}")


if __name__ == "__main__":
    main()
