"""Summarise a trained defense: its training log and its verified robust accuracy, in one JSON.

    python benchmarks/defense_summary.py --train runs/adv/<run> --eval runs/eval/<run> [<run> ...] --out NAME

Reads ``<train>/train_log.json`` (written by ``wattack-train defense=adversarial``) and each
``<eval>/results.json`` (``wattack-bench model=mnist_convnet model.checkpoint=<train>/model_state_dict.pt``)
and writes ``benchmarks/results/defense-<NAME>.json`` with the machine, the commit, the training
schedule and time, the sha256 of the weights, and clean and robust accuracy per radius: the first
evaluation as ``evaluation`` (the leaderboard's), further ones (other suites or images, e.g. the published
models' protocol) as ``other_evaluations``. Every evaluation must have attacked these weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attack_setup import RESULTS, machine, provenance, write_json  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="the wattack-train run folder")
    parser.add_argument("--eval", type=Path, required=True, nargs="+",
                        help="wattack-bench run folders (the first is the main evaluation)")
    parser.add_argument("--out", required=True, help="name of the defense (file defense-<NAME>.json)")
    args = parser.parse_args()
    report = {"machine": machine(), "provenance": provenance(), **summary(args.train, *args.eval)}
    path = RESULTS / f"defense-{args.out}.json"
    write_json(path, report)
    print(f"written {path}")


if __name__ == "__main__":
    main()
