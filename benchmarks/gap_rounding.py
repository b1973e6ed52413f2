"""Is the default suite's gap to the worst case made of rounding? The same attack, other batch companions.

``suite_ablation.py`` finds examples that a configuration run alone breaks at a radius while the default
suite, which runs the same configuration on them at that radius, does not. This script takes those
examples (from the ablation's JSON) and attacks them again at that radius with that configuration, with
the seeds the ablation gave them, in several batch make-ups: each example alone, all of them as one
batch, and beside ``--sets`` sets of ``--companions`` other examples (those the default suite attacked at
that radius: broken by it at a larger radius only). The arithmetic of a batch's convolutions and sums
depends on its make-up, and 300 steps amplify a last-bit difference; an example broken in some make-ups
and not in others is a break that a run finds by chance, not one a missing attack would find every time.

    python benchmarks/gap_rounding.py --model mnist_robust --radius 0.2 --config apgdb-margin-mu3 \
        --ablation benchmarks/results/suite_ablation-1000.json

Writes ``benchmarks/results/gap_rounding-<model>-<radius>-<config>.json`` (``--out`` replaces it): per make-up
the examples broken, ``broken_in_every_setting`` (in all make-ups) and ``broken_in_some_setting`` (in at
least one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attack_setup import RESULTS, machine, provenance, write_json  # noqa: E402
from suite_ablation import CONFIGS, DEFAULT, ENTRIES, MODELS, _model, _suite, costs_of  # noqa: E402

from wasserstein_attacks import WassersteinBall  # noqa: E402
from wasserstein_attacks._util import sha256_file  # noqa: E402
from wasserstein_attacks.data import load_dataset  # noqa: E402


def gap_and_companions(runs: dict, config: str, radius: float) -> tuple[list[int], list[int]]:
    """Example indices that ``config`` alone breaks within ``radius`` and the default suite does not (the
    gap), and those the default suite attacked at ``radius`` without that break (broken by it at a larger
    radius only): the batch the gap examples were in when the default suite missed them.

    ``runs``: one model's runs of the ablation's JSON (``broken_cost`` per example, ``cost_tol``).
    """
    tol = runs[DEFAULT]["cost_tol"]
    within = radius * (1 + tol)
    own, other = costs_of(runs[DEFAULT]), costs_of(runs[config])
    gap = [i for i, (a, b) in enumerate(zip(own, other, strict=True)) if not a <= within and b <= within]
    in_gap = set(gap)
    companions = [i for i, a in enumerate(own) if within < a < float("inf") and i not in in_gap]
    return gap, companions


def broken(config: str, model, images, labels, idx: list[int], radius: float) -> list[int]:
    """The dataset indices among ``idx`` that ``config`` breaks within ``radius`` when they form one
    batch, with the per-example seeds of the ablation (``seed=0``, dataset positions)."""
    at = torch.tensor(idx)
    res = _suite(config).run(model, images[at], labels[at], [radius], threat=WassersteinBall(eps=0.0),
                             seed=0, indices=at, progress=False)
    within = radius * (1 + res.cost_tol)
    return [i for i, c in zip(idx, res.broken_cost.tolist(), strict=True) if c <= within]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=[*MODELS, *ENTRIES])
    parser.add_argument("--radius", type=float, required=True)
    parser.add_argument("--config", required=True, choices=list(CONFIGS),
                        help="the configuration whose breaks the default suite missed")
    parser.add_argument("--ablation", type=Path, default=RESULTS / "suite_ablation-1000.json")
    parser.add_argument("--companions", type=int, default=40, help="other examples per batch")
    parser.add_argument("--sets", type=int, default=3, help="sets of companions")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    origin = provenance()
    if origin["git_dirty"] is not False:
        raise SystemExit("the checkout has uncommitted changes: commit first")
    if not args.ablation.is_file():
        raise SystemExit(f"--ablation {args.ablation}: no such file (run suite_ablation.py first)")
    report = json.loads(args.ablation.read_text())
    runs = report["runs"].get(args.model, {})
    missing = [label for label in (DEFAULT, args.config) if label not in runs]
    if missing:
        raise SystemExit(f"--ablation {args.ablation} has no run of {', '.join(missing)} on {args.model}")
    if repr(args.radius) not in runs[DEFAULT]["robust_accuracy"]:
        raise SystemExit(f"--radius {args.radius}: not a radius of the ablation "
                         f"({', '.join(runs[DEFAULT]['robust_accuracy'])})")
    torch.set_num_threads(args.threads)
    gap, companions = gap_and_companions(runs, args.config, args.radius)
    if not gap:
        raise SystemExit(f"{args.config} breaks nothing at {args.radius} on {args.model} that {DEFAULT} "
                         "does not: no gap to re-attack")
    data = load_dataset("mnist", "test", n=report["n"])
    model = _model(args.model)
    settings = {"each alone": None, "together": gap}
    for k in range(args.sets):
        settings[f"with companions {k}"] = gap + companions[k * args.companions:(k + 1) * args.companions]
    rows, in_gap = {}, set(gap)
    for name, idx in settings.items():
        if idx is None:
            hits = [i for i in gap if broken(args.config, model, data.images, data.labels, [i], args.radius)]
        else:
            hits = [i for i in broken(args.config, model, data.images, data.labels, idx, args.radius)
                    if i in in_gap]
        rows[name] = {"batch": 1 if idx is None else len(idx), "broken": hits}
        print(f"{name:20s} breaks {len(hits):3d} of the {len(gap)}", flush=True)
    every = [i for i in gap if all(i in r["broken"] for r in rows.values())]
    some = [i for i in gap if any(i in r["broken"] for r in rows.values())]
    out = {"model": args.model, "radius": args.radius, "config": args.config, "default": DEFAULT,
           "ablation": {"path": args.ablation.name, "sha256": sha256_file(args.ablation), "n": report["n"],
                        "config_git_commit": runs[args.config]["git_commit"]},
           "gap": gap, "companions_pool": len(companions), "settings": rows,
           "broken_in_every_setting": every, "broken_in_some_setting": some,
           "machine": machine(), "provenance": origin}
    print(f"of the {len(gap)} examples {args.config} alone broke and {DEFAULT} missed, broken again in all "
          f"{len(rows)} batch make-ups: {len(every)}, in some and not in others: {len(some) - len(every)}, "
          f"in none: {len(gap) - len(some)}")
    path = args.out or RESULTS / f"gap_rounding-{args.model}-{args.radius}-{args.config}.json"
    write_json(path, out)
    return out


if __name__ == "__main__":
    main()
