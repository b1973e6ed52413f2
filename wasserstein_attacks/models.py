"""Models: the reference MNIST architecture, a CIFAR ResNet-18, input binarization, checkpoints.

Every model takes images in pixel space, ``[B, C, H, W]`` in ``[0, 1]``, and returns logits
``[B, num_classes]``; any input normalization is a layer inside the model, so attacks and the
threat model never see normalized images.

Checkpoints are always read with ``torch.load(path, map_location="cpu", weights_only=True)``:
no file is unpickled with arbitrary globals. The reference checkpoints of Wong et al. (2019) are
read from ``../shared/reference_models/`` (developers and CI only, see
``../shared/reference_models/README.md``) after checking their sha256.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "mnist_convnet",
    "tiny_convnet",
    "ResNet18",
    "Normalize",
    "BinarizedInput",
    "build_model",
    "MODELS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "extract_state_dict",
    "load_state_dict_checked",
    "load_weights",
    "REFERENCE_MODELS",
    "default_shared_dir",
    "reference_model_path",
    "load_reference_model",
    "save_checkpoint",
    "load_checkpoint",
]

MODELS = ("mnist_convnet", "resnet18", "tiny")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------------------- architectures


def mnist_convnet(num_classes: int = 10) -> nn.Sequential:
    """Build the MNIST architecture of Wong et al.'s reference models (inputs ``[B, 1, 28, 28]`` in [0, 1]).

    ``Conv2d(1,16,4,s2,p1) - ReLU - Conv2d(16,32,4,s2,p1) - ReLU - Flatten - Linear(1568,100) - ReLU -
    Linear(100,num_classes)``, as ``nn.Sequential`` indices 0..7 so the reference state dicts (keys
    ``0.weight`` ... ``7.bias``) load unchanged. No normalization layer (the references had none).
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def tiny_convnet(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """Build a small CNN for tests, any input size ``[B, in_channels, H, W]`` (H, W >= 2).

    Two 3x3 convolutions (8 and 16 channels, the second with stride 2), adaptive average pooling to
    4x4 (keeps coarse position, which the synthetic blobs encode), and a linear layer.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, num_classes),
    )


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for ``[B, C, H, W]`` inputs.

    ``mean`` and ``std`` are non-persistent buffers: they follow ``.to(device)`` but are not part of
    the state dict, so checkpoints trained without this layer load unchanged.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have one entry per channel and std > 0, got {mean}, {std}")
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32)[None, :, None, None], persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32)[None, :, None, None], persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``[B, C, H, W]`` pixel-space images."""
        return (x - self.mean) / self.std


class _BasicBlock(nn.Module):
    # Two 3x3 conv-BN pairs with an identity shortcut, or a 1x1 strided conv-BN when the shape changes
    # (He et al. 2016, "option B").
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images (CIFAR variant: 3x3 stride-1 stem, no max-pool), normalization inside.

    Input ``[B, in_channels, H, W]`` in ``[0, 1]`` (32x32 for CIFAR-10); the first layer normalizes with
    ``mean``/``std`` (CIFAR-10 statistics by default). Four stages of two basic blocks (64, 128, 256,
    512 channels; strides 1, 2, 2, 2), global average pooling, a linear classifier. Parameter names
    (``conv1``, ``bn1``, ``layer1.0.conv1``, ``shortcut``, ``linear``) follow the common CIFAR
    ResNet code, so such checkpoints (``net`` with a ``module.`` prefix) load.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
    ):
        super().__init__()
        self.normalize = Normalize(mean, std)
        if len(mean) != in_channels:
            raise ValueError(f"mean/std must have in_channels = {in_channels} entries, got {len(mean)}")
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        planes, layers = 64, []
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(_BasicBlock(planes, width, stride), _BasicBlock(width, width, 1)))
            planes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, C, H, W]`` in [0, 1]."""
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class _Threshold(torch.autograd.Function):
    # Forward: 1[x > t]. Backward: the step's true derivative (zero) or, straight-through, the identity.
    @staticmethod
    def forward(ctx, x, threshold: float, straight_through: bool):
        ctx.straight_through = straight_through
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return (grad if ctx.straight_through else torch.zeros_like(grad)), None, None


class BinarizedInput(nn.Module):
    """Input-binarization defense: ``model(1[x > threshold])`` (Wong et al.'s baseline, threshold 0.5).

    The threshold has zero derivative almost everywhere, so the input gradient is exactly zero: the
    gradient-masking check must flag it (default ``straight_through=False``). With
    ``straight_through=True`` the backward pass treats the threshold as the identity (BPDA, Athalye et
    al. 2018), which is how attacks should see this defense. The forward pass is the same either way.

    Attributes:
        model: the wrapped classifier (its state dict keys get a ``model.`` prefix here).

    """

    def __init__(self, model: nn.Module, threshold: float = 0.5, straight_through: bool = False):
        super().__init__()
        if not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
            raise ValueError(f"threshold must be a float in [0, 1], got {threshold!r}")
        self.model = model
        self.threshold = float(threshold)
        self.straight_through = bool(straight_through)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped model on ``1[x > threshold]`` (``x``: ``[B, C, H, W]`` in [0, 1])."""
        return self.model(_Threshold.apply(x, self.threshold, self.straight_through))

    def extra_repr(self) -> str:
        """Show the threshold and the backward mode in ``repr``."""
        return f"threshold={self.threshold}, straight_through={self.straight_through}"


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    binarize: bool = False,
    straight_through: bool = False,
    seed: int | None = None,
) -> nn.Module:
    """Build a freshly initialised model by name.

    Args:
        name: ``"mnist_convnet"`` (``[B, 1, 28, 28]``), ``"resnet18"`` (CIFAR, ``[B, 3, 32, 32]``) or
            ``"tiny"`` (any size; for tests).
        num_classes: number of logits.
        in_channels: input channels (default 1 for mnist_convnet and tiny, 3 for resnet18; the MNIST
            architecture only accepts 1).
        binarize: wrap in :class:`BinarizedInput` (threshold 0.5).
        straight_through: with ``binarize``, a straight-through backward pass (BPDA).
        seed: if given, the initial weights are drawn from ``torch.manual_seed(seed)`` without
            changing the global random state.

    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {MODELS}, got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if in_channels is not None and (
        isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1
    ):
        raise ValueError(f"in_channels must be a positive int or None, got {in_channels!r}")
    if name == "mnist_convnet" and in_channels not in (None, 1):
        raise ValueError(
            f"in_channels must be 1 for 'mnist_convnet' (inputs [B, 1, 28, 28]), got {in_channels}"
        )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if name == "mnist_convnet":
            model = mnist_convnet(num_classes)
        elif name == "resnet18":
            c = 3 if in_channels is None else in_channels
            if c == 3:
                model = ResNet18(num_classes)
            else:  # no dataset statistics for other channel counts: identity normalization
                model = ResNet18(num_classes, c, (0.0,) * c, (1.0,) * c)
        else:
            model = tiny_convnet(1 if in_channels is None else in_channels, num_classes)
    return BinarizedInput(model, 0.5, straight_through) if binarize else model


# ---------------------------------------------------------------------------- checkpoint formats


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
    """Load a checkpoint file (any format of :func:`extract_state_dict`) into ``model``; returns it.

    Read with ``weights_only=True`` on CPU; ``ValueError`` if it does not fit (see
    :func:`load_state_dict_checked`), ``FileNotFoundError`` if ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = extract_state_dict(checkpoint)
    if isinstance(model, BinarizedInput) and not any(k.startswith("model.") for k in state):
        # Checkpoints of the binarization baseline hold the bare network (the threshold has no weights).
        load_state_dict_checked(model.model, state)
        return model
    return load_state_dict_checked(model, state)


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
    return Path(__file__).resolve().parents[1].parent / "shared"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model``; return its ``meta`` dict.

    ``ValueError`` if the file is not such a checkpoint or does not fit ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
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
