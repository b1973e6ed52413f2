"""What every benchmark records about where it ran, and the atomic JSON writer they share.

Use from a benchmark script (``benchmarks/`` on ``sys.path``)::

    from _machine import machine_info, write_json_atomic
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2)
    except (ValueError, OSError, AttributeError):
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of this checkout (None where unknown).

    A copied tree (a lent GPU machine) may carry a stale .git: ``$WATTACK_GIT_COMMIT`` then names the commit
    (dirty unknown).
    """
    if os.environ.get("WATTACK_GIT_COMMIT"):
        return os.environ["WATTACK_GIT_COMMIT"], None
    status = _git("status", "--porcelain")
    if status is None:
        return _git("rev-parse", "HEAD"), None
    # New or updated result files (this run's own output among them) do not make the code differ from the
    # commit. Porcelain lines are "XY path": split off the status, not a fixed width, since _git strips the
    # output's leading blank (" M path" on the first line).
    paths = [line.strip().split(maxsplit=1)[-1] for line in status.splitlines() if line.strip()]
    changed = [p for p in paths if not p.startswith("benchmarks/results/")]
    return _git("rev-parse", "HEAD"), bool(changed)


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def machine_info() -> dict:
    """Hardware, software and code version of this run, JSON-ready.

    Returns:
        dict with ``cpu_model``, ``cpu_count`` (logical CPUs), ``cpu_affinity`` (CPUs this process may
        use), ``memory_gib``, ``load_average`` (1/5/15 min: the machine may be shared),
        ``torch_threads``, versions of ``python``, ``torch``, ``numpy``, ``pot``, ``scipy``,
        ``platform``, ``git_commit`` and ``git_dirty`` (None outside a git checkout), ``date``
        (UTC, ISO 8601) and ``accelerator`` (the CUDA device, None without one).
    """
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    commit, dirty = git_state()
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_gib": _memory_gib(),
        "load_average": load,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "pot": _version("ot"),
        "scipy": _version("scipy"),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "accelerator": _accelerator(),
    }


def _accelerator() -> dict | None:
    """The CUDA device this process sees (name, memory, CUDA version), or None on a CPU-only machine."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
            "device_count": torch.cuda.device_count()}


def write_json_atomic(path: str | Path, obj, indent: int = 2) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (the package's ``_util.atomic_write``).

    A reader never sees a half-written file; the folder is created if needed. Returns the path.
    """
    from wasserstein_attacks._util import atomic_write

    text = json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    return atomic_write(path, text.encode())
