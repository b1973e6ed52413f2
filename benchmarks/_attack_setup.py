"""Shared set-up of the attack benchmarks: data, zoo model, attack specs, provenance, JSON output."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import os
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
#: The committed empirical leaderboard entries of the default threat model (weights beside them).
ENTRY_DIR = REPO / "leaderboard" / "entries" / "mnist" / "W1-k5-box01"
if importlib.util.find_spec("wasserstein_attacks") is None:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from wasserstein_attacks import __version__  # noqa: E402
from wasserstein_attacks.attacks import base as attack_base  # noqa: E402
from wasserstein_attacks.data import load_dataset  # noqa: E402
from wasserstein_attacks.models import load_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict:
    """Hardware and software of this run (``benchmarks/_machine.py`` when present)."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _machine import machine_info  # type: ignore

        return machine_info()
    except ImportError:
        return {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        }


def provenance() -> dict:
    """Package version and git commit (with a dirty flag) of the code that produced the numbers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import git_state

    commit, dirty = git_state()
    return {"package_version": __version__, "git_commit": commit, "git_dirty": dirty}


def mnist_and_model(n: int, model: str = "mnist_adv_training", device: str | torch.device = "cpu"):
    """First ``n`` MNIST test images ``[n, 1, 28, 28]``, labels ``[n]`` and a model of the zoo (eval mode),
    all on ``device``. Offline, ``$WATTACK_ZOO_DIR`` must name a folder holding the zoo's files."""
    ds = load_dataset("mnist", "test", n=n)
    return ds.images.to(device), ds.labels.to(device), load_model(model).to(device)


def sync() -> None:
    """Wait for queued GPU work (timings on CUDA read the clock only after it); no-op without CUDA."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_arg(value: str) -> torch.device:
    """``--device`` of the benchmarks: ``cpu``, ``cuda`` or ``cuda:<i>`` (checked to exist)."""
    dev = torch.device(value)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {value}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu, cuda or cuda:<i>, got {value!r}")
    return dev


def parse_attack(spec: str) -> tuple[str, str, dict]:
    """``"name"`` or ``"name:key=value,key=value"`` (values as Python literals) -> (label, name, kwargs)."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"attack spec {spec!r}: expected key=value after ':', got {item!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    if name not in attack_base.available():
        names = ", ".join(attack_base.available())
        raise ValueError(f"unknown attack {name!r} in {spec!r}; available: {names}")
    return spec, name, kwargs


def accepts(name: str, key: str) -> bool:
    """Whether the registered attack ``name``'s constructor takes the keyword ``key``."""
    cls = attack_base._REGISTRY[name]
    return key in inspect.signature(cls.__init__).parameters


def radius_key(r: float) -> str:
    """The shortest decimal string that round-trips (``0.1`` -> ``"0.1"``)."""
    return repr(float(r))


def _finite(obj):
    """``obj`` with non-finite floats as strings ("inf", "nan"): JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON atomically; non-finite floats (an exact distance of ``inf`` says "outside
    the ball") are written as strings."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import write_json_atomic

    write_json_atomic(path, _finite(obj), indent=1)
