"""Attack speed: seconds per iteration on a batch of MNIST images, and the ratio to one model pass.

For every registered attack (and a few variants, e.g. Wu et al.'s bisection in Frank-Wolfe) this runs the
attack with 1 and with ``1 + steps`` iterations on the same batch and takes the difference, so the fixed
costs (validation, set-up) cancel, and the common verified ending (repair, certificate, re-evaluation) is
timed apart and left out; each is the fastest of ``--repeats`` runs (the machine may be shared).
Attacks that take ``stop_on_success`` run with it off, so every example stays in
the loop; for the others the per-iteration time is scaled to the mean number of iterations actually run.
One forward + backward pass of the model on the same batch (gradient w.r.t. the input) is measured in the
same run, and the ratio reported.

    python benchmarks/attack_speed.py                     # default: 100 images, 10 iterations, eps 0.05
    python benchmarks/attack_speed.py --attacks frank_wolfe "frank_wolfe:solver='bisection'"

Writes ``benchmarks/results/attack_speed.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _attack_setup import (
    RESULTS,
    accepts,
    device_arg,
    machine,
    mnist_and_model,
    parse_attack,
    provenance,
    sync,
    write_json,
)

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks.attacks import available, get
from wasserstein_attacks.attacks import base as attack_base

#: Variants measured beside every registered attack's defaults.
VARIANTS = ("frank_wolfe:solver='bisection'", "pgd_wu:solver='newton'")


def model_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict:
    """Seconds of one forward + backward pass (input gradient of the summed cross-entropy)."""
    times = []
    for _ in range(repeats):
        xx = x.clone().requires_grad_(True)
        sync()
        start = time.perf_counter()
        loss = F.cross_entropy(model(xx), y, reduction="sum")
        torch.autograd.grad(loss, xx)
        sync()
        times.append(time.perf_counter() - start)
    return {"min_s": min(times), "median_s": statistics.median(times), "repeats": repeats}


ending: list[float] = []


def _timed_finish(finish):
    def wrapper(self, *args, **kwargs):
        sync()
        start = time.perf_counter()
        try:
            return finish(self, *args, **kwargs)
        finally:
            sync()
            ending.append(time.perf_counter() - start)

    return wrapper


attack_base.Attack._finish = _timed_finish(attack_base.Attack._finish)


def attack_pass(name: str, kwargs: dict, model, x, y, threat, steps: int, repeats: int,
                budget: float) -> dict:
    """Seconds per iteration of one attack (see the module docstring)."""
    kw = dict(kwargs)
    if accepts(name, "stop_on_success"):
        kw.setdefault("stop_on_success", False)

    def run(n_steps):
        attack = get(name, **{**kw, "steps": n_steps})
        ending.clear()
        sync()
        start = time.perf_counter()
        result = attack(model, x, y, threat=threat)
        sync()
        # The common verified ending's cost depends on how far the plan left the box, not on iterations.
        return time.perf_counter() - start - sum(ending), result

    began = time.perf_counter()
    run(1)  # warm-up: caches, allocator
    short, long = [], []
    iters = None
    for _ in range(repeats):
        short.append(run(1)[0])
        t, result = run(steps + 1)
        long.append(t)
        iters = result.iterations.float()
        if time.perf_counter() - began > budget:
            break  # slow attacks: fewer repeats, so the whole benchmark stays short
    # Iterations actually run beyond the first, per example, averaged over the batch.
    extra = max(float(iters.mean()) - 1.0, 1e-9)
    per_iteration = max(min(long) - min(short), 0.0) / extra
    return {
        "seconds_per_iteration": per_iteration,
        "seconds_per_iteration_full_batch": per_iteration * extra / steps if extra < steps else per_iteration,
        "all_examples_active": bool((iters >= steps + 1).all()),
        "mean_iterations": float(iters.mean()),
        "repeats_run": len(long),
        "seconds_1_step_min": min(short),
        f"seconds_{steps + 1}_steps_min": min(long),
        "kwargs": {**kw, "steps": "varied"},
    }


def suite_pass(n: int, radius: float, name: str = "standard-v2", device="cpu", batch: int = 100) -> dict:
    """Wall time of the whole standard suite on the first ``n`` images at one radius, in batches."""
    from wasserstein_attacks.attacks.suite import load_suite

    x, y, model = mnist_and_model(n, device=device)
    suite = load_suite(name)
    threat = WassersteinBall(radius, p=1, kernel_size=5)
    sync()
    start = time.perf_counter()
    robust = 0
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        res = suite.run(model, x[lo:hi], y[lo:hi], [radius], threat=threat, indices=torch.arange(lo, hi),
                        progress=False)
        robust += int(res.robust(radius).sum())
    sync()
    return {"suite": name, "images": n, "batch": batch, "radius": radius,
            "seconds": time.perf_counter() - start, "robust_accuracy": robust / n,
            "model": "mnist_adv_training.pth", "device": str(device)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="batch size (first n MNIST test images)")
    parser.add_argument("--steps", type=int, default=10, help="iterations timed per attack")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (the fastest is kept)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds per attack after which no further repeat starts")
    parser.add_argument("--eps", type=float, default=0.05, help="radius (units of eps, p=1, k=5, box [0,1])")
    parser.add_argument("--attacks", nargs="*", default=None,
                        help="specs 'name' or 'name:key=value,...' (default: all registered + variants)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--suite-n", type=int, default=1000,
                        help="images for the whole-suite timing at one radius (0: skip)")
    parser.add_argument("--suite-radius", type=float, default=0.01,
                        help="radius of the whole-suite timing (0.01: most examples resist, the slowest)")
    parser.add_argument("--suite-batch", type=int, default=100, help="batch size of the whole-suite timing")
    parser.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:<i>")
    parser.add_argument("--out", default=str(RESULTS / "attack_speed.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = args.attacks if args.attacks is not None else list(available()) + list(VARIANTS)
    specs = [s for s in specs if s.partition(":")[0] in available()]
    torch.manual_seed(0)
    x, y, model = mnist_and_model(args.n, device=args.device)
    threat = WassersteinBall(args.eps, p=1, kernel_size=5)
    base = model_pass(model, x, y, repeats=max(20, args.repeats))
    rows = []
    for spec in specs:
        label, name, kwargs = parse_attack(spec)
        if not accepts(name, "steps"):
            rows.append({"attack": label, "name": name, "skipped": "constructor has no 'steps' argument"})
            continue
        m = attack_pass(name, kwargs, model, x, y, threat, args.steps, args.repeats, args.budget)
        m["ratio_to_model_pass"] = m["seconds_per_iteration"] / base["min_s"]
        rows.append({"attack": label, "name": name, **m})
        ms, ratio = m["seconds_per_iteration"] * 1e3, m["ratio_to_model_pass"]
        print(f"{label:45s} {ms:8.1f} ms/it  x{ratio:6.1f} model pass", flush=True)
    out = {}

    def write(suite_timing):
        out.update({
            "benchmark": "attack_speed",
            "protocol": {
                "images": f"first {args.n} MNIST test images (one batch)",
                "model": "mnist_adv_training.pth (Wong et al.)",
                "iterations_timed": args.steps,
                "repeats": args.repeats,
                "budget_s_per_attack": args.budget,
                "method": "(fastest run with 1 + steps iterations - fastest with 1) / iterations beyond the "
                          "first; the common ending (repair, certificate, re-evaluation) excluded",
                "torch_threads": torch.get_num_threads(),
                "device": str(args.device),
            },
            "threat": threat.describe(),
            "model_forward_backward": base,
            "attacks": rows,  # write_json turns non-finite floats into strings
            "suite_one_radius": suite_timing,
            "machine": machine(),
            "provenance": provenance(),
        })
        write_json(Path(args.out), out)

    write(None)  # the per-attack rows survive a failure of the (long) suite timing
    suite_timing = None
    if args.suite_n > 0:
        suite_timing = suite_pass(args.suite_n, args.suite_radius, device=args.device, batch=args.suite_batch)
        print(f"suite {suite_timing['suite']} on {args.suite_n} images at eps {args.suite_radius}: "
              f"{suite_timing['seconds']:.0f} s, robust {suite_timing['robust_accuracy']:.3f}", flush=True)
    write(suite_timing)
    print(f"model forward+backward: {base['min_s'] * 1e3:.1f} ms (min of {base['repeats']})")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
