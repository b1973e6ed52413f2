"""One benchmark run's settings: the composed Hydra config parsed once into a frozen ``RunSpec``.

``RunSpec.from_config`` is the only place that reads the config. It checks the cheap fields first
(radii, seed, batch size, shard, workers, device, logger), then builds the threat model, the attacks,
the model (and loads its checkpoint) and the data; any bad field stops it with a one-line
``ConfigError`` naming the field, before any attack runs. Everything after works on the spec.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .._util import check_int, first_line, plain, sha256_bytes, sha256_file, weights_sha256
from ..attacks.base import Attack
from ..attacks.suite import Suite, check_radii, suite_from_config
from ..threat import WassersteinBall

__all__ = [
    "ConfigError",
    "RunSpec",
    "HASH_EXCLUDE",
    "build_threat",
    "build_suite",
    "build_model",
    "load_data",
    "parse_shard",
    "parse_workers",
    "shard_batches",
    "config_hash",
    "register_resolvers",
]

#: Top-level config keys that do not change the numbers: left out of the config hash.
HASH_EXCLUDE = ("shard", "logger", "name", "progress", "hydra", "workers")


class ConfigError(ValueError):
    """A bad config, found before any work; the message is one line naming the field."""


# ---------------------------------------------------------------------------- scalar fields


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
    return sha256_bytes(blob.encode())[:16]


def _radii(value) -> tuple[float, ...]:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    try:
        return check_radii(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _int(cfg: DictConfig, key: str, low: int) -> int:
    try:
        return check_int(cfg.get(key), key, low)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _exact_fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"exact_fraction must be a float in [0, 1], got {value!r}")
    return float(value)


def _device(value) -> torch.device:
    dev = str(value)
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:<i>, got {dev!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device is {dev!r} but CUDA is not available (use device=auto or cpu)")
    return device


def _logger(cfg: DictConfig) -> dict:
    node = cfg.get("logger")
    logger = OmegaConf.to_container(node, resolve=True) if node is not None else {"kind": "none"}
    if logger.get("kind", "none") not in ("none", "wandb"):
        raise ConfigError(f"logger.kind must be 'none' or 'wandb', got {logger.get('kind')!r}")
    return logger


def register_resolvers() -> None:
    """OmegaConf resolver the configs use: ``wattack_dirname`` (run folder names)."""

    def dirname(overrides: str) -> str:
        # "shard=0/4" would make nested folders: keep one folder per run.
        s = re.sub(r"shard=(\d+)/(\d+)", r"shard=\1-of-\2", overrides or "")
        return s.replace("/", "_") or "default"

    if not OmegaConf.has_resolver("wattack_dirname"):
        OmegaConf.register_new_resolver("wattack_dirname", dirname)


register_resolvers()


# ---------------------------------------------------------------------------- built objects


def _instantiate(node, field: str, **kwargs):
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all", **kwargs)
    except Exception as exc:  # noqa: BLE001 - Hydra wraps import, argument and constructor errors alike
        raise ConfigError(f"{field}: {first_line(exc.__cause__ or exc)}") from exc


def build_threat(cfg: DictConfig, eps: float = 0.0) -> WassersteinBall:
    """Build the ``WassersteinBall`` of ``cfg.threat`` with radius ``eps`` (or ``ConfigError``)."""
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
        raise ConfigError(f"threat: {first_line(exc)}") from exc
    if not isinstance(ball, WassersteinBall):
        raise ConfigError(f"threat._target_ must build a WassersteinBall, got {type(ball).__name__}")
    if ball.kernel_size is None:
        raise ConfigError("threat.kernel_size must be an odd int >= 3: attacks need local plans")
    return ball


def build_suite(cfg: DictConfig, attack_label: str | None = None) -> tuple[Suite, dict]:
    """Build the suite of ``cfg.suite`` (or a one-attack suite for ``cfg.attack``) and its results.json entry.

    ``attack_label`` names the single attack (``attack=<name>``; default its registry name).
    """
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
            raise ConfigError(first_line(exc)) from exc
        configs = {k: OmegaConf.to_container(v, resolve=True) for k, v in cfg.suite.attacks.items()}
    desc = {
        "name": suite.name,
        "version": suite.version,
        "order": suite.order,
        **({"near_miss_pass": suite.near_miss_pass} if suite.near_miss_pass != "per_radius" else {}),
        "attacks": [
            {"name": label, "attack": a.name, "config": configs[label], **({"targets": t} if t else {}),
             **({"start": how} if how != "identity" else {}),
             **({"near_miss": tau} if tau is not None else {})}
            for label, a, t, how, tau in zip(suite.labels, suite.attacks, suite.targets, suite.starts,
                                             suite.near_miss, strict=True)
        ],
    }
    return suite, desc


def build_model(cfg: DictConfig) -> tuple[torch.nn.Module, dict]:
    """Build ``cfg.model``, load its checkpoint; return it and its results.json entry (names, hashes)."""
    node = cfg.get("model")
    if node is None or not OmegaConf.is_dict(node) or node.get("build") is None:
        raise ConfigError(
            "model must have `name`, `build` (a _target_ returning an nn.Module) and `checkpoint`"
        )
    name = str(node.get("name") or "model")
    if OmegaConf.is_missing(node, "checkpoint"):  # .get() would read ??? as None: a random model
        raise ConfigError(f"model.checkpoint is required for model {name!r}: add model.checkpoint=<file>")
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
                f"model.checkpoint: {ckpt_path} does not match model {name!r}: {first_line(exc)}"
            ) from exc
        sha = sha256_file(ckpt_path)
        # Freshly built modules start in train mode; weights loaded for evaluation are meant for eval mode.
        model.eval()
    # A model from the zoo carries the file it was loaded from: record it like a checkpoint. (The trainer's
    # cached models carry a checkpoint_meta of their own, without a file hash: nothing to record.)
    meta = getattr(model, "checkpoint_meta", None) if ckpt_path is None else None
    meta = meta if isinstance(meta, dict) and "zoo" in meta else None
    info = {
        "name": name,
        "checkpoint": meta["file"] if meta else ckpt_path.name if ckpt_path else None,
        "checkpoint_sha256": meta["sha256"] if meta else sha,
        "weights_sha256": weights_sha256(model),
    }
    return model, info


def load_data(cfg: DictConfig) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Load ``cfg.dataset``: images ``[N, C, H, W]`` (float), labels ``[N]`` (long), results.json entry."""
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


def _model_checks(model, images, labels, seed: int, losses: list[str]) -> dict:
    from ..attacks.checks import check_model

    # check_model also warns per problem; run() prints the report's list once, so keep these from doubling it.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            report = check_model(model, images, labels, seed=seed, loss=losses)
        except ValueError as exc:  # e.g. NaN logits: the run must not score a broken model
            raise ConfigError(f"model: {first_line(exc)}") from None
    return report.as_dict()


def _hashed_config(cfg: DictConfig, checkpoint_sha256: str | None) -> dict:
    """Return the config as results.json records it: what changes the numbers, no machine paths."""
    hashed = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in HASH_EXCLUDE}
    hashed.pop("suite" if cfg.get("attack") is not None else "attack", None)
    if isinstance(hashed.get("model"), dict):
        # Paths differ between machines; the checkpoint's content identifies it.
        hashed["model"] = {**hashed["model"], "checkpoint": checkpoint_sha256}
    if isinstance(hashed.get("dataset"), dict):
        hashed["dataset"] = {k: v for k, v in hashed["dataset"].items() if k != "root"}
    return plain(hashed)


# ---------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class RunSpec:
    """A validated run: every setting and built object the pipeline uses, read from the config once.

    Attributes:
        radii: ascending radii, units of eps (fraction of mass x pixel distance^p).
        seed, batch_size: per-example seeds derive from ``seed``; state is saved per batch.
        shard: ``(i, n)`` or ``None``; workers: processes on CPU; device: where attacks run.
        exact_fraction: share of examples re-checked by the exact LP; progress: tqdm bars.
        logger: the logger config (``kind`` = ``"none"`` or ``"wandb"``).
        threat, suite, model: built objects (the model in eval mode, on ``device``).
        images ``[N, C, H, W]``, labels ``[N]``: the whole (unsharded) dataset, on CPU.
        threat_info, suite_info, model_info, data_info: their results.json entries.
        config, config_hash: the numbers-relevant config (JSON-ready) and its hash.
        model_checks: the model sanity report (``None`` if checks are unavailable).

    """

    radii: tuple[float, ...]
    seed: int
    batch_size: int
    shard: tuple[int, int] | None
    workers: int
    device: torch.device
    exact_fraction: float
    progress: bool
    logger: dict
    threat: WassersteinBall
    suite: Suite
    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    threat_info: dict
    suite_info: dict
    model_info: dict
    data_info: dict
    config: dict
    config_hash: str
    model_checks: dict | None

    @property
    def n_batches(self) -> int:
        """Batches of the whole (unsharded) dataset."""
        return math.ceil(self.images.shape[0] / self.batch_size)

    @property
    def batches(self) -> range:
        """The batches this run (or shard) evaluates."""
        return shard_batches(self.n_batches, self.shard)

    @classmethod
    def from_config(cls, cfg: DictConfig, *, attack_label: str | None = None) -> RunSpec:
        """Parse and build a composed ``conf/config.yaml``; ``ConfigError`` (one line) on a bad field.

        Cheap checks come first (scalars, shard, threat, attacks), then the model and its checkpoint,
        then the data. Nothing is attacked here. ``attack_label`` names a single ``attack=<name>``.
        """
        radii = _radii(cfg.get("radii"))
        seed, batch_size = _int(cfg, "seed", 0), _int(cfg, "batch_size", 1)
        shard = parse_shard(cfg.get("shard"))
        workers = parse_workers(cfg.get("workers", 1))
        frac = _exact_fraction(cfg.get("exact_fraction", 0.0))
        device = _device(cfg.get("device", "auto"))
        logger = _logger(cfg)
        threat = build_threat(cfg)
        suite, suite_info = build_suite(cfg, attack_label)
        model, model_info = build_model(cfg)
        images, labels, data_info = load_data(cfg)
        n_batches = math.ceil(images.shape[0] / batch_size)
        if shard is not None and shard[1] > n_batches:
            raise ConfigError(
                f"shard: {shard[1]} shards but only {n_batches} batches of {batch_size}: "
                "use fewer shards or a smaller batch_size"
            )
        config = _hashed_config(cfg, model_info["checkpoint_sha256"])
        # The model's sanity checks see a fixed head of the data, the same for every shard.
        head = slice(0, min(128, images.shape[0]))
        # The gradients the suite's attacks will follow: its own losses (a saturated cross-entropy would
        # pass a margin-loss check and still stall a cross-entropy attack).
        checks = _model_checks(model, images[head], labels[head], seed, suite.losses)
        model.eval()
        return cls(
            radii=radii,
            seed=seed,
            batch_size=batch_size,
            shard=shard,
            workers=workers,
            device=device,
            exact_fraction=frac,
            progress=bool(cfg.get("progress", True)),
            logger=logger,
            threat=threat,
            suite=suite,
            model=model.to(device),
            images=images,
            labels=labels,
            threat_info={k: v for k, v in threat.describe().items() if k != "eps"},
            suite_info=suite_info,
            model_info=model_info,
            data_info=data_info,
            config=config,
            config_hash=config_hash(config),
            model_checks=checks,
        )
