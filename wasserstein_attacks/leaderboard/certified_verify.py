"""Re-running CERTIFY for a certified entry: the only writer of its verification record.

``verify_certified`` loads the entry's checkpoint (hash-checked by ``load_certified`` before anything is
unpickled, and then only with ``weights_only=True``) into its architecture, re-runs
``SmoothedClassifier.certify`` with the entry's seed, ``n0``, ``n``, ``alpha`` and dataset indices on the
first ``K`` examples, and passes when every re-run count of the claimed class is within
``COUNT_TOLERANCE * n`` of the claimed count (the same CPU build reproduces it bitwise; the slack absorbs
float differences across machines) and the certified accuracy of the re-run is at least the claim at every
radius, on those ``K`` examples. The claimed numbers are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._util import check_int, git_commit, weights_sha256
from .certified import PARAMS, certified_numbers, certified_problems, load_certified
from .io import write_verified
from .schema import TOOL, clean_text, entry_sha256, utc_now
from .verify import load_data, load_model

__all__ = ["COUNT_TOLERANCE", "verify_certified"]

#: Largest accepted |re-run count - claimed count|, as a fraction of ``n`` (floored to a count).
COUNT_TOLERANCE = 0.001
# Relative difference accepted between a claimed mass N(x) (pixel-unit noise) and the dataset image's.
_MASS_RTOL = 1e-6


def _check(passed: bool, detail: str) -> dict:
    return {"passed": bool(passed), "detail": clean_text(detail, 2000)}


def _examples(data: dict, images: torch.Tensor, labels: torch.Tensor, k: int, checks: dict):
    """Take the entry's first ``k`` examples from the dataset: ``(x [k, C, H, W], index [k])`` or ``None``."""
    index = torch.tensor(data["examples"]["index"][:k], dtype=torch.long)
    if int(index.max()) >= len(labels):
        checks["dataset"] = _check(False, f"entry indices reach {int(index.max())}, the dataset has "
                                          f"{len(labels)}")
        return None
    x, y = images[index].float(), labels[index].long()
    same = y.tolist() == data["examples"]["label"][:k]
    checks["dataset"] = _check(same, f"labels of the first {k} examples {'match' if same else 'DIFFER from'} "
                                     f"the dataset {data['certification']['dataset']['name']!r}")
    return (x, index) if same else None


def _mass_check(data: dict, x: torch.Tensor) -> dict | None:
    """Pixel-unit noise only: the claimed masses N(x) (which scale the radii) against the images'."""
    claimed = data["examples"].get("mass")
    if claimed is None:
        return None
    got = x.to(torch.float64).sum((1, 2, 3)).tolist()
    bad = [i for i, (m, g) in enumerate(zip(claimed, got, strict=False)) if m is not None and
           not abs(m - g) <= _MASS_RTOL * g]
    return _check(not bad, f"claimed masses {'match' if not bad else 'DIFFER from'} the images' "
                           f"(relative {_MASS_RTOL:g}){f' at rows {bad[:20]}' if bad else ''}")


def _count_checks(data: dict, result, k: int, checks: dict) -> int:
    """Compare the re-run counts of the claimed classes with the claims; returns the largest |delta|."""
    ex, n = data["examples"], data["certification"]["n"]
    selected = torch.tensor(ex["selected"][:k], dtype=torch.long)
    if int(selected.max()) >= result.counts.shape[1]:
        checks["counts"] = _check(False, f"examples.selected names class {int(selected.max())}, the model "
                                         f"has {result.counts.shape[1]}")
        return n
    rerun = result.counts.gather(1, selected[:, None]).squeeze(1).numpy()
    delta = np.abs(rerun - np.asarray(ex["count"][:k]))
    tol = math.floor(COUNT_TOLERANCE * n)
    far = np.flatnonzero(delta > tol)
    detail = f"re-run counts of the claimed classes within {tol} of the claims (max |delta| "
    detail += f"{int(delta.max())} of n = {n})"
    if far.size:
        detail += f"; beyond at dataset indices {[ex['index'][i] for i in far[:20]]}"
    checks["counts"] = _check(far.size == 0, detail)
    # A class the n0 draws would not select again: its certificate is not reproduced (abstentions aside).
    certified = np.asarray(ex["p_lower"][:k]) > 0.5
    moved = np.flatnonzero(certified & (result.selected.numpy() != selected.numpy()))
    checks["selection"] = _check(moved.size == 0, f"{moved.size} certified examples select another class "
                                                  "in the re-run" if moved.size else "same selected class on "
                                                  "every certified example")
    return int(delta.max())


def _accuracy_check(data: dict, result, k: int) -> dict:
    """Certified accuracy of the re-run >= the claim's on the same ``k`` examples, at every radius."""
    ex, keys = data["examples"], list(data["claimed"]["certified_accuracy"])
    label = ex["label"][:k]
    pairs = zip(ex["selected"][:k], ex["p_lower"][:k], strict=True)
    prediction = [s if p > 0.5 else -1 for s, p in pairs]  # as validate derives it
    claimed = certified_numbers(label, prediction, ex["radius"][:k], keys)["certified_accuracy"]
    rerun = certified_numbers(label, result.prediction.numpy(), result.radius.numpy(), keys)
    rerun = rerun["certified_accuracy"]
    low = [key for key in keys if rerun[key] < claimed[key]]
    detail = ", ".join(f"{key}: {rerun[key]:.4f} (claim {claimed[key]:.4f})"
                       for key in sorted(keys, key=float))
    return _check(not low, f"re-run certified accuracy on the first {k} examples: {detail}"
                  + (f"; below the claim at {low}" if low else ""))


def _rerun(data: dict, model: torch.nn.Module, x: torch.Tensor, index: torch.Tensor, batch_size: int):
    """``SmoothedClassifier.certify`` with the entry's noise and parameters, per-example seeds by index."""
    from ..defenses.smoothing import SmoothedClassifier, make_noise

    nz, c = data["noise"], data["certification"]
    with torch.no_grad():
        num_classes = int(model(x[:1]).shape[1])
    noise = make_noise(nz["name"], sigma=nz["sigma"], relative=nz["relative"])
    smoothed = SmoothedClassifier(model, noise, num_classes=num_classes, batch_size=batch_size)
    return smoothed.certify(x, n0=c["n0"], n=c["n"], alpha=c["alpha"], seed=c["seed"], indices=index,
                            p=c["p"])


def _run_checks(data: dict, path: Path, k: int, model, loaders: dict, device, batch_size: int):
    """Fill the checks that need the model; returns ``(checks, max count delta or None)``."""
    checks = {"checkpoint": _check(True, f"{data['model']['checkpoint']} matches model.checkpoint_sha256 and "
                                         "model.weights_sha256")}
    images, labels = loaders["data"](data["certification"]["dataset"]["name"],
                                     data["certification"]["dataset"]["split"])
    loaded = _examples(data, images, labels, k, checks)
    if loaded is None:
        return checks, None
    x, index = loaded
    mass = _mass_check(data, x)
    if mass is not None:
        checks["mass"] = mass
    if model is None:
        model = loaders["model"](data["architecture"], path.with_name(data["model"]["checkpoint"]))
    elif weights_sha256(model) != data["model"]["weights_sha256"]:  # a model handed in must be the entry's
        checks["checkpoint"] = _check(False, "the model passed in does not hold the weights of "
                                             "model.weights_sha256")
        return checks, None
    model = model.to(device).eval()
    try:
        result = _rerun(data, model, x.to(device), index, batch_size)
    except ValueError as e:  # NaN/inf logits met on the way
        checks["model_outputs"] = _check(False, f"model outputs: {e}")
        return checks, None
    delta = _count_checks(data, result, k, checks)
    checks["certified_accuracy"] = _accuracy_check(data, result, k)
    return checks, delta


def _record(data: dict, k: int, checks: dict, delta: int | None, by: str | None, now: str | None) -> dict:
    """Assemble the verification record: status from the checks, and what it binds to."""
    passed = all(c["passed"] for c in checks.values()) and "counts" in checks
    return {
        "status": "verified" if passed else "failed",
        "by": clean_text(by or f"{TOOL} verify", 200),
        "at": now or utc_now(),
        "tool": f"{TOOL} verify (wasserstein_attacks {__version__})",
        "package_version": __version__,
        "git_commit": git_commit(),
        # What this record speaks for: it counts only while these match the entry
        # (certified_binding_problems).
        "binding": {"entry_sha256": entry_sha256(data),
                    "checkpoint_sha256": data["model"]["checkpoint_sha256"],
                    "certification": {key: data["certification"][key] for key in PARAMS}},
        "examples_checked": k,
        "max_count_delta": delta,
        "count_tolerance": math.floor(COUNT_TOLERANCE * data["certification"]["n"]),
        "checks": checks,
    }


def verify_certified(
    path: Path,
    examples: int | None = None,
    *,
    model: torch.nn.Module | None = None,
    model_loader: Callable[[str, Path], torch.nn.Module] | None = None,
    data_loader: Callable[[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 1000,
    by: str | None = None,
    now: str | None = None,
    write: bool = True,
) -> dict:
    """Re-run CERTIFY for the certified entry at ``path``; returns its verification record.

    Args:
        path: the entry's JSON (it must validate, checkpoint hashes included: ``EntryError`` otherwise).
        examples: re-check the first ``examples`` examples (default: all).
        model: the entry's model, already loaded (its weights must be the entry's); default:
            ``model_loader(architecture, <id>.pt)``.
        model_loader: ``(architecture, checkpoint path) -> model`` (default: ``verify.load_model``).
            The defaults are looked up when called, so ``wattack-leaderboard verify`` can be driven
            with other loaders by patching this module's ``load_model`` / ``load_data``.
        data_loader: ``(name, split) -> (images [N, C, H, W] in [0, 1], labels [N])``, indexed by the
            entry's dataset indices (default: ``verify.load_data``).
        device: where the base classifier runs.
        batch_size: noise draws per forward pass (the draws do not depend on it).
        by: who runs the verification (recorded).
        now: the record's time (default: now, UTC).
        write: write the record into the entry (atomically).

    Returns:
        The record: status ``verified`` when every check passed (see the module doc), else ``failed``;
        ``binding`` ties it to the entry, the checkpoint and the certification parameters.

    """
    path = Path(path)
    data = load_certified(path).data
    total = data["claimed"]["n_examples"]
    k = total if examples is None else min(check_int(examples, "examples"), total)
    loaders = {"model": model_loader or load_model, "data": data_loader or load_data}
    checks, delta = _run_checks(data, path, k, model, loaders, device, check_int(batch_size, "batch_size"))
    record = _record(data, k, checks, delta, by, now)
    if write:
        write_verified(path, data, record, certified_problems)
    return record
