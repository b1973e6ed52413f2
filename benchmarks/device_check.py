"""Device check: every attack and the suite on a CUDA device against the CPU, then the benchmarks there.

Run on a machine with a GPU (one script, sections in order of importance, the long ones under a time
budget, every section written as it finishes, so a short lease still brings back what finished):

1. ``consistency``, ``suite``: every registered attack (and the speed benchmark's variants) with at most
   ``--steps`` iterations on the first ``--n`` MNIST test images at eps 0.05, once on the CPU and once on
   the device, same seed. On the device: outputs on the device, every certificate holding, the successes
   checked by the exact LP; against the CPU: the agreement of the success flags and the largest pixel
   difference (float rounding differs between the two, so a few flags may differ on examples that sit on
   the decision boundary). Then the standard suite on both at three radii.
2. ``attack_speed.py --device`` at batch 100 (the issue's protocol), then at batch 1000, each with the
   whole suite on 1000 images at eps 0.01.
3. ``attack_strength.py --device`` with our attacks on the first 1000 images (batch 1000), to be compared
   with the CPU run in ``attack_strength.json``.
4. ``profile`` (only when asked for): torch.profiler over one call of each suite attack at batch
   ``--profile-n``: host and GPU time, kernel launches and synchronisations per iteration.

    python benchmarks/device_check.py --device cuda --out-dir /tmp/out --budget 420

The model is the zoo's ``mnist_adv_training`` (``wasserstein_attacks.models.load_model``); a machine without
network needs ``WATTACK_ZOO_DIR`` set to a folder holding ``mnist_adv_training.pth``.

Writes ``device_check.json``, ``attack_speed-<device>.json``, ``attack_speed-<device>-batch1000.json`` and
``attack_strength-<device>.json`` under ``--out-dir`` (each after its section).
"""

from __future__ import annotations

import argparse
import json
import re
import time
import traceback
from pathlib import Path

import torch
from _attack_setup import (
    REPO,
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
from wasserstein_attacks.attacks.suite import load_suite

VARIANTS = ("frank_wolfe:solver='bisection'", "pgd_wu:solver='newton'", "frank_wolfe_box:loss='margin'")


def _trace() -> str:
    """The current exception's traceback (its end), with this checkout's path left out."""
    return traceback.format_exc()[-3000:].replace(str(REPO), "<repo>")


def _run(attack, model, x, y, threat):
    sync()
    t0 = time.perf_counter()
    res = attack(model, x, y, threat=threat, seed=0, indices=torch.arange(x.shape[0]))
    sync()
    return res, time.perf_counter() - t0


def consistency_row(spec: str, cpu: tuple, dev: tuple, eps: float, steps: int, exact: int) -> dict:
    """One attack on the CPU and on the device (see the module docstring); raises nothing."""
    label, name, kwargs = parse_attack(spec)
    if accepts(name, "steps"):
        default = get(name, **kwargs)
        kwargs = {**kwargs, "steps": min(int(getattr(default, "steps", steps)), steps)}
    threat = WassersteinBall(eps, p=1, kernel_size=5)
    row = {"attack": label, "kwargs": {k: repr(v) for k, v in kwargs.items()}}
    try:
        rc, tc = _run(get(name, **kwargs), *cpu, threat)
        rd, td = _run(get(name, **kwargs), *dev, threat)
        device = dev[1].device
        on_device = all(t.device == device for t in (rd.adversarial, rd.success, rd.plan, rd.cost))
        x_cpu = cpu[1]
        adv = rd.adversarial.cpu()
        # The device's certificate, recomputed on the CPU from its plan: the certificate is not a
        # property of the machine that found the example.
        cert = threat.certify(x_cpu, adv, rd.plan.cpu())
        succ_d, succ_c = rd.success.cpu(), rc.success.cpu()
        pick = succ_d.nonzero()[:, 0][:exact]
        inside = threat.contains(x_cpu[pick], adv[pick]) if pick.numel() else torch.ones(0, dtype=torch.bool)
        row.update(
            outputs_on_device=on_device,
            certified_device=bool(rd.certified.all()),
            certified_recomputed_on_cpu=bool(cert.feasible.all()),
            max_cost_over_eps=float(rd.cost.max()) / eps if rd.cost.numel() else 0.0,
            success_cpu=int(succ_c.sum()),
            success_device=int(succ_d.sum()),
            success_agreement=float((succ_c == succ_d).double().mean()),
            max_abs_pixel_difference=float((rc.adversarial.cpu() - adv).abs().max()),
            exact_checked=int(pick.numel()),
            exact_inside=int(inside.sum()),
            seconds_cpu=tc,
            seconds_device=td,
        )
        row["ok"] = bool(on_device and row["certified_device"] and row["exact_inside"] == row["exact_checked"]
                         and row["certified_recomputed_on_cpu"])
    except Exception as e:  # a failure of one attack must not hide the others' results
        row.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=_trace())
    return row


def profile_row(spec: str, model, x, y, eps: float, steps: int) -> dict:
    """Where one attack call's time goes (torch.profiler): wall time, GPU kernel time, launches, syncs.

    The call runs ``steps`` iterations on the whole batch (no early stop), so the loop dominates; the set-up
    and the common ending are included. The wall time is of a call without the profiler (which slows the
    host many times over); ``device_busy_fraction`` is the kernels' time over it: well below 1, the host
    (Python, kernel launches, synchronisations) is the bound.
    """
    from torch.profiler import ProfilerActivity, profile

    label, name, kwargs = parse_attack(spec)
    threat = WassersteinBall(eps, p=1, kernel_size=5)
    attack = get(name, **{**kwargs, "steps": steps, "stop_on_success": False})
    row = {"attack": label, "images": x.shape[0], "steps": steps, "eps": eps}
    try:
        attack(model, x, y, threat=threat)  # warm-up (allocator, kernels' first launch)
        sync()
        t0 = time.perf_counter()
        attack(model, x, y, threat=threat)
        sync()
        plain = time.perf_counter() - t0  # the profiler slows the host many times over
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
        sync()
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            attack(model, x, y, threat=threat)
            sync()
        wall = time.perf_counter() - t0
        avg = prof.key_averages()

        def device_us(e):
            return (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)

        runtime = ("cudaLaunchKernel", "cuLaunchKernel", "cudaStreamSynchronize", "cudaDeviceSynchronize",
                   "cudaMemcpyAsync", "cudaStreamIsCapturing")
        kernel_s = sum(device_us(e) for e in avg if not e.key.startswith("aten::")) / 1e6
        aten_calls = sum(e.count for e in avg if e.key.startswith("aten::"))
        top = sorted((e for e in avg if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total,
                     reverse=True)[:10]
        row.update(
            ok=True,
            wall_s=plain,
            wall_s_under_profiler=wall,
            device_kernel_s=kernel_s,
            device_kernel_ms_per_iteration=kernel_s * 1e3 / steps,
            # Kernel time over the unprofiled wall time (the kernels run as long with or without it).
            device_busy_fraction=kernel_s / plain if x.device.type == "cuda" else None,
            kernel_launches_per_iteration=sum(e.count for e in avg if e.key in runtime[:2]) / steps,
            synchronisations_per_iteration=sum(e.count for e in avg if e.key == runtime[2]) / steps,
            aten_calls_per_iteration=aten_calls / steps,
            runtime_calls={k: e.count for e in avg for k in runtime if e.key == k},
            top_ops_by_host_time=[{"op": e.key, "calls": e.count, "host_ms": e.self_cpu_time_total / 1e3,
                                   "device_ms": device_us(e) / 1e3} for e in top],
        )
    except Exception as e:
        row.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=_trace())
    return row


def suite_row(cpu: tuple, dev: tuple, radii: list[float]) -> dict:
    """The standard suite on the CPU and on the device: robust accuracy per radius on both."""
    row = {"suite": "standard-v2", "radii": radii}
    try:
        suite = load_suite("standard-v2")
        threat = WassersteinBall(radii[0], p=1, kernel_size=5)
        out = {}
        for tag, (model, x, y) in (("cpu", cpu), ("device", dev)):
            sync()
            t0 = time.perf_counter()
            res = suite.run(model, x, y, radii, threat=threat, progress=False)
            sync()
            out[tag] = {"robust_accuracy": [float(res.robust(r).double().mean()) for r in radii],
                        "seconds": time.perf_counter() - t0}
        row.update(out, ok=True)
    except Exception as e:
        row.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=_trace())
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=device_arg, default="cuda")
    parser.add_argument("--n", type=int, default=32, help="images of the consistency section")
    parser.add_argument("--steps", type=int, default=20, help="iterations cap of the consistency section")
    parser.add_argument("--attacks", nargs="*", default=None,
                        help="specs of the consistency section (default: every registered attack + variants)")
    parser.add_argument("--exact", type=int, default=8, help="device successes per attack checked by the LP")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds; then the sections speed, speed1000, strength are skipped")
    parser.add_argument("--sections", nargs="*",
                        default=["consistency", "suite", "speed", "speed1000", "strength"])
    parser.add_argument("--profile-n", type=int, default=1000, help="batch of the profile section")
    parser.add_argument("--profile-steps", type=int, default=50, help="iterations of the profile section")
    parser.add_argument("--merge", default=None,
                        help="an earlier device_check.json: its sections stay unless this run redoes them")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    began = time.perf_counter()
    out_dir = Path(args.out_dir)
    tag = re.sub(r"[^a-z0-9]+", "_", (torch.cuda.get_device_name(args.device).lower()
                                      if args.device.type == "cuda" else "cpu")).strip("_")
    report = {"benchmark": "device_check", "device": str(args.device), "sections": {}, "machine": machine(),
              "provenance": provenance()}
    path = out_dir / "device_check.json"
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        report["sections"] = {k: v for k, v in earlier.get("sections", {}).items() if k not in args.sections}
        report["earlier_run"] = {"machine": earlier.get("machine"), "provenance": earlier.get("provenance"),
                                 "sections": sorted(report["sections"])}

    def left() -> float:
        return args.budget - (time.perf_counter() - began)

    def setup(n, device):  # (model, images, labels), the argument order of an attack call
        x, y, model = mnist_and_model(n, device=device)
        return model, x, y

    if "consistency" in args.sections:
        cpu, dev = setup(args.n, "cpu"), setup(args.n, args.device)
        rows = []
        for spec in args.attacks if args.attacks is not None else list(available()) + list(VARIANTS):
            rows.append(consistency_row(spec, cpu, dev, 0.05, args.steps, args.exact))
            r = rows[-1]
            print(f"{r['attack']:40s} ok={r['ok']} " + (r.get("error") or
                  f"succ cpu {r['success_cpu']} dev {r['success_device']} agree {r['success_agreement']:.2f} "
                  f"exact {r['exact_inside']}/{r['exact_checked']} "
                  f"{r['seconds_cpu']:.2f}s/{r['seconds_device']:.2f}s"),
                  flush=True)
            report["sections"]["consistency"] = {"images": args.n, "eps": 0.05, "steps_cap": args.steps,
                                                 "rows": rows}
            write_json(path, report)
    if "suite" in args.sections:
        s = suite_row(setup(64, "cpu"), setup(64, args.device), [0.02, 0.05, 0.1])
        print("suite", {k: v for k, v in s.items() if k != "traceback"}, flush=True)
        report["sections"]["suite_64_images"] = s
        write_json(path, report)
    if "profile" in args.sections:
        model, x, y = setup(args.profile_n, args.device)
        rows = []
        for spec in ("frank_wolfe", "frank_wolfe_box", "pgd_box"):
            rows.append(profile_row(spec, model, x, y, 0.05, args.profile_steps))
            r = rows[-1]
            print("profile", {k: v for k, v in r.items() if k not in ("top_ops_by_host_time", "traceback")},
                  flush=True)
            report["sections"]["profile"] = {"rows": rows}
            write_json(path, report)
    dev = str(args.device)
    if any(name in args.sections for name in ("speed", "speed1000", "strength")):
        # Imported only here: attack_speed wraps Attack._finish (to time the common ending apart).
        import attack_speed
        import attack_strength
    plans = {
        "speed": lambda: attack_speed.main(["--device", dev, "--n", "100", "--suite-n", "1000",
                                            "--out", str(out_dir / f"attack_speed-{tag}.json")]),
        "strength": lambda: attack_strength.main(["--device", dev, "--n", "1000", "--batch", "1000",
                                                  "--attacks", *attack_strength.OURS, "--post-n", "0",
                                                  "--out", str(out_dir / f"attack_strength-{tag}.json")]),
        "speed1000": lambda: attack_speed.main([
            "--device", dev, "--n", "1000", "--suite-n", "1000", "--suite-batch", "1000",
            "--attacks", "frank_wolfe", "frank_wolfe_box", "pgd_box", "pgd_wu", "sinkhorn_wong",
            "--out", str(out_dir / f"attack_speed-{tag}-batch1000.json")]),
    }
    for name in [s for s in args.sections if s in plans]:
        if left() < 30:
            report["sections"][name] = {"skipped": f"time budget ({args.budget:.0f} s) spent"}
            write_json(path, report)
            continue
        t0 = time.perf_counter()
        try:
            plans[name]()
            report["sections"][name] = {"ok": True, "seconds": time.perf_counter() - t0}
        except Exception as e:
            report["sections"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                        "traceback": _trace()}
            print(report["sections"][name]["traceback"], flush=True)
        write_json(path, report)
    report["seconds"] = time.perf_counter() - began
    write_json(path, report)
    return report


if __name__ == "__main__":
    main()
