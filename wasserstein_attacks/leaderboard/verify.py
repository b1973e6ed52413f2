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
from .._util import atomic_write, git_commit, sha256_file, weights_sha256
from ..threat import WassersteinBall
from .io import json_bytes, load_arrays, load_entry_json
from .schema import TOOL, EntryError, clean_text, entry_problems, robust_bounds, utc_now

__all__ = ["check_architecture", "load_model", "load_data", "load_entry_suite", "verify_entry"]

_BINARIZE = "-binarize"


# ------------------------------------------------------------------------------------------ default loaders
def _split_architecture(architecture: str) -> tuple[str, bool]:
    """``("mnist_convnet", True)`` for ``"mnist_convnet-binarize"``: the build name and the defense flag."""
    if architecture.endswith(_BINARIZE):
        return architecture[: -len(_BINARIZE)], True
    return architecture, False


def check_architecture(architecture: str) -> str:
    """``architecture`` if ``verify`` can build it (a ``models.build_model`` name, optional ``-binarize``).

    Raises ``ValueError`` (naming ``--architecture``) otherwise.
    """
    from .. import models  # imported late: listing and rendering entries need no models

    if _split_architecture(architecture)[0] not in models.MODELS:
        raise ValueError(
            f"architecture must be a models.build_model name (optionally with '-binarize'): one of "
            f"{', '.join(models.MODELS)}, got the model config's name {architecture!r}; pass "
            "--architecture (e.g. mnist_convnet)"
        )
    return architecture


def load_model(architecture: str, checkpoint: Path) -> torch.nn.Module:
    """Default model loader for ``verify``: ``models.build_model`` + ``models.load_weights``.

    ``architecture`` is a ``build_model`` name; the suffix ``-binarize`` wraps the model in the
    input-binarization defense (threshold 0.5 in the forward pass) with a straight-through backward pass
    (BPDA): the forward pass, on which success is judged, is the defense itself, while the attacks get a
    useful gradient, as in the benchmark run that made the entry (``conf/model/mnist_binarize.yaml``);
    with the threshold's zero gradient no attack could reproduce anything. The checkpoint is read with
    ``torch.load(weights_only=True)`` (any format ``load_weights`` knows; a one-line ``ValueError`` for
    an unreadable file or refused pickles). Returns the model in eval mode.
    """
    from .. import models

    base, binarize = _split_architecture(architecture)
    model = models.build_model(base, binarize=binarize, straight_through=binarize)
    models.load_weights(model.model if binarize else model, checkpoint)
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


def _ball(threat: dict, eps) -> WassersteinBall:
    """Build the entry's threat model at radius ``eps`` (a float or a ``[B]`` tensor)."""
    tol = threat["tolerances"]
    box = (0.0, 1.0) if threat["box"] is not None else None
    return WassersteinBall(eps, threat["p"], threat["kernel_size"], box, tol["mass_rel"], tol["cost_rel"],
                           tol["box_abs"])


def _examples_check(data: dict, arrays: dict) -> dict:
    """Exact check of every committed adversarial example against its claimed radius and cost."""
    ex, th = data["examples"], data["threat"]
    m = len(ex["index"])
    if m == 0:
        return _check(True, "no broken examples to check")
    x = torch.from_numpy(arrays["sample_clean"]).to(torch.float64)
    y = torch.from_numpy(arrays["sample_adversarial"]).to(torch.float64)
    clean_ok = bool(torch.isfinite(x).all()) and x.numel() > 0 and 0 <= x.min() and x.max() <= 1
    if x.shape != y.shape or x.shape[0] != m or not clean_ok:
        return _check(False, "committed images malformed: sample_clean / sample_adversarial must be "
                             f"[{m}, C, H, W] with clean images in [0, 1]")
    radius = torch.tensor([float(r) for r in ex["radius"]], dtype=torch.float64)
    cost = torch.tensor(ex["cost"], dtype=torch.float64)
    # Negative or non-finite pixels are not images (and not masses): outside without an LP.
    sane = (torch.isfinite(y) & (y >= 0)).flatten(1).all(1)
    inside = torch.zeros(m, dtype=torch.bool)
    dist = torch.full((m,), math.inf, dtype=torch.float64)
    if sane.any():
        ball = _ball(th, radius[sane])
        inside[sane] = ball.contains(x[sane], y[sane])
        dist[sane] = ball.distance(x[sane], y[sane])
    tol = th["tolerances"]["cost_rel"]
    cost_ok = dist <= cost * (1 + tol)
    bad = [ex["index"][i] for i in range(m) if not (inside[i] and cost_ok[i])]
    ratio = (dist / radius).max().item()
    detail = (f"{m - len(bad)}/{m} committed adversarial examples inside the ball at their radius and within "
              f"their claimed cost (exact LP, cost_rel {tol}); max exact distance / radius = {ratio:.6g}")
    if bad:
        detail += f"; failing dataset indices: {bad[:20]}{' ...' if len(bad) > 20 else ''}"
    return _check(not bad, detail)


def _static_checks(path: Path, data: dict) -> tuple[dict | None, dict[str, dict]]:
    """Run the checks without a model: the npz, the claims against it, the committed examples exactly."""
    checks: dict[str, dict] = {}
    arrays, problems = load_arrays(path, data)
    if arrays is None:
        checks["npz"] = _check(False, "; ".join(problems))
    else:
        checks["npz"] = _check(True, f"{data['examples']['file']} matches examples.sha256")
        checks["consistency"] = _check(not problems, "; ".join(problems) or
                                       "claimed numbers agree with the per-example arrays")
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
    flip_slack: float = 0.05,
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
    numbers against the per-example arrays, and every committed adversarial example exactly
    (``WassersteinBall.contains`` and ``distance`` at its claimed radius and cost, box included).

    With ``checkpoint`` (status ``verified`` or ``failed``), also: its sha256 against the entry; the
    model (``model_loader(architecture, checkpoint)``) misclassifies the committed adversarial
    examples (at most ``flip_slack`` of them may flip back on other hardware); the committed clean
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
        stats = {"n": n, "seed": seed, "z": z, "slack": slack, "clean_slack": clean_slack,
                 "flip_slack": flip_slack}
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
        "checks": checks,
        "reproduction": reproduction,
    }
    if write:
        updated = dict(data, verification=block)
        problems = entry_problems(updated, path)
        if problems:
            raise EntryError(f"verification block for {path}", problems)
        atomic_write(path, json_bytes(updated))
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
    """Predicted classes of the clean images ``x`` (in chunks of 1000) and of the committed ``adv``."""
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000].to(device)).argmax(1).cpu() for i in range(0, len(x), 1000)])
        adv = torch.from_numpy(adv).to(device=device, dtype=x.dtype)
        adv_pred = model(adv).argmax(1).cpu() if len(adv) else torch.zeros(0, dtype=torch.long)
    return pred, adv_pred


def _reproduce(data, arrays, checkpoint, checks, stats, loaders, device, progress) -> dict | None:
    """Run the checks that need the model (see ``verify_entry``): fill ``checks``, return the block."""
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
    pred, adv_pred = _predictions(model, x, arrays["sample_adversarial"], device)
    fooled = int((adv_pred != torch.tensor(data["examples"]["label"], dtype=torch.long)).sum())
    m, flip_slack = len(adv_pred), stats["flip_slack"]
    checks["examples_misclassified"] = _check(
        m == 0 or fooled >= m * (1 - flip_slack),
        f"the model misclassifies {fooled}/{m} committed adversarial examples "
        f"(at least {1 - flip_slack:.0%} needed)")
    clean = float((pred == y).double().mean())
    claimed_clean = data["claimed"]["clean_accuracy"]
    comparisons = [{"radius": "clean", "claimed": claimed_clean, "reproduced": clean,
                    "claimed_on_subset": None, "tolerance": stats["clean_slack"],
                    "passed": abs(clean - claimed_clean) <= stats["clean_slack"]}]
    suite = loaders["suite"](data["suite"]["name"], data["suite"]["version"])
    version_ok = getattr(suite, "version", None) == data["suite"]["version"]
    checks["suite"] = _check(version_ok, f"suite {data['suite']['name']!r} version "
                             f"{getattr(suite, 'version', None)} (entry: version {data['suite']['version']})")
    k = min(int(stats["n"]), len(index))
    block = {"n": k, "seed": int(stats["seed"]), "z": float(stats["z"]), "slack": float(stats["slack"]),
             "clean_slack": float(stats["clean_slack"]), "comparisons": comparisons}
    if version_ok:
        comparisons += _rerun(data, arrays, suite, model, x, y, idx, k, stats, device, progress)
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
                       threat=_ball(data["threat"], max(radii)), seed=data["provenance"]["seed"],
                       indices=idx[tsub], progress=progress)
    fpc = (total - k) / (total - 1) if total > 1 else 0.0  # finite-population correction
    sub_arrays = {name: arrays[name][sub] for name in ("clean_correct", "broken_cost")}
    cost_tol = data["threat"]["tolerances"]["cost_rel"]
    out = []
    for key in sorted(robust, key=float):
        a = robust[key]
        acc = float(result.robust_accuracy(float(key)))
        tol = stats["z"] * math.sqrt(a * (1 - a) / k * fpc) + stats["slack"]
        out.append({"radius": key, "claimed": a, "reproduced": acc,
                    "claimed_on_subset": robust_bounds(sub_arrays, float(key), cost_tol)[0],
                    "tolerance": tol, "passed": abs(acc - a) <= tol})
    return out
