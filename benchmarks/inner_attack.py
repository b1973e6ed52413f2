"""How strong is a short inner attack? Box-aware PGD with the step budget of adversarial training.

Adversarial training runs a few attack steps per batch (``defense.attack_steps``, default 10). The
attacks' default step settings are tuned for the suite's 100-300 steps; this benchmark attacks the first
``--n`` MNIST training images of an adversarially trained model with PGD for each loss and each (steps,
lr, dual_lr) of a grid, at each radius, and records the share left robust (lower: a stronger inner
attack) and the time. Each break is a verified member of the ball (the attacks' common ending).

    python benchmarks/inner_attack.py                       # WattackAdvPGDLong, 256 images, eps 0.2 and 0.5
    python benchmarks/inner_attack.py --model WattackAdvFWB --n 512
    python benchmarks/inner_attack.py --model WattackAdvPGDLr1 --losses margin ce   # margin against CE

Writes ``benchmarks/results/inner_attack-<model>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attack_setup import RESULTS, machine, provenance, write_json  # noqa: E402
from suite_ablation import ENTRIES, _model  # noqa: E402

from wasserstein_attacks import WassersteinBall  # noqa: E402
from wasserstein_attacks.attacks import get  # noqa: E402
from wasserstein_attacks.data import load_dataset  # noqa: E402

#: (steps, pgd_box settings): the training default first, then larger primal and capacity-price steps.
GRID = (
    (10, {}), (10, {"dual_lr": 3.0}), (10, {"lr": 0.3}), (10, {"lr": 0.5}), (10, {"lr": 1.0}),
    (10, {"lr": 1.0, "dual_lr": 3.0}), (10, {"lr": 0.3, "dual_lr": 1.0, "dual_steps": 3}),
    (5, {"lr": 1.0}), (20, {"lr": 0.3}), (20, {"lr": 1.0}), (100, {}), (100, {"dual_lr": 3.0}),
    # APGD's schedule (standard-v5's): its checkpoints come every step or two in a 10-step run.
    (10, {"lr": 1.0, "schedule": "apgd"}), (10, {"lr": 2.0, "schedule": "apgd"}),
    (20, {"lr": 1.0, "schedule": "apgd"}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="WattackAdvPGDLong", choices=ENTRIES)
    parser.add_argument("--n", type=int, default=256, help="first n MNIST training images")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--losses", nargs="+", default=["margin"], choices=["margin", "ce", "dlr"],
                        help="losses of the inner attack, each over the whole grid")
    args = parser.parse_args()
    if args.n < 1:
        raise SystemExit(f"--n must be a positive integer, got {args.n}")
    torch.set_num_threads(1)
    origin = provenance()
    if origin["git_dirty"] is not False:
        raise SystemExit("the checkout has uncommitted changes: commit first")
    data = load_dataset("mnist", "train", n=args.n)
    model = _model(args.model)
    rows = []
    for loss in args.losses:
        for eps in args.radii:
            for steps, settings in GRID:
                start = time.perf_counter()
                attack = get("pgd_box", loss=loss, steps=steps, **settings)
                res = attack(model, data.images, data.labels, threat=WassersteinBall(eps=eps), seed=args.seed)
                robust = 1.0 - float(res.success.float().mean())
                rows.append({"loss": loss, "eps": eps, "steps": steps, "settings": settings, "robust": robust,
                             "seconds": time.perf_counter() - start})
                print(f"eps {eps:g} pgd_box {loss} {steps:3d} steps {settings}: robust {robust:.3f} "
                      f"({rows[-1]['seconds']:.1f} s)", flush=True)
    out = RESULTS / f"inner_attack-{args.model}.json"
    write_json(out, {"model": args.model, "n": args.n, "split": "train", "seed": args.seed, "runs": rows,
                     "machine": machine(), "provenance": origin})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
