"""The benchmark pipeline: how robust is a model under the Wasserstein threat model.

:func:`run` evaluates one composed config (``conf/config.yaml``) into a run folder::

    results.json    numbers (schema: results_schema.json): clean and robust accuracy per radius,
                    per-attack cumulative curves, per-example outcomes, provenance; deterministic bytes
    examples.npz    per-example arrays and the verified adversarial images (re-check them!)
    timings.json    wall times (kept out of results.json so that reruns compare equal)
    curve.png       robust accuracy against radius, cumulative per attack and the suite's worst case
    examples.png    clean / adversarial / difference images
    state/          header.json, run.json and one batch-NNNNNN.npz per finished batch (resume, merge)

Determinism: per-example seeds come from the run seed and the dataset index, batches are fixed slices
of the dataset, shards are runs of whole batches, and results are built from the saved batches only.
So a run killed at any point and started again, or shards combined by :func:`merge`, give a
``results.json`` identical byte for byte to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .. import __version__
from ..attacks.base import Attack
from ..attacks.suite import Suite, SuiteResult, check_radii, suite_from_config
from ..threat import WassersteinBall

__all__ = [
    "ConfigError",
    "Prepared",
    "SCHEMA_VERSION",
    "prepare",
    "build_threat",
    "run",
    "merge",
    "load_results",
    "validate_results",
    "parse_shard",
    "shard_batches",
    "config_hash",
    "radius_key",
    "register_resolvers",
    "write_json",
]

SCHEMA_VERSION = 1
#: Top-level config keys that do not change the numbers: left out of the config hash.
HASH_EXCLUDE = ("shard", "logger", "name", "progress", "hydra", "workers")
_STATE = "state"
_REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A bad config, found before any work; the message is one line naming the field."""


# ---------------------------------------------------------------------------- small pieces


def radius_key(r: float) -> str:
    """Write a radius as the shortest decimal string that round-trips (``0.1`` -> ``"0.1"``)."""
    return repr(float(r))


def parse_shard(value) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` for no sharding; ``ConfigError`` otherwise."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"shard must be 'i/n' with 0 <= i < n (e.g. shard=0/4), got {value!r}")
    return int(m.group(1)), int(m.group(2))


def parse_workers(value) -> int:
    """``workers``: an int >= 1, or ``"auto"`` (one per CPU core available to this process)."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"workers must be an integer >= 1 or 'auto', got {value!r}")
    return value


def shard_batches(n_batches: int, shard: tuple[int, int] | None) -> range:
    """Batches of shard ``(i, n)``: the i-th of n contiguous, near-equal runs of ``range(n_batches)``."""
    if shard is None:
        return range(n_batches)
    i, n = shard
    return range(i * n_batches // n, (i + 1) * n_batches // n)


def config_hash(cfg: dict) -> str:
    """sha256 (first 16 hex digits) of a JSON-ready config dict, independent of key order."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(obj):
    """JSON-ready copy: tensors and numpy values to Python, non-finite floats to ``None``."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return _plain(obj.tolist())
    if isinstance(obj, (np.generic,)):
        return _plain(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(file)`` to a temp file beside ``path``, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    """Deterministic JSON (sorted keys, repr floats, no NaN) written atomically."""
    text = json.dumps(_plain(obj), sort_keys=True, indent=1, allow_nan=False) + "\n"
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def register_resolvers() -> None:
    """OmegaConf resolvers the configs use: ``wattack_dirname`` (run folder names), ``wattack_shared``."""

    def dirname(overrides: str) -> str:
        # "shard=0/4" would make nested folders: keep one folder per run.
        s = re.sub(r"shard=(\d+)/(\d+)", r"shard=\1-of-\2", overrides or "")
        return s.replace("/", "_") or "default"

    def shared(rel: str) -> str:
        from ..models import default_shared_dir

        return str(default_shared_dir() / rel)

    if not OmegaConf.has_resolver("wattack_dirname"):
        OmegaConf.register_new_resolver("wattack_dirname", dirname)
    if not OmegaConf.has_resolver("wattack_shared"):
        OmegaConf.register_new_resolver("wattack_shared", shared)


register_resolvers()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _hardware(device: torch.device) -> dict:
    return {
        "device": device.type,
        "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weights_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _instantiate(node, field: str, **kwargs):
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all", **kwargs)
    except Exception as exc:  # noqa: BLE001 - Hydra wraps import, argument and constructor errors alike
        cause = exc.__cause__ or exc
        raise ConfigError(f"{field}: {_first_line(cause)}") from exc


# ---------------------------------------------------------------------------- preparation (fail fast)


@dataclass
class Prepared:
    """A validated run: everything :func:`run` needs, built before any attack runs.

    Attributes:
        header: the shard-independent part of ``results.json`` (provenance, threat, suite, ...).
        suite, threat, model, images, labels: what the evaluation uses (images ``[N, C, H, W]``).
        radii, seed, batch_size, shard, exact_fraction, device, progress: run settings.
        logger: the logger config as a dict (``kind`` = ``"none"`` or ``"wandb"``).

    """

    header: dict
    suite: Suite
    threat: WassersteinBall
    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    radii: tuple[float, ...]
    seed: int
    batch_size: int
    shard: tuple[int, int] | None
    exact_fraction: float
    device: torch.device
    progress: bool
    logger: dict
    workers: int

    @property
    def n_batches(self) -> int:
        """Batches of the whole (unsharded) dataset."""
        return math.ceil(self.images.shape[0] / self.batch_size)


def _int_field(cfg: DictConfig, key: str, lo: int) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{key} must be an integer >= {lo}, got {v!r}")
    return v


def build_threat(cfg: DictConfig, eps: float = 0.0) -> WassersteinBall:
    """Build the :class:`WassersteinBall` of ``cfg.threat`` with radius ``eps`` (or ``ConfigError``)."""
    if "threat" not in cfg or not OmegaConf.is_dict(cfg.threat):
        raise ConfigError("threat is missing: choose one of conf/threat/*.yaml (e.g. threat=w1_local5)")
    node = OmegaConf.to_container(cfg.threat, resolve=True)
    if node.get("eps") is not None:
        eps = node["eps"]
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
            raise ConfigError(f"threat.eps must be a float >= 0, got {eps!r}")
    node.pop("eps", None)
    if isinstance(node.get("box"), list):
        node["box"] = tuple(float(v) for v in node["box"])
    from hydra.utils import get_class

    # Built directly (not through instantiate) so the box stays a tuple, as WassersteinBall documents.
    try:
        ball = get_class(str(node.pop("_target_", "wasserstein_attacks.threat.WassersteinBall")))(
            eps=float(eps), **node
        )
    except Exception as exc:  # noqa: BLE001 - an import error, an unknown argument or a bad value
        raise ConfigError(f"threat: {_first_line(exc)}") from exc
    if not isinstance(ball, WassersteinBall):
        raise ConfigError(f"threat._target_ must build a WassersteinBall, got {type(ball).__name__}")
    if ball.kernel_size is None:
        raise ConfigError("threat.kernel_size must be an odd int >= 3: attacks need local plans")
    return ball


def _build_suite(cfg: DictConfig, attack_label: str | None) -> tuple[Suite, dict]:
    if cfg.get("attack") is not None:
        node = cfg.attack
        attack = _instantiate(node, "attack")
        if not isinstance(attack, Attack):
            raise ConfigError(f"attack._target_ must build an Attack, got {type(attack).__name__}")
        label = attack_label or attack.name
        suite = Suite(f"single-{label}", 1, [attack], labels=[label])
        configs = {label: OmegaConf.to_container(node, resolve=True)}
    else:
        if cfg.get("suite") is None:
            raise ConfigError(
                "suite is missing: choose suite=<name> (conf/suite/) or attack=<name> (conf/attack/)"
            )
        try:
            suite = suite_from_config(cfg.suite)
        except ValueError as exc:
            raise ConfigError(_first_line(exc)) from exc
        configs = {k: OmegaConf.to_container(v, resolve=True) for k, v in cfg.suite.attacks.items()}
    desc = {
        "name": suite.name,
        "version": suite.version,
        "order": suite.order,
        "attacks": [
            {"name": label, "attack": a.name, "config": configs[label]}
            for label, a in zip(suite.labels, suite.attacks, strict=True)
        ],
    }
    return suite, desc


def _build_model(cfg: DictConfig) -> tuple[torch.nn.Module, dict]:
    node = cfg.get("model")
    if node is None or not OmegaConf.is_dict(node) or node.get("build") is None:
        raise ConfigError(
            "model must have `name`, `build` (a _target_ returning an nn.Module) and `checkpoint`"
        )
    name = str(node.get("name") or "model")
    ckpt = node.get("checkpoint")
    ckpt_path = Path(str(ckpt)).expanduser() if ckpt else None
    if ckpt_path is not None and not ckpt_path.is_file():
        raise ConfigError(f"model.checkpoint: file {ckpt_path} not found")
    model = _instantiate(node.build, "model.build")
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model.build must return a torch.nn.Module, got {type(model).__name__}")
    sha = None
    if ckpt_path is not None:
        from ..models import load_weights

        try:
            load_weights(model, ckpt_path)
        except (ValueError, RuntimeError, KeyError, EOFError, OSError) as exc:
            raise ConfigError(
                f"model.checkpoint: {ckpt_path} does not match model {name!r}: {_first_line(exc)}"
            ) from exc
        sha = _file_sha256(ckpt_path)
        # Freshly built modules start in train mode; weights loaded for evaluation are meant for eval mode.
        model.eval()
    info = {
        "name": name,
        "checkpoint": ckpt_path.name if ckpt_path else None,
        "checkpoint_sha256": sha,
        "weights_sha256": _weights_sha256(model),
    }
    return model, info


def _load_data(cfg: DictConfig) -> tuple[torch.Tensor, torch.Tensor, dict]:
    if cfg.get("dataset") is None:
        raise ConfigError("dataset is missing: choose one of conf/dataset/*.yaml")
    n = cfg.dataset.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"dataset.n must be a positive integer or null (all), got {n!r}")
    ds = _instantiate(cfg.dataset, "dataset")
    images, labels = getattr(ds, "images", None), getattr(ds, "labels", None)
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor) or images.dim() != 4:
        raise ConfigError("dataset must build an object with images [N, C, H, W] and labels [N] tensors")
    if images.shape[0] == 0:
        raise ConfigError("dataset is empty")
    info = {
        k: v
        for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
        if k not in ("_target_", "root")
    }
    info["n"] = int(images.shape[0])
    return images.float(), labels.long(), info


def _model_checks(model, images, labels, seed: int) -> dict | None:
    from ..attacks import checks

    check_model = getattr(checks, "check_model", None)
    if check_model is None:
        return None
    # check_model also warns per problem; run() prints the report's list once, so keep these from doubling it.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        report = check_model(model, images, labels, seed=seed)
    return report.as_dict() if hasattr(report, "as_dict") else dict(report)


def prepare(cfg: DictConfig, *, attack_label: str | None = None) -> Prepared:
    """Validate ``cfg`` and build everything the run needs; ``ConfigError`` (one line) on a bad field.

    The order puts cheap checks first: scalars, shard, threat, attacks, then the model and its
    checkpoint, then the data. Nothing is attacked here. ``attack_label`` names a single attack
    (``attack=<name>``; default its registry name).
    """
    radii = check_radii_cfg(cfg.get("radii"))
    seed = _int_field(cfg, "seed", 0)
    batch_size = _int_field(cfg, "batch_size", 1)
    shard = parse_shard(cfg.get("shard"))
    workers = parse_workers(cfg.get("workers", 1))
    frac = cfg.get("exact_fraction", 0.0)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
        raise ConfigError(f"exact_fraction must be a float in [0, 1], got {frac!r}")
    dev = str(cfg.get("device", "auto"))
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:<i>, got {dev!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device is {dev!r} but CUDA is not available (use device=auto or cpu)")
    logger = (
        OmegaConf.to_container(cfg.logger, resolve=True)
        if cfg.get("logger") is not None
        else {"kind": "none"}
    )
    if logger.get("kind", "none") not in ("none", "wandb"):
        raise ConfigError(f"logger.kind must be 'none' or 'wandb', got {logger.get('kind')!r}")
    threat = build_threat(cfg)
    suite, suite_desc = _build_suite(cfg, attack_label)
    model, model_info = _build_model(cfg)
    images, labels, data_info = _load_data(cfg)
    n_batches = math.ceil(images.shape[0] / batch_size)
    if shard is not None and shard[1] > n_batches:
        raise ConfigError(
            f"shard: {shard[1]} shards but only {n_batches} batches of {batch_size}: "
            "use fewer shards or a smaller batch_size"
        )

    hashed = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in HASH_EXCLUDE}
    hashed.pop("suite" if cfg.get("attack") is not None else "attack", None)
    if isinstance(hashed.get("model"), dict):
        # Paths differ between machines; the checkpoint's content identifies it.
        hashed["model"] = {**hashed["model"], "checkpoint": model_info["checkpoint_sha256"]}
    if isinstance(hashed.get("dataset"), dict):
        hashed["dataset"] = {k: v for k, v in hashed["dataset"].items() if k != "root"}
    # The model's sanity checks see a fixed head of the data, the same for every shard.
    head = slice(0, min(128, images.shape[0]))
    checks = _model_checks(model, images[head], labels[head], seed)
    model.eval()
    threat_desc = {k: v for k, v in threat.describe().items() if k != "eps"}
    header = {
        "schema_version": SCHEMA_VERSION,
        "radii": list(radii),
        "threat": threat_desc,
        "suite": suite_desc,
        "model": model_info,
        "dataset": data_info,
        "seed": seed,
        "batch_size": batch_size,
        "exact_check": {"fraction": float(frac), "tolerance": threat.cost_tol},
        "package_version": __version__,
        "git_commit": _git_commit(),
        "config_hash": config_hash(_plain(hashed)),
        "config": _plain(hashed),
        "hardware": _hardware(device),
        "model_checks": checks,
    }
    return Prepared(
        header=_plain(header),
        suite=suite,
        threat=threat,
        model=model.to(device),
        images=images,
        labels=labels,
        radii=radii,
        seed=seed,
        batch_size=batch_size,
        shard=shard,
        exact_fraction=float(frac),
        device=device,
        progress=bool(cfg.get("progress", True)),
        logger=logger,
        workers=workers,
    )


def check_radii_cfg(radii) -> tuple[float, ...]:
    """:func:`~wasserstein_attacks.attacks.suite.check_radii` with a :class:`ConfigError` on failure."""
    if OmegaConf.is_config(radii):
        radii = OmegaConf.to_container(radii, resolve=True)
    try:
        return check_radii(radii)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


# ---------------------------------------------------------------------------- per-batch state

_ARRAYS = SuiteResult.ARRAYS


def _batch_path(run_dir: Path, k: int) -> Path:
    return run_dir / _STATE / f"batch-{k:06d}.npz"


def _save_batch(path: Path, res: SuiteResult, clean: torch.Tensor, chash: str, seconds: float) -> None:
    arrays = {name: getattr(res, name).numpy() for name in _ARRAYS}
    arrays["clean"] = clean.detach().cpu().numpy()
    arrays["config_hash"] = np.array(chash)
    arrays["timings"] = np.array(json.dumps({"seconds": seconds, "calls": res.timings}))
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_batch(path: Path, header: dict) -> tuple[SuiteResult, torch.Tensor, dict] | None:
    """Read a saved batch; ``None`` if the file is unreadable or from another config (then it is redone)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["config_hash"]) != header["config_hash"]:
                return None
            arrays = {name: torch.from_numpy(z[name].copy()) for name in _ARRAYS}
            clean = torch.from_numpy(z["clean"].copy())
            timing = json.loads(str(z["timings"]))
    except (OSError, KeyError, ValueError, EOFError):
        return None
    res = SuiteResult(
        radii=tuple(header["radii"]),
        attacks=tuple(a["name"] for a in header["suite"]["attacks"]),
        cost_tol=float(header["exact_check"]["tolerance"]),
        timings=timing["calls"],
        **arrays,
    )
    return res, clean, timing


def _start_state(run_dir: Path, header: dict, run_info: dict) -> dict:
    """Write or check ``state/header.json`` and ``state/run.json``; returns the header of the run."""
    state = run_dir / _STATE
    hpath, rpath = state / "header.json", state / "run.json"
    if hpath.is_file():
        old = _read_json(hpath)
        if old.get("config_hash") != header["config_hash"]:
            raise ConfigError(
                f"output folder {run_dir} holds a run with another config "
                f"(hash {old.get('config_hash')} vs {header['config_hash']}): choose another "
                "folder (hydra.run.dir=...) or delete it"
            )
        if rpath.is_file() and _read_json(rpath) != run_info:
            raise ConfigError(
                f"shard: output folder {run_dir} holds another shard ({_read_json(rpath)['shard']})"
            )
        # Resuming: keep the provenance of the run's start, so a resumed run reports what a whole one does.
        return old
    write_json(hpath, header)
    write_json(rpath, run_info)
    return header


# ---------------------------------------------------------------------------- results


def _results(header: dict, res: SuiteResult, shard: dict | None) -> dict:
    """``results.json`` content from the header and the concatenated per-example result."""
    inf_to_none = lambda t: [v if math.isfinite(v) else None for v in t.tolist()]  # noqa: E731
    exact = res.exact_distance
    checked = ~torch.isnan(exact)
    tol = float(header["exact_check"]["tolerance"])
    # The certified cost bounds the exact optimum from above; the exact value must be inside the radius.
    within = checked & (exact <= res.broken_radius * (1 + tol))
    n_checked = int(checked.sum())
    labels = list(res.attacks)
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
            "per_attack_broken": {a: sum(1 for b in broken_by if b == a) for a in labels},
            "exact_check": {
                **header["exact_check"],
                "checked": n_checked,
                "within_radius": int(within.sum()),
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
    _atomic_write(paths["examples.npz"], lambda f: np.savez_compressed(f, **arrays))
    write_json(paths["timings.json"], timings)
    _plot_curve(results, paths["curve.png"])
    _plot_examples(res, clean, paths["examples.png"])
    return paths


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def _plot_curve(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radii = results["radii"]
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(results["per_attack_robust_accuracy"])
    for j, name in enumerate(names[:-1]):
        curve = results["per_attack_robust_accuracy"][name]
        label = "after " + " + ".join(names[: j + 1])
        ax.plot(radii, [curve[radius_key(r)] for r in radii], marker="o", lw=1, alpha=0.8, label=label)
    ax.plot(
        radii,
        [results["robust_accuracy"][radius_key(r)] for r in radii],
        marker="o",
        lw=2.5,
        color="black",
        label=f"suite worst case ({' + '.join(names)})",
    )
    ax.axhline(results["clean_accuracy"], ls=":", color="gray", label="clean accuracy")
    if all(r > 0 for r in radii) and max(radii) / min(radii) > 5:
        ax.set_xscale("log")
    t = results["threat"]
    ax.set_xlabel(f"radius eps ({t['name']}; fraction of mass x pixel distance^{t['p']})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(
        f"{results['model']['name']} / {results['suite']['name']} v{results['suite']['version']} "
        f"(n={results['n_examples']})",
        fontsize=9,
    )
    ax.legend(
        title="cumulative: each attack runs on what the earlier ones left", fontsize=7, title_fontsize=7
    )
    ax.grid(alpha=0.3)
    _savefig(fig, path)


def _plot_examples(res: SuiteResult, clean: torch.Tensor, path: Path, n: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = (res.broken_attack >= 0).nonzero()[:, 0][:n].tolist()
    if not picked:
        picked = list(range(min(n, clean.shape[0])))
    fig, axes = plt.subplots(3, len(picked), figsize=(1.6 * len(picked), 5.0), squeeze=False)
    by = res.broken_by
    for col, i in enumerate(picked):
        x, y = clean[i], res.adversarial[i]
        diff = (y - x).sum(0).numpy()
        lim = max(float(np.abs(diff).max()), 1e-6)
        show = (lambda t: t[0].numpy()) if x.shape[0] == 1 else (lambda t: t.permute(1, 2, 0).numpy())
        axes[0, col].imshow(show(x), cmap="gray", vmin=0, vmax=1)
        axes[1, col].imshow(show(y), cmap="gray", vmin=0, vmax=1)
        axes[2, col].imshow(diff, cmap="bwr", vmin=-lim, vmax=lim)
        cost = float(res.broken_cost[i])
        axes[0, col].set_title(f"#{int(res.indices[i])} y={int(res.labels[i])}", fontsize=7)
        axes[1, col].set_title(
            f"{by[i] or '-'}\ncost {cost:.3g}" if math.isfinite(cost) else "not broken", fontsize=7
        )
        for row in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    for row, name in enumerate(("clean", "adversarial", "difference")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    _savefig(fig, path)


def _print_summary(results: dict, paths: dict, run_dir: Path) -> None:
    names = list(results["per_attack_robust_accuracy"])
    short = [n[:14] for n in names]
    head = f"{'radius':>8}  {'robust':>7}  " + "  ".join(f"{'+' + s:>15}" for s in short)
    lines = [
        f"{results['model']['name']} on {results['dataset'].get('name')} (n={results['n_examples']}), suite "
        f"{results['suite']['name']} v{results['suite']['version']}, threat {results['threat']['name']}",
        f"clean accuracy {results['clean_accuracy']:.4f}",
        head,
    ]
    for r in results["radii"]:
        k = radius_key(r)
        cum = "  ".join(f"{results['per_attack_robust_accuracy'][n][k]:>15.4f}" for n in names)
        lines.append(f"{k:>8}  {results['robust_accuracy'][k]:>7.4f}  {cum}")
    ec = results["exact_check"]
    lines.append(
        f"exact LP re-check: {ec['within_radius']}/{ec['checked']} sampled adversarial examples inside "
        "their radius"
    )
    lines.append(f"outputs in {run_dir}:")
    lines += [f"  {p}" for p in paths.values()]
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------------- wandb


def _log_wandb(
    logger: dict, results: dict, res: SuiteResult, clean: torch.Tensor, paths: dict, run_dir: Path
):
    import wandb

    mode = os.environ.get("WANDB_MODE") or logger.get("mode", "offline")
    run = wandb.init(
        project=logger.get("project", "wasserstein-attacks"),
        entity=logger.get("entity"),
        mode=mode,
        dir=str(run_dir),
        name=f"{results['model']['name']}-{results['config_hash']}",
        config={
            "config": results["config"],
            "threat": results["threat"],
            "suite": results["suite"],
            "config_hash": results["config_hash"],
        },
        tags=list(logger.get("tags") or []),
        reinit="finish_previous",
    )
    try:
        metrics = {"clean_accuracy": results["clean_accuracy"]}
        metrics.update({f"robust_accuracy/{k}": v for k, v in results["robust_accuracy"].items()})
        for a, curve in results["per_attack_robust_accuracy"].items():
            metrics.update({f"cumulative/{a}/{k}": v for k, v in curve.items()})
        run.log(metrics)
        run.log(
            {
                "curve": wandb.Image(str(paths["curve.png"])),
                "examples_grid": wandb.Image(str(paths["examples.png"])),
            }
        )
        table = wandb.Table(columns=["index", "label", "broken_by", "broken_cost", "clean", "adversarial"])
        as_img = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()  # noqa: E731
        by = res.broken_by
        for i in (res.broken_attack >= 0).nonzero()[:, 0][: int(logger.get("n_images", 16))].tolist():
            table.add_data(
                int(res.indices[i]),
                int(res.labels[i]),
                by[i],
                float(res.broken_cost[i]),
                wandb.Image(as_img(clean[i])),
                wandb.Image(as_img(res.adversarial[i])),
            )
        run.log({"examples": table})
        run.summary.update(metrics)
    finally:
        run.finish()


# ---------------------------------------------------------------------------- entry points


def run(cfg: DictConfig, run_dir: str | Path, *, attack_label: str | None = None) -> dict:
    """Evaluate ``cfg`` (a composed ``conf/config.yaml``) into ``run_dir``; returns the results dict.

    Resumes from ``run_dir/state`` when the same config ran there before. With ``shard=i/n`` only that
    slice of whole batches runs; :func:`merge` then combines the shard folders.
    """
    run_dir = Path(run_dir)
    prep = prepare(cfg, attack_label=attack_label)
    if prep.header.get("model_checks"):
        for w in prep.header["model_checks"].get("warnings", []):
            print(f"model check warning: {w}", file=sys.stderr, flush=True)
    batches = shard_batches(prep.n_batches, prep.shard)
    shard = (
        None
        if prep.shard is None
        else {
            "index": prep.shard[0],
            "count": prep.shard[1],
            "batches": [batches.start, batches.stop],
            "n_batches": prep.n_batches,
        }
    )
    header = _start_state(run_dir, prep.header, {"shard": shard, "n_batches": prep.n_batches})
    from tqdm.auto import tqdm

    parts, cleans, times = [], [], []
    todo = [k for k in batches if _load_batch(_batch_path(run_dir, k), header) is None]
    workers = min(prep.workers, len(todo))
    if workers > 1 and prep.device.type == "cpu":
        _run_parallel(prep, header, run_dir, todo, workers)
    bar = tqdm(batches, desc="batches", unit="batch", disable=not prep.progress)
    for k in bar:
        path = _batch_path(run_dir, k)
        loaded = _load_batch(path, header) if path.is_file() else None
        if loaded is None:
            _compute_batch(_batch_job(prep, header, run_dir, k))
            loaded = _load_batch(path, header)  # what the results are built from, in every mode
            if loaded is None:
                raise RuntimeError(f"could not read back {path}")
        res, clean, timing = loaded
        parts.append(res)
        cleans.append(clean)
        times.append({"batch": k, "seconds": timing["seconds"]})
        robust = sum(int(p.robust(prep.radii[-1]).sum()) for p in parts)
        bar.set_postfix(robust_at_max=f"{robust}/{sum(p.indices.numel() for p in parts)}")
    bar.close()
    return _finish(run_dir, header, parts, cleans, times, shard, prep.logger)


def _batch_job(prep: Prepared, header: dict, run_dir: Path, k: int, *, progress: bool | None = None) -> dict:
    """Everything one batch needs, as plain picklable values (a worker process gets exactly this)."""
    lo, hi = k * prep.batch_size, min((k + 1) * prep.batch_size, prep.images.shape[0])
    return {
        "suite": prep.suite, "model": prep.model, "threat": prep.threat, "radii": prep.radii,
        "images": prep.images[lo:hi], "labels": prep.labels[lo:hi], "indices": torch.arange(lo, hi),
        "seed": prep.seed, "batch": k, "exact_fraction": prep.exact_fraction, "device": prep.device,
        "progress": prep.progress if progress is None else progress,
        "path": _batch_path(run_dir, k), "config_hash": header["config_hash"],
    }


def _compute_batch(job: dict) -> int:
    """Run the suite on one batch and save its state file (atomically); returns the batch number."""
    dev = job["device"]
    start = time.perf_counter()
    # Guard against any global-RNG use inside models or attacks: fixed per batch, whatever ran before.
    torch.manual_seed(job["seed"] * 1_000_003 + job["batch"])
    res = job["suite"].run(
        job["model"],
        job["images"].to(dev),
        job["labels"].to(dev),
        job["radii"],
        threat=job["threat"],
        seed=job["seed"],
        indices=job["indices"],
        exact_fraction=job["exact_fraction"],
        progress=job["progress"],
    )
    _save_batch(job["path"], res, job["images"], job["config_hash"], time.perf_counter() - start)
    return job["batch"]


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message="model was in train mode")


def _run_parallel(prep: Prepared, header: dict, run_dir: Path, todo: list[int], workers: int) -> None:
    """Compute the batches ``todo`` in ``workers`` processes (CPU), each with its share of the threads.

    Each batch is the same computation as in the sequential loop and writes the same state file, so a run
    can be killed and resumed with any number of workers. Processes are spawned (not forked): torch's
    thread pools are not fork-safe.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    threads = max(1, torch.get_num_threads() // workers)
    ctx = multiprocessing.get_context("spawn")
    bar = tqdm(total=len(todo), desc=f"batches ({workers} workers)", unit="batch", disable=not prep.progress)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
        jobs = [_batch_job(prep, header, run_dir, k, progress=False) for k in todo]
        futures = [pool.submit(_compute_batch, job) for job in jobs]
        try:
            for fut in as_completed(futures):
                fut.result()
                bar.update(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    bar.close()


def _finish(run_dir: Path, header: dict, parts, cleans, times, shard, logger: dict) -> dict:
    res = SuiteResult.concatenate(parts)
    clean = torch.cat(cleans)
    results = _results(header, res, shard)
    paths = _write_outputs(run_dir, results, res, clean, _timings(res, times))
    ec = results["exact_check"]
    if ec["within_radius"] != ec["checked"]:
        bad = ec["checked"] - ec["within_radius"]
        print(
            f"WARNING: the exact LP distance exceeds the radius for {bad} sampled adversarial examples:"
            " a verification bug, please report it",
            file=sys.stderr,
            flush=True,
        )
    if logger.get("kind") == "wandb":
        _log_wandb(logger, results, res, clean, paths, run_dir)
    _print_summary(results, paths, run_dir)
    return results


def merge(folders: list[str | Path], out_dir: str | Path, *, logger: dict | None = None) -> dict:
    """Combine the shard folders of one sharded run into ``out_dir`` (same outputs as an unsharded run).

    Checks that every shard ran the same config (config hash), that the shards are ``0/n .. n-1/n``
    exactly once, and that each finished all its batches. ``ValueError`` otherwise.
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise ValueError("folders must list the shard folders to merge (each with state/header.json)")
    infos = []
    for f in folders:
        h, r = f / _STATE / "header.json", f / _STATE / "run.json"
        if not (h.is_file() and r.is_file()):
            raise ValueError(f"folders: {f} is not a wattack-bench run folder (no {_STATE}/header.json)")
        infos.append((f, _read_json(h), _read_json(r)))
    header = infos[0][1]
    strip = lambda d: {k: v for k, v in d.items() if k != "hardware"}  # noqa: E731
    for f, h, _ in infos[1:]:
        if strip(h) != strip(header):
            diff = sorted(k for k in set(h) | set(header) if k != "hardware" and h.get(k) != header.get(k))
            raise ValueError(
                f"folders: {f} differs from {infos[0][0]} in {', '.join(diff)}: not shards of one run"
            )
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
        got = ", ".join(
            f"{s['index']}/{s['count']}" for _, s in sorted(shards.values(), key=lambda t: t[1]["index"])
        )
        raise ValueError(f"folders: shards must be 0/n .. n-1/n exactly once, got {got}")
    parts, cleans, times = [], [], []
    for i in sorted(shards):
        f, s = shards[i]
        for k in range(*s["batches"]):
            loaded = _load_batch(_batch_path(f, k), header) if _batch_path(f, k).is_file() else None
            if loaded is None:
                raise ValueError(
                    f"folders: {f} lacks finished batch {k}: rerun that shard's command to finish it"
                )
            parts.append(loaded[0])
            cleans.append(loaded[1])
            times.append({"batch": k, "seconds": loaded[2]["seconds"]})
    hardware = [h["hardware"] for _, h, _ in infos]
    merged = dict(header)
    merged["hardware"] = hardware[0] if all(h == hardware[0] for h in hardware) else {"shards": hardware}
    out_dir = Path(out_dir)
    _start_state(
        out_dir, merged, {"shard": None, "n_batches": infos[0][2]["n_batches"], "merged_from": len(infos)}
    )
    return _finish(out_dir, merged, parts, cleans, times, None, logger or {"kind": "none"})


# ---------------------------------------------------------------------------- schema


def _schema() -> dict:
    return _read_json(Path(__file__).with_name("results_schema.json"))


def validate_results(results: dict) -> None:
    """``ValueError`` unless ``results`` follows ``results_schema.json`` (and its arrays agree in length)."""
    import jsonschema

    try:
        jsonschema.validate(_plain(results), _schema())
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
    results = _read_json(path)
    validate_results(results)
    return results
