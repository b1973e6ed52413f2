"""Checkpoints: reading other people's formats safely, and writing the project's own atomically.

Every file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: nothing is
unpickled with arbitrary globals. An unreadable or refused file is a one-line ``ValueError``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .._util import atomic_write
from .architectures import BinarizedInput

__all__ = [
    "safe_load",
    "extract_state_dict",
    "load_state_dict_checked",
    "load_weights",
    "save_checkpoint",
    "load_checkpoint",
]


# ---------------------------------------------------------------------------- checkpoint formats


def safe_load(path: str | Path):
    """``torch.load(path, weights_only=True)`` on CPU, with every failure as one line naming the file.

    ``FileNotFoundError`` if ``path`` is not a file; ``ValueError`` if it is not a torch file or holds
    pickled objects that ``weights_only`` refuses (arbitrary code would run on loading them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        text = " ".join(str(exc).split())
        # torch names weights_only in every failure message; a refused pickle says which global it met.
        if "Unsupported global" in text or "Unsupported operand" in text:
            reason = "it holds pickled objects other than tensors and plain containers (refused for safety)"
        else:
            reason = f"it is not a readable torch file ({type(exc).__name__}: {text[:160]})"
        raise ValueError(f"checkpoint {path} cannot be loaded: {reason}") from None


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(checkpoint) -> dict[str, torch.Tensor]:
    """Return the state dict inside a loaded checkpoint, in any of the accepted formats.

    Formats: ``{"state_dict": [sd]}`` (a list of one state dict; Wong et al.'s vanilla/binarize files),
    ``{"state_dict": sd}``, ``{"net": sd}`` (keys may carry DataParallel's ``module.`` prefix), or a
    raw state dict. A ``module.`` prefix on every key is removed.
    """
    sd = checkpoint
    if isinstance(checkpoint, dict) and not _is_state_dict(checkpoint):
        for key in ("state_dict", "net", "model"):
            if key in checkpoint:
                sd = checkpoint[key]
                break
        else:
            raise ValueError(
                f"checkpoint must be a state dict or a dict with 'state_dict' or 'net', got keys "
                f"{sorted(map(str, checkpoint))}"
            )
        if isinstance(sd, (list, tuple)):
            if len(sd) != 1:
                raise ValueError(
                    f"checkpoint['state_dict'] is a list of {len(sd)} state dicts: expected exactly one"
                )
            sd = sd[0]
    if not _is_state_dict(sd):
        raise ValueError(f"checkpoint does not hold a state dict (str -> tensor), got {type(sd).__name__}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state_dict`` into ``model`` if it fits exactly; otherwise ``ValueError`` naming the misfits.

    Lists missing keys, unexpected keys and shape mismatches (``key: checkpoint shape vs model shape``).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches [{'; '.join(shapes)}]")
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: " + ", ".join(parts))
    model.load_state_dict(state_dict, strict=True)
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint file (any format of ``extract_state_dict``) into ``model``; returns it.

    Read with ``weights_only=True`` on CPU; ``ValueError`` if it does not fit (see
    ``load_state_dict_checked``), ``FileNotFoundError`` if ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = safe_load(path)
    state = extract_state_dict(checkpoint)
    if isinstance(model, BinarizedInput) and not any(k.startswith("model.") for k in state):
        # Checkpoints of the binarization baseline hold the bare network (the threshold has no weights).
        load_state_dict_checked(model.model, state)
        return model
    return load_state_dict_checked(model, state)


# ---------------------------------------------------------------------------- the project's checkpoints

_FORMAT = "wasserstein_attacks/checkpoint-v1"


def _check_plain(obj, where: str = "meta") -> None:
    # Only types torch.load(weights_only=True) rebuilds without extra globals: exact types, since a
    # subclass (torch.__version__ is a str subclass, numpy floats subclass float) is pickled by its class.
    if obj is None or type(obj) in (str, bool, int):
        return
    if type(obj) is float:
        if not math.isfinite(obj):
            raise ValueError(f"{where} must be finite, got {obj!r}")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(obj) is dict:
        for k, v in obj.items():
            if type(k) is not str:
                raise ValueError(f"{where} keys must be str, got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise ValueError(
        f"{where} must hold only str, int, float, bool, None, lists and dicts; got {type(obj).__name__}"
    )


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``model``'s state dict and ``meta`` (plain JSON-like types) to ``path`` atomically.

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a reader never sees a partial checkpoint. Returns the path.
    """
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict of plain values, got {type(meta).__name__}")
    _check_plain(meta)
    payload = {
        "format": _FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Load a checkpoint written by ``save_checkpoint`` into ``model``; return its ``meta`` dict.

    ``ValueError`` if the file is not such a checkpoint or does not fit ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not a wasserstein_attacks checkpoint (expected format {_FORMAT!r}); "
            "use load_weights for other formats"
        )
    sd = payload.get("state_dict")
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: 'state_dict' must be a dict of tensors, got {type(sd).__name__}")
    load_state_dict_checked(model, sd)
    return dict(payload.get("meta") or {})
