"""Small helpers every layer shares: argument validators, JSON, atomic writes, hashes, provenance.

One place for each: the validators give the one-line ``ValueError`` naming the argument and the
expected form that the whole package promises; files are written to a temporary file beside the
target and moved into place, so no reader ever sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "check_int",
    "check_float",
    "check_bool",
    "check_choice",
    "radius_key",
    "plain",
    "atomic_write",
    "save_png",
    "write_json",
    "default_cache_dir",
    "torch_threads",
    "sha256_bytes",
    "sha256_file",
    "weights_sha256",
    "git_commit",
    "first_line",
]

PACKAGE_DIR = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------- validators


def check_int(value, name: str, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]``, else a ``ValueError`` naming it."""
    out_of_range = isinstance(value, int) and (value < low or (high is not None and value > high))
    if isinstance(value, bool) or not isinstance(value, int) or out_of_range:
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def check_float(value, name: str, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` if it is a finite number ``> 0`` (``>= 0`` with ``allow_zero``)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite float {bound}, got {value!r}")
    return float(value)


def check_bool(value, name: str) -> bool:
    """Return ``value`` if it is a bool; else ``ValueError`` naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; else ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def radius_key(radius: float) -> str:
    """Write a radius (units of eps) as the shortest decimal that round-trips: ``0.1`` -> ``"0.1"``."""
    r = float(radius)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"radius must be a finite float >= 0, got {radius!r}")
    return repr(r)


# ------------------------------------------------------------------------------------------- files


def plain(obj):
    """JSON-ready copy: tensors and numpy values to Python, non-finite floats to ``None``."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return plain(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def atomic_write(path: str | Path, data: bytes | Callable) -> Path:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically.

    The bytes go to a temporary file in the same folder, are flushed to disk and moved into place with
    ``os.replace``; on any error the temporary file is removed and ``path`` is untouched. Returns it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path



def save_png(fig, path: str | Path) -> Path:
    """Write a matplotlib figure to ``path`` as PNG (110 dpi, tight) atomically, then close it."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)

def write_json(path: str | Path, obj) -> Path:
    """Deterministic JSON (sorted keys, repr floats, non-finite as null) written atomically."""
    text = json.dumps(plain(obj), sort_keys=True, indent=1, allow_nan=False) + "\n"
    return atomic_write(path, text.encode())


# ------------------------------------------------------------------------------------------ hashes


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """Hex sha256 of a model's state dict, or of a state dict (names and raw tensor bytes, in order)."""
    state = model if isinstance(model, dict) else model.state_dict()
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``; the caller's setting comes back after.

    A fixed thread count keeps CPU results bitwise reproducible (float reductions split by thread).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_cache_dir() -> Path:
    """Return the project's cache folder: ``$WATTACK_CACHE``, else ``~/.cache/wasserstein_attacks``."""
    env = os.environ.get("WATTACK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wasserstein_attacks"


# -------------------------------------------------------------------------------------- provenance


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_commit() -> str | None:
    """Commit of the checkout this package runs from (``-dirty`` if modified), or ``None``.

    ``None`` for an installed wheel: the package folder must be the checkout's own
    ``wasserstein_attacks/``, not a copy in a virtual environment that happens to sit inside one.
    ``$WATTACK_GIT_COMMIT`` wins when set (a copied tree whose ``.git`` is stale or absent).
    """
    env = os.environ.get("WATTACK_GIT_COMMIT")
    if env:
        return env
    try:
        top = _git("rev-parse", "--show-toplevel", cwd=PACKAGE_DIR)
        if Path(top).resolve() / PACKAGE_DIR.name != PACKAGE_DIR:
            return None
        head = _git("rev-parse", "HEAD", cwd=PACKAGE_DIR)
        dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=PACKAGE_DIR)
    except (OSError, subprocess.SubprocessError):
        return None
    if not re.fullmatch(r"[0-9a-f]{40}", head):
        return None
    return f"{head}-dirty" if dirty else head


def first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
