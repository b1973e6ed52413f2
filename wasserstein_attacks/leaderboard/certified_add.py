"""Making a certified entry from a ``wattack-certify`` run folder: ``add_certified``.

The run's ``results.json`` (``defenses.smoothing.report.certification_results``) gives the noise, the
certification parameters, the claims and the per-example counts; the weights come from the run's
``base_model.pt`` (or the checkpoint it certified) and must hash to the run's ``model.weights_sha256``.
The entry is validated exactly as ``validate`` will (``.certified.certified_problems``) before anything is
written, so a run whose claims disagree with its counts, or with ``p != 1``, makes no entry.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import torch

from .._util import atomic_write, radius_key, sha256_bytes, weights_sha256
from .add import _need
from .certified import (
    ABSTAIN,
    CERTIFIED_DIR,
    COLUMNS,
    MAX_CERTIFIED_BYTES,
    METHODS,
    PARAMS,
    THREAT_FOLDER,
    certified_problems,
    read_state,
)
from .io import json_bytes, read_json
from .schema import MAX_RESULTS_BYTES, SCHEMA_VERSION, EntryError, clean_text, utc_now

__all__ = ["add_certified"]


def _check_run(results) -> None:
    """Refuse runs that cannot make an entry: not W1, no per-example counts, radii that disagree."""
    if not isinstance(results, dict):
        raise ValueError("results.json must hold an object (written by wattack-certify)")
    if _need(results, "p") != 1:
        raise ValueError(f"results.json p is {results['p']!r}: flow-space smoothing certifies W1 only "
                         "(p must be 1)")
    ex = _need(results, "examples")
    for key in (*COLUMNS, "prediction", "radius_flow"):
        _need(results, f"examples.{key}")
    n = _need(results, "n_examples")
    if any(not isinstance(v, list) or len(v) != n for v in ex.values()):
        raise ValueError(f"results.json examples.* must be lists of n_examples = {n} values")
    keys = {radius_key(float(r)) for r in _need(results, "radii")}
    if keys != set(_need(results, "certified_accuracy")):
        raise ValueError(f"results.json radii {sorted(keys, key=float)} are not the keys of "
                         f"certified_accuracy {sorted(results['certified_accuracy'])}")
    derived = [s if p > 0.5 else ABSTAIN for s, p in zip(ex["selected"], ex["p_lower"], strict=True)]
    if derived != ex["prediction"]:
        raise ValueError("results.json examples.prediction is not `selected` where p_lower > 1/2 and -1 "
                         "elsewhere")


def _weights(run_dir: Path, results: dict, checkpoint, architecture: str) -> tuple[bytes, str]:
    """Return the certified model's state dict as ``<id>.pt`` bytes and its weights sha256 (checked)."""
    from .verify import check_architecture, load_model

    src = Path(checkpoint) if checkpoint is not None else run_dir / "base_model.pt"
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint {src} does not exist: a run that did not train its base model "
                                "needs checkpoint (--checkpoint) = the certified model's weights")
    state = read_state(src)
    got, want = weights_sha256(state), _need(results, "model.weights_sha256")
    if got != want:
        raise ValueError(f"checkpoint {src}: weights sha256 {got} is not the certified model's {want} "
                         "(results.json model.weights_sha256)")
    buf = io.BytesIO()
    torch.save(state, buf)
    with tempfile.TemporaryDirectory() as tmp:  # verify will load it this way: refuse what it cannot
        (Path(tmp) / "w.pt").write_bytes(buf.getvalue())
        load_model(check_architecture(architecture), Path(tmp) / "w.pt")
    return buf.getvalue(), got


def _summary(block) -> dict | None:
    """Scalars, lists of scalars and one level of such dicts from a run's block (nothing deeper)."""
    def scalar(v):
        return isinstance(v, (str, int, float, bool)) or v is None

    def keep(v):
        return scalar(v) or (isinstance(v, list) and all(map(scalar, v)))

    if not isinstance(block, dict):
        return None
    out = {}
    for k, v in list(block.items())[:32]:
        if keep(v):
            out[str(k)] = v
        elif isinstance(v, dict):
            out[str(k)] = {str(a): b for a, b in list(v.items())[:64] if keep(b)}
    return out


def _method(method: str | None, training) -> str:
    if method is None:
        if not isinstance(training, dict):
            raise ValueError(f"method must be given ({', '.join(map(repr, METHODS))}, --method): the run did "
                             "not train its base model (base_training is null)")
        method = training.get("method", "noise")  # runs before SmoothAdv existed trained with noise only
        if int(training.get("epochs", 1)) == 0:  # a mass prior fitted, nothing trained
            method = "none"
        elif method == "noise" and float(training.get("consistency", 0)) > 0:
            method = "consistency"
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    return method


def _masses(ex: dict) -> list[float | None]:
    """Recover N(x) per example from the run's radii (pixel-unit noise: radius_flow / (sqrt 2 N)).

    Null where nothing is certified: the radius is then 0 whatever the mass.
    """
    pairs = zip(ex["radius_flow"], ex["radius"], strict=True)
    return [f / (math.sqrt(2.0) * r) if r and r > 0 else None for f, r in pairs]


def _build(results: dict, raw: bytes, entry_id: str, meta: dict, blob: bytes, weights: str) -> dict:
    ex, nz = results["examples"], _need(results, "noise")
    examples = {k: ex[k] for k in COLUMNS}
    if nz.get("relative") is False:
        examples["mass"] = _masses(ex)
    prov = {"added": meta.pop("added") or utc_now(), "results_sha256": sha256_bytes(raw),
            "device": clean_text(results.get("device") or "unknown", 100) or "unknown",
            **({"seconds": results["seconds"]} if isinstance(results.get("seconds"), (int, float)) else {}),
            "base_training": _summary(results.get("base_training"))}
    return {
        "schema_version": SCHEMA_VERSION, "id": entry_id, **meta,
        "noise": {k: _need(nz, k) for k in ("name", "sigma", "relative")},
        "certification": {**{k: _need(results, k) for k in PARAMS},
                          "dataset": {k: _need(results, f"dataset.{k}") for k in ("name", "split", "n")}},
        "model": {"checkpoint": f"{entry_id}.pt", "checkpoint_sha256": sha256_bytes(blob),
                  "weights_sha256": weights},
        "claimed": {"n_examples": results["n_examples"], "certified_accuracy": results["certified_accuracy"],
                    **{k: _need(results, k) for k in ("smoothed_accuracy", "abstention_rate")}},
        "examples": examples,
        "provenance": prov,
        # Copied as is: the schema bounds its types; nothing here interprets it.
        **({"empirical": results["empirical"]} if results.get("empirical") is not None else {}),
        "verification": None,
    }


def add_certified(run_dir: Path, entry_id: str, *, root: Path, authors: str, source: str, architecture: str,
                  name: str | None = None, note: str | None = None, method: str | None = None,
                  checkpoint: Path | None = None, added: str | None = None, overwrite: bool = False) -> Path:
    """Turn a ``wattack-certify`` run folder into ``root/certified/<dataset>/W1/<entry_id>.json`` + ``.pt``.

    Args:
        run_dir: the run folder (``results.json``, and ``base_model.pt`` when the run trained its model).
        entry_id: file stem (letters, digits, ``._-``).
        root: leaderboard folder.
        authors: who made the model.
        source: http(s) link to the paper or code.
        architecture: ``models.build_model`` name (suffix ``-massprior`` for a ``models.MassPrior``
            model); the weights must load into it (as ``verify`` will).
        method: ``"noise"``, ``"consistency"``, ``"smoothadv"`` or ``"none"`` (default: from the run's
            ``base_training``: ``none`` when it trained nothing, ``consistency`` for noise training with a
            consistency term).
        checkpoint: the certified model's weights when the run did not train it (default:
            ``run_dir/base_model.pt``); its weights sha256 must be the run's ``model.weights_sha256``.
        name: display name (default: the id).
        note: anything a reader should know.
        added: ``YYYY-MM-DDTHH:MM:SSZ`` (default: now).
        overwrite: replace an existing entry (its verification record is dropped).

    Returns:
        The entry's path. Writes nothing (``EntryError``/``ValueError``/``FileNotFoundError``) for a run
        with ``p != 1``, or whose claims disagree with its per-example counts (``certified_problems``).

    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir {run_dir} is not a folder (expected a wattack-certify run folder)")
    results, raw = read_json(run_dir / "results.json", MAX_RESULTS_BYTES, "results")
    _check_run(results)
    blob, weights = _weights(run_dir, results, checkpoint, architecture)
    meta = {"name": name or entry_id, "authors": authors, "source": source,
            **({"note": note} if note else {}), "architecture": architecture,
            "method": _method(method, results.get("base_training")), "added": added}
    data = _build(results, raw, entry_id, meta, blob, weights)
    target = Path(root) / CERTIFIED_DIR / str(results["dataset"]["name"]) / THREAT_FOLDER / f"{entry_id}.json"
    problems = certified_problems(data, target)
    if problems:
        raise EntryError(f"certified entry from {run_dir}", problems)
    js = json_bytes(data)
    if len(js) > MAX_CERTIFIED_BYTES:
        raise EntryError(str(target), [f"entry would be {len(js)} bytes; the limit is {MAX_CERTIFIED_BYTES}"])
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists: pass overwrite=True (--force) to replace it")
    atomic_write(target.with_suffix(".pt"), blob)  # the weights first: an entry never names a missing file
    atomic_write(target, js)
    return target
