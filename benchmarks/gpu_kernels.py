"""Fused Triton kernels vs the torch path of the plan attacks: time, launches and syncs per iteration.

For each dataset shape, batch and attack (frank_wolfe, frank_wolfe_box, pgd_box), the same attack call
(``--steps`` iterations on the whole batch, no early stop, seed 0) runs once on the kernel path and once
on the torch path (``wasserstein_attacks._kernels.kernels("torch")``), each after a warm-up call:

- ``ms_per_iteration``: wall time of the call over its iterations (set-up and the common ending included);
- ``launches_per_iteration`` / ``syncs_per_iteration``: torch.profiler counts of kernel launches (every
  runtime / driver ``*LaunchKernel*`` call: torch's and Triton's) and stream / device synchronisations;
- ``model_fwd_bwd_ms``: one forward + backward of the model at that batch (what no kernel can remove);
- the check that both paths give the same attack: every output certified, success flags equal, certified
  costs within float noise (``same_results``).

Data: MNIST test images with the zoo model (synthetic MNIST-shaped data and a fresh ``mnist_convnet`` if
the zoo is not reachable; ``model`` says which), batches 100 and 1000; CIFAR-shaped synthetic
``[256, 3, 32, 32]`` with a fresh ``resnet18``. ``--compile-model`` wraps the model in ``torch.compile``
(``mode="reduce-overhead"``: CUDA graphs for the model's part; measured only on a GPU).

    python benchmarks/gpu_kernels.py --device cuda              # writes results/gpu_kernels-<gpu>.json
    TRITON_INTERPRET=1 python benchmarks/gpu_kernels.py --device cpu --smoke --out /tmp/g.json

``--smoke`` (tiny shapes, 1 iteration; on a CPU the kernel path runs in Triton's interpreter) only checks
that the script runs and writes valid JSON.
"""

from __future__ import annotations

import argparse
import re
import time
import traceback
from pathlib import Path

import torch
from _attack_setup import REPO, RESULTS, device_arg, machine, mnist_and_model, provenance, sync, write_json

from wasserstein_attacks import WassersteinBall, _kernels
from wasserstein_attacks.attacks import get
from wasserstein_attacks.models import build_model

ATTACKS = ("frank_wolfe", "frank_wolfe_box", "pgd_box")


def data(dataset: str, batch: int, device, smoke: bool):
    """``(model, x, y, model_name)`` on ``device``; synthetic images are seeded and MNIST-like sparse."""
    g = torch.Generator().manual_seed(0)
    if smoke:  # tiny shapes: the kernel path runs in Triton's interpreter on a CPU
        c, hw, name = (1, 10, "tiny") if dataset == "mnist" else (3, 8, "tiny")
        model = build_model(name, in_channels=c, seed=0)
    elif dataset == "mnist":
        try:
            x, y, model = mnist_and_model(batch, device=device)
            return model.eval(), x, y, "mnist_adv_training"
        except Exception as e:  # an offline machine without the zoo: synthetic MNIST-shaped data
            print(f"mnist zoo model not available ({type(e).__name__}: {e}); synthetic data", flush=True)
            c, hw, name = 1, 28, "mnist_convnet"
            model = build_model(name, seed=0)
    else:
        c, hw, name = 3, 32, "resnet18"
        model = build_model(name, seed=0)
    x = torch.rand(batch, c, hw, hw, generator=g)
    if dataset == "mnist":
        x = torch.where(x > 0.8, torch.ones_like(x), torch.zeros_like(x))  # strokes at exactly 1
    y = torch.randint(0, 10, (batch,), generator=g)
    return model.to(device).eval(), x.to(device), y.to(device), name


def fwd_bwd_ms(model, x, y, reps: int = 5) -> float:
    """Milliseconds of one forward + backward (gradient w.r.t. the input) at this batch."""
    def once():
        xi = x.detach().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xi), y).backward()

    once()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    sync()
    return (time.perf_counter() - t0) * 1e3 / reps


def profiled(call, steps: int) -> tuple[float, float]:
    """``(launches, syncs)`` per iteration of ``call()`` under torch.profiler (as device_check's profile)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        call()
        sync()
    avg = prof.key_averages()
    launches = sum(e.count for e in avg if "LaunchKernel" in e.key)
    syncs = sum(e.count for e in avg if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize"))
    return launches / steps, syncs / steps


def measure(attack_name, model, x, y, steps, path, mode):
    """One attack on one path: timing, profile counts and the result (for the equality check)."""
    threat = WassersteinBall(0.05, p=1, kernel_size=5)
    attack = get(attack_name, steps=steps, stop_on_success=False)

    def call():
        return attack(model, x, y, threat=threat, seed=0)

    with _kernels.kernels(mode):
        call()  # warm-up: compilation of the kernels, allocator
        sync()
        t0 = time.perf_counter()
        res = call()
        sync()
        wall = time.perf_counter() - t0
        launches, syncs = profiled(call, steps)
    row = {"path": path, "ms_per_iteration": wall * 1e3 / steps, "launches_per_iteration": launches,
           "syncs_per_iteration": syncs, "certified": bool(res.certified.all())}
    return row, res


def compare(kernel, torch_res) -> dict:
    """The two paths' attack results: same success flags, certified costs within float noise."""
    agree = float((kernel.success == torch_res.success).double().mean())
    diff = float((kernel.cost.double() - torch_res.cost.double()).abs().max()) if kernel.cost.numel() else 0.0
    return {"success_agreement": agree, "max_cost_difference": diff,
            "same_results": bool(agree == 1.0 and diff <= 1e-4 and kernel.certified.all()
                                 and torch_res.certified.all())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=device_arg, default="cuda")
    parser.add_argument("--steps", type=int, default=20, help="iterations per attack call")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 iteration (CPU: interpreter)")
    parser.add_argument("--compile-model", action="store_true", help="torch.compile(mode='reduce-overhead')")
    parser.add_argument("--out", default=None, help="JSON path (default results/gpu_kernels-<device>.json)")
    args = parser.parse_args(argv)
    cuda = args.device.type == "cuda"
    name = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    out = Path(args.out) if args.out else RESULTS / f"gpu_kernels-{slug}.json"
    configs = ([("mnist", 2), ("cifar10-shaped", 1)] if args.smoke
               else [("mnist", 100), ("mnist", 1000), ("cifar10-shaped", 256)])
    steps = 1 if args.smoke else args.steps
    # The kernel path: CUDA tensors take it by default; a CPU smoke run forces the interpreter.
    kernel_mode = "auto" if cuda else "triton"
    report = {"benchmark": "gpu_kernels", "device": name, "smoke": args.smoke, "steps": steps, "eps": 0.05,
              "kernel_mode": kernel_mode, "triton_interpret": _kernels.interpreting(),
              "compile_model": args.compile_model, "machine": machine(), "provenance": provenance(),
              "rows": []}
    for dataset, batch in configs:
        model, x, y, model_name = data(dataset, batch, args.device, args.smoke)
        if args.compile_model:
            model = torch.compile(model, mode="reduce-overhead")
        base = {"dataset": dataset, "batch": batch, "model": model_name,
                "model_fwd_bwd_ms": fwd_bwd_ms(model, x, y)}
        for attack in ATTACKS:
            try:
                k_row, k_res = measure(attack, model, x, y, steps, "kernel", kernel_mode)
                t_row, t_res = measure(attack, model, x, y, steps, "torch", "torch")
                check = compare(k_res, t_res)
                rows = [{"attack": attack, **base, **r, **check} for r in (k_row, t_row)]
            except Exception as e:  # one failure must not hide the other measurements
                rows = [{"attack": attack, **base, "path": "kernel", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-3000:].replace(str(REPO), "<repo>")}]
            for r in rows:
                print({k: v for k, v in r.items() if k != "traceback"}, flush=True)
            report["rows"] += rows
            write_json(out, report)
    return report


if __name__ == "__main__":
    main()
