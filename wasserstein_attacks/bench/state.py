"""A run folder's resumable state: ``state/header.json``, ``state/run.json``, ``state/batch-NNNNNN.npz``.

The header is the shard-independent part of ``results.json`` (written when the run starts, kept when it
resumes); ``run.json`` says which shard the folder holds. Each batch file carries the config hash of the
run that wrote it, so a batch from another config is never reused. Every file is written atomically.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._util import atomic_write, first_line, write_json
from ..attacks.suite import SuiteResult
from .spec import ConfigError

__all__ = [
    "STATE",
    "CorruptStateError",
    "batch_path",
    "save_batch",
    "load_batch",
    "read_state_json",
    "start_state",
]

#: Folder of the state files inside a run folder.
STATE = "state"
_ARRAYS = SuiteResult.ARRAYS


class CorruptStateError(ValueError):
    """A state file exists but cannot be read (truncated, not an npz/JSON file, missing fields)."""


def batch_path(run_dir: Path, k: int) -> Path:
    """Where batch ``k`` (from 0) of the run in ``run_dir`` is saved."""
    return Path(run_dir) / STATE / f"batch-{k:06d}.npz"


def save_batch(path: Path, res: SuiteResult, clean: torch.Tensor, chash: str, seconds: float) -> None:
    """Save one batch's per-example result, its clean images ``[B, C, H, W]`` and wall time (seconds)."""
    arrays = {name: getattr(res, name).numpy() for name in _ARRAYS}
    arrays["clean"] = clean.detach().cpu().numpy()
    arrays["config_hash"] = np.array(chash)
    arrays["timings"] = np.array(json.dumps({"seconds": seconds, "calls": res.timings}))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_batch(path: Path, header: dict) -> tuple[SuiteResult, torch.Tensor, dict] | None:
    """Read a saved batch: ``(result, clean images, timing)``.

    ``None`` if the file is missing or was written by another config (the batch is to be computed);
    ``CorruptStateError`` (one line) if it exists but cannot be read.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["config_hash"]) != header["config_hash"]:
                return None
            arrays = {name: torch.from_numpy(z[name].copy()) for name in _ARRAYS}
            clean = torch.from_numpy(z["clean"].copy())
            timing = json.loads(str(z["timings"]))
        res = SuiteResult(
            radii=tuple(header["radii"]),
            attacks=tuple(a["name"] for a in header["suite"]["attacks"]),
            cost_tol=float(header["exact_check"]["tolerance"]),
            timings=timing["calls"],
            **arrays,
        )
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise CorruptStateError(f"{path} is unreadable ({first_line(exc)})") from None
    return res, clean, timing


def read_state_json(path: Path) -> dict:
    """Read ``header.json`` or ``run.json``; ``CorruptStateError`` (one line) unless a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptStateError(f"{path} is unreadable ({first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise CorruptStateError(f"{path} is unreadable (not a JSON object)")
    return obj


def start_state(run_dir: Path, header: dict, run_info: dict) -> dict:
    """Write or check ``state/header.json`` and ``state/run.json``; returns the header of the run.

    ``ConfigError`` (one line) if the folder holds another config's run, another shard, or state files
    that cannot be read (never overwritten: they may be someone's hours of work).
    """
    state = Path(run_dir) / STATE
    hpath, rpath = state / "header.json", state / "run.json"
    if not hpath.is_file():
        write_json(hpath, header)
        write_json(rpath, run_info)
        return header
    try:
        old = read_state_json(hpath)
        old_run = read_state_json(rpath) if rpath.is_file() else None
    except CorruptStateError as exc:
        raise ConfigError(
            f"output folder {run_dir}: {exc}: delete that file to start the run again (saved batches of "
            "the same config are reused) or choose another folder (hydra.run.dir=...)"
        ) from None
    if old.get("config_hash") != header["config_hash"]:
        raise ConfigError(
            f"output folder {run_dir} holds a run with another config "
            f"(hash {old.get('config_hash')} vs {header['config_hash']}): choose another "
            "folder (hydra.run.dir=...) or delete it"
        )
    if old_run is not None and old_run != run_info:
        raise ConfigError(f"shard: output folder {run_dir} holds another shard ({old_run.get('shard')})")
    # Resuming: keep the provenance of the run's start, so a resumed run reports what a whole one does.
    return old
