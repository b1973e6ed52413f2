"""Suite order: the standard suite walked smallest radius first (standard-v1) or largest first (standard-v2).

Runs both suites on the first ``--n`` MNIST test images of a model at the standard grid and reports the
verified robust accuracy per radius, the examples where the two disagree, and the wall time. The
descending walk attacks an example at a smaller radius only if the larger radius broke it, so it spends
the full step budget at most once per attack and example; this measures what that costs in strength.

    python benchmarks/suite_order.py --model mnist_adv_training --n 200
    python benchmarks/suite_order.py --model standard --n 200 --threads 1

Writes ``benchmarks/results/suite_order-<model>.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _attack_setup import RESULTS, machine, provenance, radius_key, write_json

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks.attacks.suite import load_suite
from wasserstein_attacks.data import load_dataset
from wasserstein_attacks.defenses import standard_mnist_model
from wasserstein_attacks.models import ZOO, load_model

GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist_adv_training", choices=["standard", *ZOO],
                        help="'standard' (the project's standard MNIST model) or a model of the zoo")
    parser.add_argument("--n", type=int, default=200, help="first n MNIST test images")
    parser.add_argument("--suites", nargs="+", default=["standard-v1", "standard-v2"])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = standard_mnist_model() if args.model == "standard" else load_model(args.model)
    ds = load_dataset("mnist", "test", n=args.n)
    threat = WassersteinBall(0.0, p=1, kernel_size=5)
    runs, broken = {}, {}
    for name in args.suites:
        suite = load_suite(name)
        start = time.perf_counter()
        parts = []
        for lo in range(0, args.n, args.batch):
            hi = min(lo + args.batch, args.n)
            parts.append(suite.run(model, ds.images[lo:hi], ds.labels[lo:hi], GRID, threat=threat,
                                   indices=torch.arange(lo, hi), progress=False))
        seconds = time.perf_counter() - start
        res = parts[0].concatenate(parts)
        broken[name] = torch.stack([~res.robust(r) for r in GRID])
        runs[name] = {
            "order": suite.order,
            "robust_accuracy": {radius_key(r): res.robust_accuracy(r) for r in GRID},
            "clean_accuracy": res.clean_accuracy,
            "seconds": seconds,
        }
        print(name, suite.order, {k: round(v, 3) for k, v in runs[name]["robust_accuracy"].items()},
              f"{seconds:.0f}s", flush=True)
    if len(args.suites) == 2:
        a, b = args.suites
        only = {
            f"broken_only_by_{u}": {
                radius_key(r): int((broken[u][i] & ~broken[v][i]).sum()) for i, r in enumerate(GRID)
            }
            for u, v in ((a, b), (b, a))
        }
    else:
        only = {}
    out = {
        "benchmark": "suite_order",
        "protocol": {
            "model": args.model,
            "images": f"first {args.n} MNIST test images",
            "radii": list(GRID),
            "threat": "W1 (p=1), local 5x5, box [0,1]",
            "batch_size": args.batch,
            "torch_threads": torch.get_num_threads(),
        },
        "suites": runs,
        "disagreements": only,
        "machine": machine(),
        "provenance": provenance(),
    }
    path = Path(args.out) if args.out else RESULTS / f"suite_order-{args.model}.json"
    write_json(path, out)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
