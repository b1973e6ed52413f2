"""Reference models by name (a small model zoo): Wong et al. (2019)'s MNIST checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .._util import sha256_file as _sha256
from .architectures import BinarizedInput, build_model
from .checkpoints import load_weights

__all__ = ["REFERENCE_MODELS", "default_shared_dir", "reference_model_path", "load_reference_model"]


# ---------------------------------------------------------------------------- reference models

# From ../shared/reference_models/README.md (Wong, Schmidt, Kolter 2019; locuslab/projected_sinkhorn@3bd1818).
REFERENCE_MODELS = {
    "vanilla": (
        "mnist/mnist_vanilla.pth",
        "f95e9ca5f79c6f05c4373f9fa18fb89e1606f939a538390822bce391e7c7e60d",
    ),
    "adv_training": (
        "mnist/mnist_adv_training.pth",
        "cb1b02fecc0fa07a0b86a22ef87187c1e849ebaa24cd8f8004f039a0f9871f32",
    ),
    "robust": ("mnist/mnist_robust.pth", "95014ab0c04c73f48b3be0cb7acc42aff60ce4420c6c43bec25e9a1447279e08"),
    "binarize": (
        "mnist/mnist_binarize.pth",
        "a3921ef74e5bcad28e276d2cc00ce5948d4295786aaf6fd7eda81473e81b71ae",
    ),
}


def default_shared_dir() -> Path:
    """Return the developers' ``shared`` folder: ``$WATTACK_SHARED_DIR``, else ``<repo root>/../shared``.

    The repository root is the parent of this package's folder; users' installs usually have no such
    folder (nothing at run time requires it).
    """
    env = os.environ.get("WATTACK_SHARED_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared"



def reference_model_path(name: str, shared_dir: str | Path | None = None) -> Path:
    """Path of reference checkpoint ``name`` after checking it exists and its sha256 matches.

    Raises ``FileNotFoundError`` (folder or file absent) or ``ValueError`` (unknown name, wrong hash).
    """
    if name not in REFERENCE_MODELS:
        raise ValueError(f"name must be one of {sorted(REFERENCE_MODELS)}, got {name!r}")
    shared = Path(shared_dir) if shared_dir is not None else default_shared_dir()
    folder = shared / "reference_models"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"reference models folder {folder} not found: Wong et al.'s checkpoints are only available to "
            "developers and CI (in ../shared beside the repository); train the project's own model instead "
            "(wasserstein_attacks.train.standard_mnist_model)"
        )
    rel, digest = REFERENCE_MODELS[name]
    path = folder / rel
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint {path} not found (expected {rel} in {folder})")
    got = _sha256(path)
    if got != digest:
        raise ValueError(
            f"reference checkpoint {path} has sha256 {got}, expected {digest}: the file was altered"
        )
    return path


def load_reference_model(
    name: str, shared_dir: str | Path | None = None, *, straight_through: bool = False
) -> nn.Module:
    """One of Wong et al.'s four MNIST reference models, on CPU, in eval mode.

    Args:
        name: ``"vanilla"``, ``"adv_training"`` (Wasserstein adversarial training), ``"robust"``
            (provably l_inf-robust) or ``"binarize"`` (wrapped in :class:`BinarizedInput`, threshold 0.5).
        shared_dir: the ``shared`` folder (default :func:`default_shared_dir`).
        straight_through: for ``"binarize"``, make the threshold's backward pass the identity (BPDA).

    Returns:
        An ``nn.Module`` mapping ``[B, 1, 28, 28]`` in [0, 1] to logits ``[B, 10]``.

    """
    path = reference_model_path(name, shared_dir)
    # Seeded build: loading a checkpoint must not consume the caller's global random state.
    model = load_weights(build_model("mnist_convnet", seed=0), path)
    if name == "binarize":
        model = BinarizedInput(model, 0.5, straight_through)
    return model.eval()


