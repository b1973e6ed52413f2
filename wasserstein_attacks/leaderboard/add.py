"""Turning a benchmark run (``results.json`` + ``examples.npz`` of ``wattack-bench``) into an entry.

The entry keeps the run's numbers as claimed, all per-example outcomes, and a seeded random subset of
at most ``MAX_SAMPLE`` broken examples with their images; it is validated exactly as
``validate`` would before anything is written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .._util import atomic_write, radius_key, sha256_bytes
from .io import json_bytes, npz_bytes, read_json
from .schema import (
    HEADLINE_RADIUS,
    MAX_ENTRY_BYTES,
    MAX_NPZ_BYTES,
    MAX_RESULTS_BYTES,
    MAX_SAMPLE,
    SCHEMA_VERSION,
    EntryError,
    array_problems,
    clean_text,
    eligible,
    entry_problems,
    grid_radius,
    robust_bounds,
    schema_problems,
    threat_id,
    utc_now,
)
from .verify import check_architecture

__all__ = ["add_entry"]

_PER_EXAMPLE = ("index", "label", "clean_correct", "broken_cost", "broken_by")


def add_entry(
    results_path: Path,
    *,
    root: Path,
    entry_id: str | None = None,
    name: str | None = None,
    authors: str,
    source: str,
    training: str,
    architecture: str | None = None,
    paper: str | None = None,
    note: str | None = None,
    headline_radius: float | None = None,
    examples_path: Path | None = None,
    selection_seed: int | None = None,
    added: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn a benchmark run (``results.json`` + ``examples.npz``) into a leaderboard entry.

    Args:
        results_path: the run's ``results.json`` (agreed format, written by ``wattack-bench``).
        root: leaderboard folder; the entry goes to ``root/entries/<dataset>/<threat-id>/<id>.json``.
        entry_id: file stem (letters, digits, ``._-``; default: the results' model name).
        name: display name (default: ``entry_id``).
        authors: who made the model.
        source: http(s) link to the paper or code.
        training: training method, e.g. ``"standard"``.
        architecture: ``models.build_model`` name (suffix ``-binarize`` for the binarized-input
            defense); default: the results' model name.
        paper: citation.
        note: anything a reader should know (e.g. "example only").
        headline_radius: ranking radius (default 0.1 for MNIST, else the grid's middle radius).
        examples_path: the run's ``examples.npz`` (default: beside ``results.json``).
        selection_seed: seed of the committed subset of broken examples (default: the run's seed).
        added: ``YYYY-MM-DDTHH:MM:SSZ`` (default: now, UTC).
        overwrite: replace an existing entry (its verification block is dropped).

    Returns:
        Path of the written entry JSON. Raises ``EntryError`` / ``ValueError`` without writing
        anything if the run does not make a valid entry.

    """
    results_path = Path(results_path)
    results, raw = _read_results(results_path)
    threat = _threat(results)
    cost_tol = threat["tolerances"]["cost_rel"]
    arrays = _per_example_arrays(results)
    grid, robust = _robust_table(results)
    dataset = {k: _need(results, f"dataset.{k}") for k in ("name", "split", "n")}
    headline = _headline_radius(headline_radius, dataset["name"], grid, robust)
    seed = int(_need(results, "seed"))
    selection_seed = seed if selection_seed is None else int(selection_seed)
    rows = _select_sample(arrays, robust, cost_tol, selection_seed)
    _attach_sample(arrays, rows, Path(examples_path) if examples_path is not None
                   else results_path.parent / "examples.npz")
    model = _need(results, "model")
    entry_id = entry_id or re.sub(r"[^A-Za-z0-9._-]+", "-", str(_need(model, "name"))).strip("-.")[:64]
    blob = npz_bytes(arrays)
    data = {
        "schema_version": SCHEMA_VERSION,
        "id": entry_id,
        # What the submitter typed is kept as typed: the schema rejects, it never silently rewrites.
        "name": name or entry_id,
        "authors": authors,
        "source": source,
        **({"paper": paper} if paper else {}),
        **({"note": note} if note else {}),
        # Without an explicit architecture the model config's name must be one `verify` can build.
        "architecture": architecture or check_architecture(str(_need(model, "name"))),
        "training": training,
        "added": added or utc_now(),
        "dataset": dataset,
        "threat": threat,
        "suite": _suite(results),
        "claimed": _claimed(results, arrays, grid, robust, headline, cost_tol),
        "model": _model(model),
        "provenance": _provenance(results, raw, seed),
        **_model_checks(results),
        "examples": _examples(entry_id, blob, selection_seed, arrays, rows, robust, cost_tol),
        "verification": None,
    }
    target = Path(root) / "entries" / str(dataset["name"]) / threat["id"] / f"{entry_id}.json"
    _write_entry(target, data, arrays, blob, overwrite, where=f"entry from {results_path}")
    return target


# --------------------------------------------------------------------------------------------------- the run
def _need(d: dict, dotted: str):
    """``d[a][b]...`` for ``dotted = "a.b..."``; ``ValueError`` naming the missing field."""
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise ValueError(f"results.json lacks {dotted!r} (see the agreed results.json format)")
        cur = cur[part]
    return cur


def _read_results(path: Path) -> tuple[dict, bytes]:
    """Read a whole run's ``results.json`` (schema-checked, not a shard); return it and its bytes."""
    results, raw = read_json(path, MAX_RESULTS_BYTES, "results")
    if not isinstance(results, dict) or results.get("schema_version") != 1:
        raise ValueError(f"{path}: expected a results.json object with schema_version 1")
    problems = schema_problems(results, "results")
    if problems:
        raise EntryError(str(path), problems)
    if results.get("shard") is not None:
        raise ValueError(f"{path} is one shard of a run: merge the shards first (wattack-merge)")
    return results, raw


def _threat(results: dict) -> dict:
    """Build the entry's threat block from the run's (free text cleaned and bounded; empty names dropped)."""
    th = _need(results, "threat")
    threat = {
        "id": threat_id(_need(th, "p"), _need(th, "kernel_size"), _need(th, "box")),
        "name": clean_text(th.get("name") or "", 100) or None,
        "p": th["p"],
        "kernel_size": th["kernel_size"],
        "box": th["box"],
        "eps_units": clean_text(_need(th, "eps_units"), 200),
        "mass_normalisation": clean_text(th.get("mass_normalisation") or "", 100) or None,
        "tolerances": {k: _need(th, f"tolerances.{k}") for k in ("mass_rel", "cost_rel", "box_abs")},
    }
    # kernel_size and box are meaningful as null (dense plans, no box); the optional names are not.
    return {k: v for k, v in threat.items() if v is not None or k in ("kernel_size", "box")}


def _per_example_arrays(results: dict) -> dict[str, np.ndarray]:
    """Build the npz's per-example arrays from the run's lists; attack names sorted, -1: not broken."""
    ex = _need(results, "examples")
    n = int(_need(results, "n_examples"))
    cols = {k: _need(ex, k) for k in _PER_EXAMPLE}
    if any(not isinstance(v, list) or len(v) != n for v in cols.values()):
        raise ValueError(f"results.json examples.* must be lists of n_examples = {n} values")
    names = sorted({b for b in cols["broken_by"] if b is not None})
    return {
        "index": np.asarray(cols["index"], dtype=np.int64),
        "label": np.asarray(cols["label"], dtype=np.int64),
        "clean_correct": np.asarray(cols["clean_correct"], dtype=bool),
        "broken_cost": np.asarray([math.inf if c is None else float(c) for c in cols["broken_cost"]]),
        "broken_by": np.asarray([-1 if b is None else names.index(b) for b in cols["broken_by"]], np.int16),
        "attack_names": np.asarray(names, dtype="<U64"),
    }


def _robust_table(results: dict) -> tuple[list[float], dict[str, float]]:
    """Return the sorted radius grid and the claimed robust accuracy per canonical radius key."""
    grid = sorted(float(r) for r in _need(results, "radii"))
    robust = {radius_key(float(k)): float(v) for k, v in _need(results, "robust_accuracy").items()}
    if sorted(robust, key=float) != [radius_key(r) for r in grid]:
        raise ValueError(f"results.json robust_accuracy keys {sorted(robust)} do not match radii {grid}")
    return grid, robust


def _headline_radius(headline: float | None, dataset: str, grid: list[float], robust: dict) -> float:
    """``headline`` if given, else the dataset's ``HEADLINE_RADIUS`` if in the grid, else its middle."""
    if headline is None:
        default = HEADLINE_RADIUS.get(dataset)
        headline = default if default in grid else grid[len(grid) // 2]
    if radius_key(headline) not in robust:
        raise ValueError(f"headline_radius {headline} must be one of the run's radii {grid}")
    return headline


# ---------------------------------------------------------------------------------------- committed examples
def _select_sample(arrays: dict, robust: dict, cost_tol: float, seed: int) -> np.ndarray:
    """Rows of the committed broken examples: a seeded uniform choice of ``MAX_SAMPLE``, sorted by index."""
    rows = np.flatnonzero(eligible(arrays, robust, cost_tol))
    if rows.size > MAX_SAMPLE:
        rows = np.random.default_rng(seed).choice(rows, size=MAX_SAMPLE, replace=False)
    return rows[np.argsort(arrays["index"][rows], kind="stable")]


def _attach_sample(arrays: dict, rows: np.ndarray, examples_path: Path) -> None:
    """Add ``sample_index``, ``sample_clean`` and ``sample_adversarial`` of ``rows`` from the run's npz."""
    with np.load(examples_path, allow_pickle=False) as z:  # the run's own file, written by wattack-bench
        run_index = {int(i): j for j, i in enumerate(z["index"].tolist())}
        pick = [run_index.get(int(i)) for i in arrays["index"][rows]]
        if None in pick:
            raise ValueError(f"{examples_path} lacks the images of broken examples "
                             f"{arrays['index'][rows].tolist()}")
        arrays["sample_index"] = arrays["index"][rows]
        arrays["sample_clean"] = np.asarray(z["clean"][pick])
        arrays["sample_adversarial"] = np.asarray(z["adversarial"][pick])


def _examples(entry_id: str, blob: bytes, selection_seed: int, arrays: dict, rows: np.ndarray, robust: dict,
              cost_tol: float) -> dict:
    """Build the ``examples`` block: its npz and the committed examples' index, label, cost, radius."""
    costs = arrays["broken_cost"][rows].tolist()
    return {
        "file": f"{entry_id}.npz",
        "sha256": sha256_bytes(blob),
        "selection_seed": selection_seed,
        "index": arrays["sample_index"].tolist(),
        "label": arrays["label"][rows].tolist(),
        "cost": costs,
        "radius": [grid_radius(c, robust, cost_tol) for c in costs],
    }


# ---------------------------------------------------------------------------------------------- other blocks
def _curve_radii(grid: list[float]) -> list[float]:
    """Radii at which the accuracy curve is recorded: 0, the grid, and 48 log-spaced points up to its top.

    The log points start a decade below the smallest positive grid radius (4 significant digits).
    """
    positive = [r for r in grid if r > 0]
    pts = {0.0, *grid}
    if positive:
        pts |= {float(f"{r:.4g}") for r in np.geomspace(min(positive) / 10, max(positive), 48).tolist()}
    return sorted(pts)


def _claimed(results: dict, arrays: dict, grid: list[float], robust: dict, headline: float,
             cost_tol: float) -> dict:
    """Build the ``claimed`` block: the run's numbers, and the curve from the per-example arrays."""
    curve_r = _curve_radii(grid)
    per_attack = {a: {radius_key(float(k)): float(v) for k, v in t.items()}
                  for a, t in _need(results, "per_attack_robust_accuracy").items()}
    return {
        "n_examples": int(_need(results, "n_examples")),
        "clean_accuracy": float(_need(results, "clean_accuracy")),
        "robust_accuracy": robust,
        "headline_radius": radius_key(headline),
        "curve": {"radius": curve_r, "accuracy": [robust_bounds(arrays, r, cost_tol)[0] for r in curve_r]},
        **({"exact_check": results["exact_check"]} if results.get("exact_check") else {}),
        "per_attack_robust_accuracy": per_attack,
    }


def _suite(results: dict) -> dict:
    """Build the ``suite`` block: name, version, walk order, attacks with their targeted runs."""
    block = {
        **{k: _need(results, f"suite.{k}") for k in ("name", "version", "attacks")},
        **({"order": results["suite"]["order"]} if "order" in results.get("suite", {}) else {}),
    }
    # Runs written before results.json listed targeted runs per attack keep them in their config.
    targets = ((results.get("config") or {}).get("suite") or {}).get("targets") or {}
    attacks = [dict(a) for a in block["attacks"]]
    for a in attacks:
        if "targets" not in a and targets.get(a["name"]):
            a["targets"] = targets[a["name"]]
    return {**block, "attacks": attacks}


def _model(model: dict) -> dict:
    """Build the ``model`` block: the checkpoint's file name (no folders) and hashes."""
    return {
        **({"checkpoint": Path(str(model["checkpoint"])).name} if model.get("checkpoint") else {}),
        "checkpoint_sha256": _need(model, "checkpoint_sha256"),
        **({"weights_sha256": model["weights_sha256"]} if model.get("weights_sha256") else {}),
    }


def _provenance(results: dict, raw: bytes, seed: int) -> dict:
    """Build the ``provenance`` block: hardware as one ``key=value; ...`` line, the results' sha256."""
    hardware = results.get("hardware")
    if isinstance(hardware, dict):
        hardware = "; ".join(f"{k}={hardware[k]}" for k in sorted(hardware))
    commit = results.get("git_commit")
    return {
        "package_version": str(_need(results, "package_version")),
        "git_commit": commit if commit not in ("", "unknown") else None,
        "config_hash": results.get("config_hash"),
        "seed": seed,
        "hardware": clean_text(hardware or "unknown", 300),
        "results_sha256": sha256_bytes(raw),
    }


def _model_checks(results: dict) -> dict:
    """``{"model_checks": ...}`` with the run's scalar and short-list checks (text cleaned), or ``{}``."""
    def scalar(v):
        return clean_text(v, 300) if isinstance(v, str) else v

    checks = {}
    for k, v in (results.get("model_checks") or {}).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            checks[k] = scalar(v)
        elif isinstance(v, list) and all(isinstance(s, (str, int, float, bool)) or s is None for s in v):
            checks[k] = [scalar(s) for s in v[:32]]
    return {"model_checks": checks} if checks else {}


# --------------------------------------------------------------------------------------------------- writing
def _write_entry(target: Path, data: dict, arrays: dict, blob: bytes, overwrite: bool, where: str) -> None:
    """Validate the entry as ``validate`` would, check the size limits, then write npz and JSON atomically."""
    problems = entry_problems(data, target) or array_problems(data, arrays)
    if problems:
        raise EntryError(where, problems)
    if len(blob) > MAX_NPZ_BYTES:
        raise EntryError(str(target), [f"npz would be {len(blob)} bytes; the limit is {MAX_NPZ_BYTES}"])
    js = json_bytes(data)
    if len(js) > MAX_ENTRY_BYTES:
        raise EntryError(str(target), [f"entry would be {len(js)} bytes; the limit is {MAX_ENTRY_BYTES}"])
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists: pass overwrite=True (--force) to replace it")
    # The npz first: an entry JSON never names an npz that is not there.
    atomic_write(target.with_suffix(".npz"), blob)
    atomic_write(target, js)
