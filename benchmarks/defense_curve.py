"""Robust accuracy against training time: evaluations of one adversarial-training run's epoch checkpoints.

    python benchmarks/defense_curve.py --train runs/adv/<run> --name NAME \\
        --eval 5=runs/eval/<run>-epoch5 --eval 7=runs/eval/<run>-epoch7 --eval 10=runs/leaderboard/<id>

Each ``--eval EPOCH=FOLDER`` names a ``wattack-bench`` run (``results.json``) of the checkpoint saved after
that epoch (``checkpoint.pt`` of the run, copied per epoch). Writes ``benchmarks/results/
defense-curve-NAME.json`` (the training time up to each epoch, from ``train_log.json``, and clean and
robust accuracy per radius) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attack_setup import RESULTS, machine, provenance, write_json  # noqa: E402

from wasserstein_attacks._util import save_png  # noqa: E402


def curve(train: Path, evals: dict[int, Path]) -> dict:
    """Per evaluated epoch: cumulative training seconds, suite, n, clean and robust accuracy."""
    log = json.loads((train / "train_log.json").read_text())
    seconds = {e["epoch"]: e["seconds"] for e in log["epochs"]}
    points = []
    for epoch, folder in sorted(evals.items()):
        if epoch not in seconds:
            raise SystemExit(f"--eval {epoch}=...: {train}/train_log.json has no epoch {epoch}")
        res = json.loads((folder / "results.json").read_text())
        points.append({
            "epoch": epoch,
            "training_seconds": sum(s for k, s in seconds.items() if k <= epoch),
            "eval_run": str(folder),
            "suite": f"{res['suite']['name']}-v{res['suite']['version']}",
            "n_examples": res["n_examples"],
            "clean_accuracy": res["clean_accuracy"],
            "robust_accuracy": res["robust_accuracy"],
        })
    return {"config": log["config"], "points": points}


def plot(data: dict, path: Path) -> None:
    """Robust accuracy per radius against training minutes, one line per radius."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = data["points"]
    minutes = [p["training_seconds"] / 60 for p in pts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(minutes, [100 * p["clean_accuracy"] for p in pts], "k--", marker="o", label="clean")
    for r in pts[0]["robust_accuracy"]:
        ax.plot(minutes, [100 * p["robust_accuracy"][r] for p in pts], marker="o", label=f"eps {r}")
    world = data["config"].get("world_size", 1)
    ax.set_xlabel("training time (wall minutes, " + ("1 process" if world == 1 else f"{world} processes")
                  + " of 1 CPU thread)")
    ax.set_ylabel(f"accuracy (%), {pts[0]['suite']}, {pts[0]['n_examples']} images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="the wattack-train run folder")
    parser.add_argument("--eval", action="append", required=True, metavar="EPOCH=FOLDER",
                        help="a wattack-bench run of the checkpoint after EPOCH (repeat)")
    parser.add_argument("--name", required=True, help="output: benchmarks/results/defense-curve-NAME.json")
    args = parser.parse_args()
    evals = {}
    for item in args.eval:
        epoch, sep, folder = item.partition("=")
        if not sep or not epoch.isdigit():
            raise SystemExit(f"--eval must be EPOCH=FOLDER, e.g. 5=runs/eval/run-epoch5, got {item!r}")
        evals[int(epoch)] = Path(folder)
    data = {**curve(args.train, evals), "machine": machine(), "provenance": provenance()}
    out = RESULTS / f"defense-curve-{args.name}.json"
    write_json(out, data)
    plot(data, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
