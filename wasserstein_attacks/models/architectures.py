"""Architectures: the MNIST convnet, a CIFAR ResNet-18, a tiny test net, binarization, a mass prior.

Every model takes images in pixel space, ``[B, C, H, W]`` in ``[0, 1]``, and returns logits
``[B, num_classes]``; any input normalization is a layer inside the model, so attacks and the
threat model never see normalized images.

"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "mnist_convnet",
    "tiny_convnet",
    "ResNet18",
    "Normalize",
    "BinarizedInput",
    "MassPrior",
    "build_model",
    "MODELS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
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


class MassPrior(nn.Module):
    """``model(x) + log_prior[bin(N(x))]``: the classifier plus a class prior read from the image's mass.

    Every change the W1 threat model allows keeps each channel's mass (up to its float tolerance
    ``mass_tol``), and flow noise keeps it exactly, so ``N(x)`` (the sum over channels, height and width)
    is a feature that neither an attack nor smoothing noise can move. On MNIST, a classifier of the mass
    alone is right on about 23 % of the test images at every radius; a model that adds the prior to its
    logits falls back on it where its own evidence drowns in noise (flow-space smoothing at large
    ``sigma``). The mass is binned at training-set quantiles; ``log_prior`` holds the log class
    frequencies per bin (add-one smoothed). Before ``fit`` (all zeros) the prior adds nothing.

    Args:
        model: the wrapped classifier (its state dict keys get a ``model.`` prefix here).
        num_classes: number of logits of ``model``.
        bins: number of mass bins.

    Attributes:
        edges: ``[bins - 1]`` increasing bin edges, pixel mass (float32 buffer).
        log_prior: ``[bins, num_classes]`` log class frequencies per bin (float32 buffer).

    """

    def __init__(self, model: nn.Module, num_classes: int = 10, bins: int = 20):
        super().__init__()
        for value, what, low in ((num_classes, "num_classes", 2), (bins, "bins", 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{what} must be an int >= {low}, got {value!r}")
        self.model = model
        self.register_buffer("edges", torch.zeros(bins - 1))
        self.register_buffer("log_prior", torch.zeros(bins, num_classes))

    def bin(self, x: torch.Tensor) -> torch.Tensor:
        """Mass bin ``[B]`` (int64) of images ``x [B, C, H, W]``."""
        return torch.bucketize(x.sum((1, 2, 3)), self.edges.to(x.dtype))

    @torch.no_grad()
    def fit(self, images: torch.Tensor, labels: torch.Tensor) -> MassPrior:
        """Set the bins (mass quantiles) and the prior (class frequencies per bin) from a training set.

        Args:
            images: ``[N, C, H, W]`` training images in ``[0, 1]``.
            labels: ``[N]`` int64 class indices in ``[0, num_classes)``.

        Returns ``self``.

        """
        bins, k = self.log_prior.shape
        if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0] or len(labels) == 0:
            raise ValueError(
                f"images must be [N, C, H, W] and labels [N] with N >= 1, got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"labels must lie in [0, {k}), got values in [{labels.min()}, {labels.max()}]")
        mass = images.sum((1, 2, 3)).float().cpu()
        q = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
        self.edges.copy_(torch.quantile(mass.double(), q).float())
        counts = torch.ones(bins, k, dtype=torch.float64)
        counts.index_put_((torch.bucketize(mass, self.edges.cpu()), labels.cpu()),
                          torch.ones(len(labels), dtype=torch.float64), accumulate=True)
        self.log_prior.copy_((counts / counts.sum(1, keepdim=True)).log().float())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of the wrapped model plus the prior of each image's mass bin."""
        return self.model(x) + self.log_prior.to(x.dtype)[self.bin(x)]

    def extra_repr(self) -> str:
        """Show the number of bins in ``repr``."""
        return f"bins={self.log_prior.shape[0]}"


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    binarize: bool = False,
    straight_through: bool = False,
    mass_prior: bool = False,
    seed: int | None = None,
) -> nn.Module:
    """Build a freshly initialised model by name.

    Args:
        name: ``"mnist_convnet"`` (``[B, 1, 28, 28]``), ``"resnet18"`` (CIFAR, ``[B, 3, 32, 32]``) or
            ``"tiny"`` (any size; for tests).
        num_classes: number of logits.
        in_channels: input channels (default 1 for mnist_convnet and tiny, 3 for resnet18; the MNIST
            architecture only accepts 1).
        binarize: wrap in ``BinarizedInput`` (threshold 0.5).
        straight_through: with ``binarize``, a straight-through backward pass (BPDA).
        mass_prior: wrap in ``MassPrior`` (20 bins, unfitted: load its buffers or call ``fit``).
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
    if binarize:
        model = BinarizedInput(model, 0.5, straight_through)
    return MassPrior(model, num_classes) if mass_prior else model
