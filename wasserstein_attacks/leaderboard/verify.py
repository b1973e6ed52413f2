"""Re-checking an entry: exactly without the model, statistically with it: its verification block.

The block is the only part of an entry that ``verify`` writes; claimed numbers are never modified.
The default loaders build the model, data and suite an entry names; tests pass their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._util import git_commit, sha256_file, weights_sha256
from ..attacks.base import predict
from .committed import canonical_ball, claims_problems, exact_distances, example_problems
from .io import load_entry_json, read_entry_npz, write_verified
from .schema import (
    CANONICAL_TOLERANCES,
    TOOL,
    array_problems,
    clean_text,
    entry_problems,
    entry_sha256,
    robust_bounds,
    utc_now,
)

__all__ = ["check_architecture", "load_model", "load_data", "load_entry_suite", "verify_entry"]

#: Architecture suffixes ``verify`` knows: the wrapper each one adds around a ``build_model`` network.
_SUFFIXES = {"-binarize": "binarize", "-massprior": "mass_prior"}


# ------------------------------------------------------------------------------------------ default loaders
def _split_architecture(architecture: str) -> tuple[str, str | None]:
    """``("mnist_convnet", "binarize")`` for ``"mnist_convnet-binarize"``: the build name and its wrapper."""
    for suffix, wrapper in _SUFFIXES.items():
        if architecture.endswith(suffix):
            return architecture[: -len(suffix)], wrapper
    return architecture, None


def check_architecture(architecture: str) -> str:
    """``architecture`` if ``verify`` can build it (a ``models.build_model`` name, optional suffix).

    Raises ``ValueError`` (naming ``--architecture``) otherwise.
    """
    from .. import models  # imported late: listing and rendering entries need no models

    if _split_architecture(architecture)[0] not in models.MODELS:
        raise ValueError(
            f"architecture must be a models.build_model name, optionally with one of "
            f"{', '.join(map(repr, _SUFFIXES))}: one of {', '.join(models.MODELS)}, got the model config's "
            f"name {architecture!r}; pass --architecture (e.g. mnist_convnet)"
        )
    return architecture


def load_model(architecture: str, checkpoint: Path) -> torch.nn.Module:
    """Default model loader for ``verify``: ``models.build_model`` + ``models.load_weights``.

    ``architecture`` is a ``build_model`` name, optionally with a suffix naming a wrapper:

    - ``-binarize``: the input-binarization defense (threshold 0.5 in the forward pass) with a
      straight-through backward pass (BPDA): the forward pass, on which success is judged, is the defense
      itself, while the attacks get a useful gradient, as in the benchmark run that made the entry
      (``conf/model/mnist_binarize.yaml``); with the threshold's zero gradient no attack could reproduce
      anything. The checkpoint may hold the bare network.
    - ``-massprior``: ``models.MassPrior`` (a class prior read from the image's mass); the checkpoint holds
      the wrapper's state dict, bins and prior included.

    The checkpoint is read with ``torch.load(weights_only=True)`` (any format ``load_weights`` knows; a
    one-line ``ValueError`` for an unreadable file or refused pickles). Returns the model in eval mode.
    """
    from .. import models

    base, wrapper = _split_architecture(architecture)
    binarize = wrapper == "binarize"
    model = models.build_model(base, binarize=binarize, straight_through=binarize,
                               mass_prior=wrapper == "mass_prior")
    models.load_weights(model, checkpoint)
    return model.eval()


def load_data(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a data split for ``verify``: images float ``[N, C, H, W]`` in [0, 1], labels int64 ``[N]``."""
    from ..data import load_dataset  # imported late like load_model

    ds = load_dataset(name, split)
    return ds.images, ds.labels


def load_entry_suite(name: str, version: int):
    """Load an entry's suite for ``verify``: ``conf/suite/<name>-v<version>.yaml``, else ``<name>.yaml``.

    ``verify`` then requires the loaded suite's version to equal the entry's.
    """
    from ..attacks.suite import load_suite

    try:
        return load_suite(f"{name}-v{version}")
    except ValueError:
        return load_suite(name)


# --------------------------------------------------------------------------------------------------- checks
def _check(passed: bool, detail: str) -> dict:
    return {"passed": bool(passed), "detail": clean_text(detail, 2000)}


def _examples_check(data: dict, arrays: dict) -> dict:
    """Check every committed adversarial example exactly (``.committed``): box, radius, cost, claims."""
    ex = data["examples"]
    m = len(ex["index"])
    if m == 0:
        return _check(True, "no broken examples to check")
    dist, in_box = exact_distances(data, arrays)
    radius = np.asarray([float(r) for r in ex["radius"]])
    tol = CANONICAL_TOLERANCES["cost_rel"]
    ok = in_box & (dist <= radius * (1 + tol)) & (dist <= np.asarray(ex["cost"]) * (1 + tol))
    bad = [ex["index"][i] for i in range(m) if not ok[i]]
    problems = example_problems(data, dist, in_box) + claims_problems(data, dist)
    detail = (f"{m - len(bad)}/{m} committed adversarial examples in the box, inside the ball at their "
              f"counted radius and within their certified cost (exact LP, cost_rel {tol:g}); max exact "
              f"distance / radius = {float(np.max(dist / radius)):.6g}")
    if bad:
        detail += f"; failing dataset indices: {bad[:20]}{' ...' if len(bad) > 20 else ''}"
    if problems and not bad:
        detail += "; " + "; ".join(problems)
    return _check(not problems, detail)


def _static_checks(path: Path, data: dict) -> tuple[dict | None, dict[str, dict]]:
    """Run the checks without a model: the npz, the claims against it, the committed examples exactly."""
    checks: dict[str, dict] = {}
    arrays, problems = read_entry_npz(path, data)
    if arrays is None:
        checks["npz"] = _check(False, "; ".join(problems))
        return None, checks
    checks["npz"] = _check(True, f"{data['examples']['file']} matches examples.sha256")
    problems = array_problems(data, arrays)
    checks["consistency"] = _check(not problems, "; ".join(problems) or
                                   "claimed numbers agree with the per-example arrays")
    if problems:  # malformed arrays: the exact check would read garbage
        checks["examples_in_ball"] = _check(False, "not checked: the per-example arrays are inconsistent")
    else:
        checks["examples_in_ball"] = _examples_check(data, arrays)
    return arrays, checks


def verify_entry(
    path: Path,
    checkpoint: Path | None = None,
    *,
    n: int = 500,
    seed: int = 0,
    z: float = 3.0,
    slack: float = 0.01,
    clean_slack: float = 0.005,
    by: str | None = None,
    device: str | torch.device = "cpu",
    model_loader: Callable[[str, Path], torch.nn.Module] = load_model,
    data_loader: Callable[[str, str], tuple[torch.Tensor, torch.Tensor]] = load_data,
    suite_loader: Callable[[str, int], object] = load_entry_suite,
    write: bool = True,
    progress: bool = False,
    now: str | None = None,
) -> dict:
    """Re-check an entry and write its verification block (claimed numbers are never touched).

    Without a checkpoint (status ``examples-verified`` or ``failed``): the npz's sha256, the claimed
    numbers against the per-example arrays, and every committed adversarial example exactly, as
    ``validate`` does (``.committed``: box, exact LP distance inside the ball at its counted radius and
    within its certified cost, claims no higher than the examples allow).

    With ``checkpoint`` (status ``verified`` or ``failed``), also: its sha256 against the entry; the
    model (``model_loader(architecture, checkpoint)``) gives finite logits (``attacks.base.predict``)
    and misclassifies EVERY committed adversarial example (no slack: a verified example that the model
    gets right is not adversarial); the committed clean
    images and the labels equal the dataset's (``data_loader(name, split)``); clean accuracy on the
    entry's examples within ``clean_slack`` of the claim; and the suite (``suite_loader(name, version)``,
    same version) re-run on a seeded random subset of ``n`` of the entry's examples: at every radius,
    ``|reproduced - claimed| <= z * sqrt(a (1 - a) / n * (N - n) / (N - 1)) + slack`` (``a`` the
    claimed accuracy on all ``N`` examples: the binomial standard error of a subsample without
    replacement, plus ``slack`` for attack randomness and hardware).

    Returns:
        The verification block (also written into the entry, atomically, when ``write``).

    """
    path = Path(path)
    data = load_entry_json(path)
    arrays, checks = _static_checks(path, data)
    reproduction = None
    if checkpoint is not None:
        loaders = {"model": model_loader, "data": data_loader, "suite": suite_loader}
        stats = {"n": n, "seed": seed, "z": z, "slack": slack, "clean_slack": clean_slack}
        reproduction = _reproduce(data, arrays, Path(checkpoint), checks, stats, loaders, device, progress)
    passed = all(c["passed"] for c in checks.values())
    status = "failed" if not passed else "verified" if checkpoint is not None else "examples-verified"
    block = {
        "status": status,
        "by": clean_text(by or f"{TOOL} verify", 200),
        "at": now or utc_now(),
        "tool": f"{TOOL} verify (wasserstein_attacks {__version__})",
        "package_version": __version__,
        "git_commit": git_commit(),
        # What this record speaks for: it counts only while these match the entry (schema.binding_problems).
        "binding": {"entry_sha256": entry_sha256(data), "npz_sha256": data["examples"]["sha256"],
                    "checkpoint_sha256": sha256_file(checkpoint) if checkpoint is not None else None,
                    "suite": {"name": data["suite"]["name"], "version": data["suite"]["version"]}},
        "checks": checks,
        "reproduction": reproduction,
    }
    if write:
        write_verified(path, data, block, entry_problems)
    return block


# ------------------------------------------------------------------------------------------- with the model
def _hash_check(checks: dict, what: str, got: str, want: str) -> bool:
    detail = f"{what} sha256 {got}" + ("" if got == want else f" != {want}")
    checks["checkpoint"] = _check(got == want, detail)
    return got == want


def _checkpoint_matches(data: dict, checkpoint: Path, checks: dict) -> bool:
    """Compare the file's sha256 with the entry's checkpoint_sha256, if any: a mismatch is never loaded."""
    want = data["model"]["checkpoint_sha256"]
    return want is None or _hash_check(checks, "checkpoint", sha256_file(checkpoint), want)


def _weights_match(data: dict, model: torch.nn.Module, checks: dict) -> bool:
    """Without a checkpoint sha256 (the run built its model without a file), identify the weights instead."""
    if data["model"]["checkpoint_sha256"] is not None:
        return True
    return _hash_check(checks, "weights", weights_sha256(model), data["model"]["weights_sha256"])


def _dataset_check(arrays: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Compare the labels and committed clean images with the dataset's (``x``, ``y``: entry order)."""
    index = arrays["index"].astype(np.int64)
    label_ok = torch.equal(y, torch.from_numpy(arrays["label"].astype(np.int64)))
    pos = {int(i): j for j, i in enumerate(index.tolist())}
    rows = [pos.get(int(i)) for i in arrays["sample_index"]]
    same = None not in rows and arrays["sample_clean"].shape == (len(rows), *x.shape[1:])
    if same and rows:
        committed = torch.from_numpy(arrays["sample_clean"]).double()
        same = bool((x[torch.tensor(rows)].double() - committed).abs().max() <= 1e-6)
    return _check(label_ok and same,
                  f"labels {'match' if label_ok else 'DIFFER from'} the dataset; committed "
                  f"clean images {'match' if same else 'DIFFER from'} the dataset")


def _predictions(model, x: torch.Tensor, adv: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes of the clean images ``x`` and of the committed ``adv``; ``ValueError`` on NaN/inf."""
    pred = predict(model, x.to(device)).cpu()
    adv = torch.from_numpy(adv).to(device=device, dtype=x.dtype)
    adv_pred = predict(model, adv).cpu() if len(adv) else torch.zeros(0, dtype=torch.long)
    return pred, adv_pred


def _model_checks(data, arrays, model, x, y, checks, stats, device) -> list[dict] | None:
    """Check the model's outputs on the committed examples and clean accuracy; ``None`` if not finite."""
    try:
        pred, adv_pred = _predictions(model, x, arrays["sample_adversarial"], device)
    except ValueError as e:  # NaN/inf logits: argmax would "misclassify" anything
        checks["model_outputs"] = _check(False, f"model outputs: {e}")
        return None
    checks["model_outputs"] = _check(True, "finite logits on the entry's clean and committed examples")
    fooled = int((adv_pred != torch.tensor(data["examples"]["label"], dtype=torch.long)).sum())
    m = len(adv_pred)
    checks["examples_misclassified"] = _check(
        fooled == m, f"the model misclassifies {fooled}/{m} committed adversarial examples (all needed)")
    clean = float((pred == y).double().mean())
    claimed_clean = data["claimed"]["clean_accuracy"]
    return [{"radius": "clean", "claimed": claimed_clean, "reproduced": clean, "claimed_on_subset": None,
             "tolerance": stats["clean_slack"], "passed": abs(clean - claimed_clean) <= stats["clean_slack"]}]


def _load_for_reproduction(data, arrays, checkpoint, checks, loaders, device):
    """Load the model (hash-checked first) and the entry's examples: ``(model, x, y, idx)`` or ``None``."""
    if not _checkpoint_matches(data, checkpoint, checks) or arrays is None:
        return None
    model = loaders["model"](data["architecture"], checkpoint)
    if not _weights_match(data, model, checks):
        return None
    model = model.to(device).eval()
    images, labels = loaders["data"](data["dataset"]["name"], data["dataset"]["split"])
    index = arrays["index"].astype(np.int64)
    if index.max(initial=0) >= len(labels):
        checks["dataset"] = _check(False, f"entry indices reach {index.max()}, the dataset has {len(labels)}")
        return None
    idx = torch.from_numpy(index)
    x, y = images[idx].float(), labels[idx].long()
    checks["dataset"] = _dataset_check(arrays, x, y)
    return model, x, y, idx


def _reproduce(data, arrays, checkpoint, checks, stats, loaders, device, progress) -> dict | None:
    """Run the checks that need the model (see ``verify_entry``): fill ``checks``, return the block."""
    loaded = _load_for_reproduction(data, arrays, checkpoint, checks, loaders, device)
    if loaded is None:
        return None
    model, x, y, idx = loaded
    comparisons = _model_checks(data, arrays, model, x, y, checks, stats, device)
    if comparisons is None:
        return None
    suite = loaders["suite"](data["suite"]["name"], data["suite"]["version"])
    version_ok = getattr(suite, "version", None) == data["suite"]["version"]
    checks["suite"] = _check(version_ok, f"suite {data['suite']['name']!r} version "
                             f"{getattr(suite, 'version', None)} (entry: version {data['suite']['version']})")
    k = min(int(stats["n"]), len(idx))
    block = {"n": k, "seed": int(stats["seed"]), "z": float(stats["z"]), "slack": float(stats["slack"]),
             "clean_slack": float(stats["clean_slack"]), "comparisons": comparisons}
    if version_ok:
        try:
            comparisons += _rerun(data, arrays, suite, model, x, y, idx, k, stats, device, progress)
        except ValueError as e:  # the attacks refuse NaN/inf logits met on the way
            checks["model_outputs"] = _check(False, f"model outputs during the re-run: {e}")
            return None
    failed = [c["radius"] for c in comparisons if not c["passed"]]
    checks["reproduction"] = _check(
        version_ok and not failed,
        ("suite version differs: not re-run; " if not version_ok else "")
        + (f"outside tolerance at {failed}" if failed else "clean and every radius within tolerance"),
    )
    return block


def _rerun(data, arrays, suite, model, x, y, idx, k, stats, device, progress) -> list[dict]:
    """Re-run the suite on a seeded subset of ``k`` examples; one comparison per claimed radius."""
    total = len(idx)
    sub = np.sort(np.random.default_rng(stats["seed"]).choice(total, size=k, replace=False))
    robust = data["claimed"]["robust_accuracy"]
    radii = sorted(float(r) for r in robust)
    tsub = torch.from_numpy(sub)
    result = suite.run(model, x[tsub].to(device), y[tsub].to(device), radii,
                       threat=canonical_ball(data["threat"], max(radii)), seed=data["provenance"]["seed"],
                       indices=idx[tsub], progress=progress)
    fpc = (total - k) / (total - 1) if total > 1 else 0.0  # finite-population correction
    sub_arrays = {name: arrays[name][sub] for name in ("clean_correct", "broken_cost")}
    cost_tol = CANONICAL_TOLERANCES["cost_rel"]
    out = []
    for key in sorted(robust, key=float):
        a = robust[key]
        acc = float(result.robust_accuracy(float(key)))
        tol = stats["z"] * math.sqrt(a * (1 - a) / k * fpc) + stats["slack"]
        out.append({"radius": key, "claimed": a, "reproduced": acc,
                    "claimed_on_subset": robust_bounds(sub_arrays, float(key), cost_tol)[0],
                    "tolerance": tol, "passed": abs(acc - a) <= tol})
    return out
