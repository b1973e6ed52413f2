"""Does the pipeline reproduce the attacks benchmark? Compare a reference-experiment run with it.

``wattack-bench experiment=reference`` evaluates Wong et al.'s adversarially trained model on the first
1000 MNIST test images with the suite ``standard-v1`` (radii ascending). ``attack_strength.py`` runs each
attack on every image at each radius; its ``pipeline_standard_v1`` block combines the two members of
``standard-v1`` over the radii the way the suite does. This script puts the two side by side.

    wattack-bench experiment=reference hydra.run.dir=runs/reference
    python benchmarks/compare_reference.py runs/reference/results.json

Writes ``benchmarks/results/reference_experiment.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _attack_setup import RESULTS, machine, write_json


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="results.json of `wattack-bench experiment=reference`")
    parser.add_argument("--strength", default=str(RESULTS / "attack_strength.json"))
    parser.add_argument("--out", default=str(RESULTS / "reference_experiment.json"))
    args = parser.parse_args(argv)
    run = json.loads(Path(args.results).read_text())
    bench = json.loads(Path(args.strength).read_text())
    expect = {row["radius"]: row["robust_accuracy"] for row in bench["pipeline_standard_v1"]}
    n = run["n_examples"]
    rows = []
    for radius, value in expect.items():
        got = run["robust_accuracy"].get(radius)
        diff = None if got is None else round((got - value) * n)
        rows.append({"radius": radius, "pipeline": got, "attack_benchmark": value,
                     "difference_in_examples": diff})
        print(f"eps {radius:>5}: pipeline {got}  benchmark {value}  difference {diff} example(s) of {n}")
    out = {
        "benchmark": "reference_experiment",
        "protocol": "wattack-bench experiment=reference (standard-v1, first 1000 MNIST test images) "
                    "against attack_strength.json's pipeline_standard_v1 (same attacks, run on every image "
                    "per radius)",
        "run": {k: run[k] for k in ("n_examples", "clean_accuracy", "robust_accuracy", "suite",
                                    "config_hash", "git_commit", "exact_check")},
        "attack_benchmark_provenance": bench.get("provenance"),
        "comparison": rows,
        "note": "the pipeline attacks sub-batches of the still-robust examples, the benchmark whole "
                "batches of 100: convolution and reduction results can differ in the last bits with the "
                "batch, which can flip an example that sits exactly at the decision boundary",
        "machine": machine(),
    }
    write_json(Path(args.out), out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
