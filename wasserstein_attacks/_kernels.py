"""Which implementation the hot plan operations run: fused Triton kernels or the torch reference.

The torch code is the reference and the CPU path; the Triton kernels (beside their reference:
``wasserstein_attacks.transport.triton_grid``, ``wasserstein_attacks.solvers.triton_search``,
``wasserstein_attacks.solvers.triton_capacity``) run only on CUDA tensors, and only when Triton
imports. Modes:

- ``"auto"`` (default): kernels for CUDA tensors, torch otherwise;
- ``"torch"``: always torch (``WATTACK_KERNELS=torch``, or ``kernels`` as a context manager);
- ``"triton"``: kernels for CUDA tensors, and for CPU tensors too when ``TRITON_INTERPRET=1`` (Triton's
  slow numpy interpreter: for tests and the benchmark's ``--smoke`` run only).

Triton is optional: it is imported lazily, and without it every call takes the torch path.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator

import torch

__all__ = ["MODES", "kernels_mode", "set_kernels", "kernels", "triton_available", "use_triton"]

MODES = ("auto", "torch", "triton")
_override: list[str] = []  # stack of modes set by ``kernels`` / ``set_kernels`` (last wins)


def _check(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"kernel mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def kernels_mode() -> str:
    """Return the mode in force: the innermost ``kernels`` / ``set_kernels``, else the env."""
    if _override:
        return _override[-1]
    return _check(os.environ.get("WATTACK_KERNELS", "auto").strip().lower() or "auto")


def set_kernels(mode: str | None) -> None:
    """Set the mode for the rest of the process (``None``: back to ``$WATTACK_KERNELS``)."""
    _override.clear()
    if mode is not None:
        _override.append(_check(mode))


@contextlib.contextmanager
def kernels(mode: str) -> Iterator[None]:
    """Run a block under ``mode``: ``kernels("torch")`` forces the reference path."""
    _override.append(_check(mode))
    try:
        yield
    finally:
        _override.pop()


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether Triton can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether an operation on ``tensors`` takes the Triton path.

    CUDA tensors do unless the mode is ``"torch"``; CPU tensors only in mode ``"triton"`` under the
    interpreter (the reference stays the CPU path).
    """
    mode = kernels_mode()
    if mode == "torch" or not triton_available():
        return False
    if all(t.device.type == "cuda" for t in tensors):
        return True
    return mode == "triton" and interpreting() and all(t.device.type == "cpu" for t in tensors)
