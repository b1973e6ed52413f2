"""Are the suite's attacks converged? Re-attack what a suite left robust with longer or other PGD runs.

Takes, from ``benchmarks/results/suite_ablation.json``, the examples that a suite (default ``standard-v3``)
leaves robust at one radius on one model, and attacks them again at that radius with box-aware PGD for
each (loss, steps, settings) of a grid, with the seeds the suite gives them: longer runs, and larger
primal and capacity-price steps (``lr``, ``dual_lr``, ``dual_steps``). Each break is a verified member of
the ball (the attacks' common ending); the count of breaks says how far the suite's budget is from
converged on that model.

    python benchmarks/suite_steps.py --model mnist_robust --radius 0.5
    python benchmarks/suite_steps.py --model mnist_robust --radius 0.2 --suite standard-v4
    python benchmarks/suite_steps.py --model mnist_robust --radius 0.2 --suite standard-v5 --grid apgd
    python benchmarks/suite_steps.py --model mnist_robust --radius 0.2 --suite standard-v5 --grid chain

``--grid apgd`` runs APGD settings instead (``APGD_GRID``): the suite's own runs again (other batch, other
rounding), longer runs, random restarts, other step and price sizes, targeted runs, and short runs with
restarts at the cost of one long run. ``--grid chain``: standard-v5's four runs from the clean image, then
the same four chained (each begins where the one before ended). Each run records which examples it
breaks, and the JSON the union (per group of runs too).

Writes ``benchmarks/results/suite_steps-<suite>-<model>-<radius>[-<grid>].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attack_setup import RESULTS, machine, provenance, write_json  # noqa: E402
from suite_ablation import DUAL3, ENTRIES, MODELS, _model, costs_of  # noqa: E402

from wasserstein_attacks import WassersteinBall  # noqa: E402
from wasserstein_attacks.attacks import get  # noqa: E402
from wasserstein_attacks.attacks.suite import _target_classes  # noqa: E402
from wasserstein_attacks.data import load_dataset  # noqa: E402

GRID = (
    ("margin", 300, {}), ("dlr", 300, {}), ("margin", 1000, {}), ("ce", 1000, {}),
    ("margin", 300, {"lr": 0.3, "dual_lr": 1.0}), ("dlr", 300, {"lr": 0.3, "dual_lr": 1.0}),
    ("margin", 300, {"lr": 1.0, "dual_lr": 1.0}),
    ("margin", 100, DUAL3), ("dlr", 100, DUAL3), ("margin", 300, DUAL3), ("dlr", 300, DUAL3),
    ("margin", 300, {**DUAL3, "restarts": 2}), ("margin", 1000, DUAL3),
    ("margin", 300, {"dual_lr": 1.0}), ("margin", 300, {"dual_lr": 3.0}), ("dlr", 300, {"dual_lr": 3.0}),
    ("dlr", 100, {"dual_lr": 3.0}), ("margin", 300, {"dual_lr": 10.0}),
    ("margin", 300, {"dual_lr": 3.0, "dual_steps": 2}),
)

#: APGD settings (``pgd_box`` with ``schedule: apgd``, first step 1.0 unless set); ``target_rank`` r runs
#: a targeted attack on each example's r-th most likely wrong class (as a suite's ``targets``).
MU3 = {"dual_lr": 3.0}
APGD_GRID = (
    # standard-v5's four runs
    ("margin", 300, {}), ("margin", 300, MU3), ("ce", 300, {}), ("dlr", 300, MU3),
    # longer, restarted, other primal and price steps
    ("margin", 600, MU3), ("margin", 300, {**MU3, "restarts": 2}), ("margin", 300, {**MU3, "lr": 0.3}),
    ("margin", 300, {**MU3, "lr": 3.0}), ("margin", 300, {"dual_lr": 1.0}),
    ("margin", 300, {"dual_lr": 10.0}),
    # targeted on the runner-up and the third class
    ("margin", 300, {**MU3, "target_rank": 1}), ("margin", 300, {**MU3, "target_rank": 2}),
    # short runs with random restarts, at the cost of one 300-step run
    ("margin", 100, {**MU3, "restarts": 3}), ("margin", 150, {**MU3, "restarts": 2}),
    ("margin", 60, {**MU3, "restarts": 5}), ("dlr", 100, {**MU3, "restarts": 3}),
    ("ce", 100, {"restarts": 3}),
)
#: standard-v5's four runs from the clean image, then chained: each begins where the one before it ended
#: (``start: previous``, Suite's ``starts``). ``group`` only labels the rows.
V5 = (("margin", {}), ("margin", MU3), ("ce", {}), ("dlr", MU3))
CHAIN_GRID = (
    *((loss, 300, {**s, "group": "from the clean image"}) for loss, s in V5),
    *((loss, 300, {**s, "group": "chained", **({"start": "previous"} if i else {})})
      for i, (loss, s) in enumerate(V5)),
)
GRIDS = {"fixed": GRID, "apgd": APGD_GRID, "chain": CHAIN_GRID}
#: Keys of a grid's settings that are not the attack's.
NOT_SETTINGS = ("target_rank", "start", "group")


def left_robust(ablation: dict, model: str, suite: str, radius: float) -> list[int]:
    """Indices (into the first n test images) that ``suite`` counts robust at ``radius`` on ``model``."""
    run = ablation["runs"][model][suite]
    tol = run["cost_tol"]
    costs = costs_of(run)
    return [i for i, c in enumerate(costs) if c != 0 and not c <= radius * (1 + tol)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mnist_robust", choices=[*MODELS, *ENTRIES])
    parser.add_argument("--radius", type=float, default=0.5)
    parser.add_argument("--suite", default="standard-v3", help="whose left-robust examples to re-attack")
    parser.add_argument("--seed", type=int, default=0, help="the seed the ablation ran the suite with")
    parser.add_argument("--grid", default="fixed", choices=list(GRIDS),
                        help="fixed: PGD with a fixed step (GRID); apgd: APGD settings (APGD_GRID); chain: "
                             "v5's runs from the clean image and chained (CHAIN_GRID)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    origin = provenance()
    if origin["git_dirty"] is not False:
        raise SystemExit("the checkout has uncommitted changes: commit first")
    ablation = json.loads((RESULTS / "suite_ablation.json").read_text())
    idx = left_robust(ablation, args.model, args.suite, args.radius)
    data = load_dataset("mnist", "test", n=ablation["n"])
    model = _model(args.model)
    sel = torch.tensor(idx, dtype=torch.long)
    x, y = data.images[sel], data.labels[sel]
    with torch.no_grad():
        logits = model(x)
    rows, union, groups, last = [], set(), {}, None
    for loss, steps, settings in GRIDS[args.grid]:
        start = time.perf_counter()
        kwargs = {k: v for k, v in settings.items() if k not in NOT_SETTINGS}
        if args.grid in ("apgd", "chain"):
            kwargs = {"schedule": "apgd", "lr": 1.0, **kwargs}
        rank = settings.get("target_rank")
        targets = None if rank is None else _target_classes(logits, y, rank)
        attack = get("pgd_box", loss=loss, steps=steps, **kwargs)
        warm = {"start": last.plan} if settings.get("start") == "previous" else {}
        res = attack(model, x, y, threat=WassersteinBall(eps=args.radius), seed=args.seed, indices=sel,
                     targets=targets, **warm)
        last = res
        broken = sel[res.success.cpu()].tolist()
        union |= set(broken)
        groups.setdefault(settings.get("group", "all"), set()).update(broken)
        rows.append({"loss": loss, "steps": steps, "settings": settings, "broken": len(broken),
                     "broken_indices": broken, "seconds": time.perf_counter() - start})
        print(f"pgd_box {loss:6s} {steps:5d} steps {settings}: breaks {rows[-1]['broken']} of {len(idx)} "
              f"(all runs so far: {len(union)}; {rows[-1]['seconds']:.1f} s)", flush=True)
    suffix = "" if args.grid == "fixed" else f"-{args.grid}"
    out = RESULTS / f"suite_steps-{args.suite}-{args.model}-{args.radius:g}{suffix}.json"
    write_json(out, {"model": args.model, "radius": args.radius, "suite": args.suite, "n": ablation["n"],
                     "grid": args.grid, "left_robust": idx, "runs": rows, "union_broken": sorted(union),
                     "union_broken_per_group": {g: sorted(b) for g, b in groups.items()},
                     "machine": machine(), "provenance": origin})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
