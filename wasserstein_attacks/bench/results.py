"""A run's outputs: ``results.json`` (schema-checked, deterministic), ``examples.npz``, ``timings.json``.

``results.json`` is built from the saved batches only (never from what happens to be in memory), so an
uninterrupted run, a resumed one and merged shards write the same bytes. Wall times go to
``timings.json`` for the same reason.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._util import atomic_write, git_commit, plain, radius_key, write_json
from ..attacks.suite import SuiteResult
from . import report
from .spec import RunSpec
from .state import STATE, CorruptStateError, batch_path, load_batch, read_state_json, start_state

__all__ = [
    "SCHEMA_VERSION",
    "run_header",
    "build_results",
    "finish",
    "merge",
    "validate_results",
    "load_results",
]

SCHEMA_VERSION = 1
_SCHEMA = Path(__file__).with_name("results_schema.json")


def _hardware(device: torch.device) -> dict:
    return {
        "device": device.type,
        "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run_header(spec: RunSpec) -> dict:
    """Return the shard-independent part of ``results.json``: what ran, on what, and the provenance."""
    return plain(
        {
            "schema_version": SCHEMA_VERSION,
            "radii": list(spec.radii),
            "threat": spec.threat_info,
            "suite": spec.suite_info,
            "model": spec.model_info,
            "dataset": spec.data_info,
            "seed": spec.seed,
            "batch_size": spec.batch_size,
            "exact_check": {"fraction": spec.exact_fraction, "tolerance": spec.threat.cost_tol},
            "package_version": __version__,
            "git_commit": git_commit(),
            "config_hash": spec.config_hash,
            "config": spec.config,
            "hardware": _hardware(spec.device),
            "model_checks": spec.model_checks,
        }
    )


def build_results(header: dict, res: SuiteResult, shard: dict | None) -> dict:
    """``results.json`` content from the header and the concatenated per-example result."""
    inf_to_none = lambda t: [v if math.isfinite(v) else None for v in t.tolist()]  # noqa: E731
    exact = res.exact_distance
    checked = ~torch.isnan(exact)
    tol = float(header["exact_check"]["tolerance"])
    # Test the claim that is counted: an example with certified cost c counts as broken at every grid
    # radius r with c <= r (1 + tol), so its exact distance must be inside the smallest such ball (not
    # merely inside the ball of the attack call that found it).
    within = checked & (exact <= res.counted_radius() * (1 + tol))
    n_checked = int(checked.sum())
    broken_by = res.broken_by
    out = dict(header)
    out.update(
        {
            "n_examples": int(res.indices.numel()),
            "clean_accuracy": res.clean_accuracy,
            "robust_accuracy": {radius_key(r): res.robust_accuracy(r) for r in res.radii},
            "per_attack_robust_accuracy": {
                a: {radius_key(r): v for r, v in curve.items()}
                for a, curve in res.cumulative_robust_accuracy().items()
            },
            "per_attack_broken": {a: sum(1 for b in broken_by if b == a) for a in res.attacks},
            "exact_check": {
                **header["exact_check"],
                "checked": n_checked,
                "within_counted_radius": int(within.sum()),
                "max_exact_over_cost": float(
                    (exact[checked] / res.broken_cost[checked].clamp_min(1e-300)).max()
                )
                if n_checked
                else None,
            },
            "examples": {
                "index": res.indices.tolist(),
                "label": res.labels.tolist(),
                "clean_correct": res.clean_correct.tolist(),
                "broken_cost": inf_to_none(res.broken_cost),
                "broken_radius": inf_to_none(res.broken_radius),
                "broken_by": broken_by,
                "exact_distance": [None if math.isnan(v) else v for v in exact.tolist()],
            },
            "shard": shard,
        }
    )
    return out


def _timings(res: SuiteResult, batch_times: list[dict]) -> dict:
    per: dict[str, dict[str, float]] = {}
    for t in res.timings:
        d = per.setdefault(t["attack"], {})
        key = radius_key(t["radius"])
        d[key] = d.get(key, 0.0) + float(t["seconds"])
    return {
        "torch_threads": torch.get_num_threads(),
        "total_seconds": sum(b["seconds"] for b in batch_times),
        "per_attack_seconds": per,
        "batches": batch_times,
        "note": "seconds of the run that computed each batch (a resumed run keeps the first times)",
    }


def _write_outputs(
    run_dir: Path, results: dict, res: SuiteResult, clean: torch.Tensor, timings: dict
) -> dict:
    """results.json, examples.npz, timings.json, curve.png, examples.png; returns their paths."""
    validate_results(results)
    paths = {
        name: run_dir / name
        for name in ("results.json", "examples.npz", "timings.json", "curve.png", "examples.png")
    }
    write_json(paths["results.json"], results)
    arrays = {
        "index": res.indices.numpy(),
        "label": res.labels.numpy(),
        "clean_correct": res.clean_correct.numpy(),
        "clean": clean.numpy(),
        "adversarial": res.adversarial.numpy(),
        "broken_cost": res.broken_cost.numpy(),
        "broken_radius": res.broken_radius.numpy(),
        "broken_attack": res.broken_attack.numpy(),
        "exact_distance": res.exact_distance.numpy(),
        "attacks": np.array(list(res.attacks)),
    }
    atomic_write(paths["examples.npz"], lambda f: np.savez_compressed(f, **arrays))
    write_json(paths["timings.json"], timings)
    report.plot_curve(results, paths["curve.png"])
    report.plot_examples(res, clean, paths["examples.png"])
    return paths


def finish(run_dir: Path, header: dict, loaded: list, shard: dict | None, logger: dict) -> dict:
    """Write every output of a run from its saved batches and report it; returns the results dict.

    Args:
        run_dir: the run folder (outputs go beside its ``state/``).
        header: the run's header (``run_header``, as saved in ``state/header.json``).
        loaded: ``(batch number, (result, clean images, timing))`` of every batch, in order.
        shard: the ``shard`` entry of results.json (``None`` for a whole run).
        logger: the logger config (``kind`` = ``"none"`` or ``"wandb"``).

    """
    res = SuiteResult.concatenate([part for _, (part, _, _) in loaded])
    clean = torch.cat([c for _, (_, c, _) in loaded])
    times = [{"batch": k, "seconds": timing["seconds"]} for k, (_, _, timing) in loaded]
    results = build_results(header, res, shard)
    paths = _write_outputs(run_dir, results, res, clean, _timings(res, times))
    report.warn_exact_check(results)
    if logger.get("kind") == "wandb":
        report.log_wandb(logger, results, res, clean, paths, run_dir)
    report.print_summary(results, paths, run_dir)
    return results


# ---------------------------------------------------------------------------- shards


def _read_shard_folders(folders: list[Path]) -> list[tuple[Path, dict, dict]]:
    """``(folder, header, run info)`` of each folder, checked to be shards of one run."""
    infos = []
    for f in folders:
        h, r = f / STATE / "header.json", f / STATE / "run.json"
        if not (h.is_file() and r.is_file()):
            raise ValueError(f"folders: {f} is not a wattack-bench run folder (no {STATE}/header.json)")
        try:
            infos.append((f, read_state_json(h), read_state_json(r)))
        except CorruptStateError as exc:
            raise ValueError(f"folders: {exc}") from None
    header = infos[0][1]
    strip = lambda d: {k: v for k, v in d.items() if k != "hardware"}  # noqa: E731
    for f, h, _ in infos[1:]:
        if strip(h) != strip(header):
            diff = sorted(k for k in set(h) | set(header) if k != "hardware" and h.get(k) != header.get(k))
            raise ValueError(
                f"folders: {f} differs from {infos[0][0]} in {', '.join(diff)}: not shards of one run"
            )
    return infos


def _order_shards(infos: list[tuple[Path, dict, dict]]) -> list[tuple[Path, dict]]:
    """``(folder, shard info)`` sorted by shard index; ``ValueError`` unless exactly ``0/n .. n-1/n``."""
    shards = {}
    for f, _, r in infos:
        s = r.get("shard")
        if s is None:
            raise ValueError(f"folders: {f} is not a shard (it ran unsharded)")
        if s["index"] in shards:
            raise ValueError(
                f"folders: shard {s['index']}/{s['count']} given twice ({shards[s['index']][0]}, {f})"
            )
        shards[s["index"]] = (f, s)
    counts = {s["count"] for _, s in shards.values()}
    if len(counts) != 1 or sorted(shards) != list(range(counts.pop())):
        got = ", ".join(f"{shards[i][1]['index']}/{shards[i][1]['count']}" for i in sorted(shards))
        raise ValueError(f"folders: shards must be 0/n .. n-1/n exactly once, got {got}")
    return [shards[i] for i in sorted(shards)]


def merge(folders: list[str | Path], out_dir: str | Path, *, logger: dict | None = None) -> dict:
    """Combine the shard folders of one sharded run into ``out_dir`` (same outputs as an unsharded run).

    Checks that every shard ran the same config (config hash), that the shards are ``0/n .. n-1/n``
    exactly once, and that each finished all its batches. ``ValueError`` (one line) otherwise.
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise ValueError("folders must list the shard folders to merge (each with state/header.json)")
    infos = _read_shard_folders(folders)
    header = infos[0][1]
    loaded = []
    for f, s in _order_shards(infos):
        for k in range(*s["batches"]):
            try:
                batch = load_batch(batch_path(f, k), header)
            except CorruptStateError as exc:
                raise ValueError(f"folders: {exc}: rerun that shard's command to redo it") from None
            if batch is None:
                raise ValueError(
                    f"folders: {f} lacks finished batch {k}: rerun that shard's command to finish it"
                )
            loaded.append((k, batch))
    hardware = [h["hardware"] for _, h, _ in infos]
    merged = dict(header)
    merged["hardware"] = hardware[0] if all(h == hardware[0] for h in hardware) else {"shards": hardware}
    out_dir = Path(out_dir)
    start_state(
        out_dir, merged, {"shard": None, "n_batches": infos[0][2]["n_batches"], "merged_from": len(infos)}
    )
    return finish(out_dir, merged, loaded, None, logger or {"kind": "none"})


# ---------------------------------------------------------------------------- schema


def validate_results(results: dict) -> None:
    """``ValueError`` unless ``results`` follows ``results_schema.json`` (and its arrays agree in length)."""
    import jsonschema

    schema = json.loads(_SCHEMA.read_text(encoding="utf-8"))
    try:
        jsonschema.validate(plain(results), schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "<top>"
        raise ValueError(f"results do not follow results_schema.json at {where}: {exc.message}") from None
    n = results["n_examples"]
    for k, v in results["examples"].items():
        if len(v) != n:
            raise ValueError(f"results: examples.{k} has {len(v)} entries, n_examples is {n}")
    if sorted(results["robust_accuracy"]) != sorted(radius_key(r) for r in results["radii"]):
        raise ValueError("results: robust_accuracy keys must be the radii written with radius_key")


def load_results(path: str | Path) -> dict:
    """Read and validate a ``results.json`` (a file or a run folder); untrusted input is schema-checked."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    validate_results(results)
    return results
