"""Wall time of `make run` on this machine, from a cold model cache (the standard model is trained too).

The issue's target: under 10 minutes on a 2-core machine. Runs `make run` with an empty
``WATTACK_CACHE`` and a fresh run folder, and records the wall time, the robust accuracies printed in
``results.json`` and the machine.

    python benchmarks/make_run_time.py

Writes ``benchmarks/results/make_run.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _attack_setup import RESULTS, machine, provenance, write_json

REPO = Path(__file__).resolve().parents[1]


def main() -> dict:
    run_dir = REPO / "runs" / "quick-mnist" / "default"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resumed one
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, WATTACK_CACHE=cache)
        start = time.perf_counter()
        proc = subprocess.run(["make", "run"], cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"make run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    out = {
        "benchmark": "make_run",
        "command": "make run (experiment quick_mnist: standard model, first 500 test images, suite "
                   "standard-v2, radii 0.01 ... 0.5, workers=auto), empty model cache",
        "seconds": seconds,
        "target_seconds": 600,
        "attack_seconds_per_batch": timings["batches"],
        "clean_accuracy": results["clean_accuracy"],
        "robust_accuracy": results["robust_accuracy"],
        "suite": results["suite"]["name"] + f"-v{results['suite']['version']}",
        "n_examples": results["n_examples"],
        "machine": machine(),
        "provenance": provenance(),
    }
    write_json(RESULTS / "make_run.json", out)
    print(f"make run: {seconds:.0f} s (target 600 s); wrote {RESULTS / 'make_run.json'}")
    return out


if __name__ == "__main__":
    main()
