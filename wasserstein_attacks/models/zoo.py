"""The model zoo: published checkpoints by name, fetched once, checked, cached (like RobustBench's).

``load_model("mnist_adv_training")`` returns Wong, Schmidt & Kolter (2019)'s Wasserstein
adversarially trained MNIST model, on CPU, in eval mode. The checkpoint file is taken from the first
of these places that has it:

1. ``source=``: a local file, a folder holding the file, or a ``file://`` URL (read in place);
2. the cache: ``cache_dir=``, default ``$WATTACK_CACHE/models`` or ``~/.cache/wasserstein_attacks/models``;
3. ``$WATTACK_ZOO_DIR``: a folder holding the files (an offline mirror, read in place);
4. the authors' public repository: downloaded once into the cache.

Every file's sha256 is compared with the registry's before it is loaded, and it is loaded with
``weights_only=True``. The checkpoints carry no license statement, so the project does not ship them:
it downloads them from where their authors publish them.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import warnings
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlparse

from torch import nn

from .._util import atomic_write, check_bool, check_choice, default_cache_dir, sha256_file
from .architectures import build_model
from .checkpoints import load_weights

__all__ = [
    "ZooEntry",
    "ZOO",
    "default_cache_dir",
    "list_models",
    "model_path",
    "load_model",
    "load_reference_model",
]


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint: what it is, where it is published and how to recognise the file.

    Attributes:
        name: the zoo name, also the Hydra config ``model=<name>``.
        architecture: the ``build_model`` name the weights fit.
        file: the checkpoint's file name (in the cache, in ``$WATTACK_ZOO_DIR``, at the URL).
        sha256: hex sha256 of the published file.
        url: where the authors publish it (a pinned commit, so the bytes cannot change).
        paper: the paper that trained it.
        description: what it is, with the clean accuracy its authors report.
        binarize: the model thresholds its input at 0.5 (``BinarizedInput``).

    """

    name: str
    architecture: str
    file: str
    sha256: str
    url: str
    paper: str
    description: str
    binarize: bool = False


_WONG_REPO = "https://github.com/locuslab/projected_sinkhorn/raw/3bd1818/checkpoints/"
_WONG_2019 = (
    "Wong, Schmidt & Kolter (2019), Wasserstein Adversarial Examples via Projected Sinkhorn Iterations, ICML"
)


def _wong(
    name: str, sha256: str, description: str, paper: str = _WONG_2019, binarize: bool = False
) -> ZooEntry:
    # All four files of the paper's release share one architecture and one folder of the repository.
    file = f"{name}.pth"
    return ZooEntry(name, "mnist_convnet", file, sha256, _WONG_REPO + file, paper, description, binarize)


# Hashes of the files as released by the authors (checked on the developers' offline copies).
ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        _wong(
            "mnist_vanilla",
            "f95e9ca5f79c6f05c4373f9fa18fb89e1606f939a538390822bce391e7c7e60d",
            "MNIST convnet, standard training (clean accuracy 99 %)",
        ),
        _wong(
            "mnist_adv_training",
            "cb1b02fecc0fa07a0b86a22ef87187c1e849ebaa24cd8f8004f039a0f9871f32",
            "MNIST convnet, Wasserstein adversarial training, epoch 16 (clean accuracy 97 %)",
        ),
        _wong(
            "mnist_robust",
            "95014ab0c04c73f48b3be0cb7acc42aff60ce4420c6c43bec25e9a1447279e08",
            "MNIST convnet, provably l_inf-robust at eps 0.1 (clean accuracy 98 %), in Wong et al.'s release",
            paper="Wong & Kolter (2018), Provable Defenses against Adversarial Examples via the Convex Outer "
            "Adversarial Polytope, ICML",
        ),
        _wong(
            "mnist_binarize",
            "a3921ef74e5bcad28e276d2cc00ce5948d4295786aaf6fd7eda81473e81b71ae",
            "MNIST convnet behind an input threshold at 0.5, the binarization baseline (clean accuracy 99 %)",
            binarize=True,
        ),
    )
}

# The names load_reference_model took before the zoo existed.
_SHORT_NAMES = {name.removeprefix("mnist_"): name for name in ZOO}


def list_models() -> dict[str, str]:
    """Return the zoo's names, each with a one-line description (full records: ``ZOO``)."""
    return {name: entry.description for name, entry in ZOO.items()}


# ---------------------------------------------------------------------------- finding the file


def _source_path(source: str | Path, entry: ZooEntry) -> Path:
    text = str(source)
    if text.startswith("file:"):
        path = Path(urllib.request.url2pathname(urlparse(text).path))
    elif "://" in text:
        raise ValueError(f"source must be a file, a folder or a file:// URL, got {text!r}")
    else:
        path = Path(text).expanduser()
    if path.is_dir():
        path = path / entry.file
    if not path.is_file():
        raise FileNotFoundError(f"source {text} holds no {entry.file} (give the file or its folder)")
    return path


def _check_hash(path: Path, entry: ZooEntry, origin: str) -> Path:
    got = sha256_file(path)
    if got != entry.sha256:
        raise ValueError(
            f"{origin} {path} has sha256 {got}, expected {entry.sha256}: not the published {entry.file}"
        )
    return path


def _fallbacks(entry: ZooEntry) -> str:
    zoo = os.environ.get("WATTACK_ZOO_DIR")
    lacking = f" ($WATTACK_ZOO_DIR={zoo} lacks it)" if zoo else ""
    return (
        f"pass source= (the file, a folder holding {entry.file}, or a file:// URL) or set $WATTACK_ZOO_DIR "
        f"to a folder holding it{lacking}"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    text = " ".join(str(getattr(exc, "reason", exc)).split())
    return text or type(exc).__name__


def _download(entry: ZooEntry, dest: Path) -> Path:
    """Fetch ``entry.url`` into ``dest`` atomically, keeping it only if its sha256 matches."""
    try:
        response = urllib.request.urlopen(entry.url, timeout=60)
    except (OSError, ValueError, HTTPException) as exc:
        raise FileNotFoundError(
            f"cannot download {entry.name} from {entry.url} ({_reason(exc)}): {_fallbacks(entry)}"
        ) from None

    def write(f) -> None:
        digest = hashlib.sha256()
        while True:
            try:
                block = response.read(1 << 20)
            except (OSError, HTTPException) as exc:
                raise FileNotFoundError(
                    f"download of {entry.name} from {entry.url} broke off ({_reason(exc)}): "
                    f"{_fallbacks(entry)}"
                ) from None
            if not block:
                break
            digest.update(block)
            f.write(block)
        if digest.hexdigest() != entry.sha256:
            raise ValueError(
                f"{entry.url} served a file with sha256 {digest.hexdigest()}, expected {entry.sha256} "
                f"(not kept): {_fallbacks(entry)}"
            )

    with response:
        # atomic_write removes its temporary file on any error: a failed download leaves nothing behind.
        return atomic_write(dest, write)


def model_path(
    name: str, *, cache_dir: str | Path | None = None, source: str | Path | None = None, download: bool = True
) -> Path:
    """Return the path of zoo checkpoint ``name``, checked against its sha256, downloaded if needed.

    Looks in ``source``, then the cache, then ``$WATTACK_ZOO_DIR``, then downloads into the cache (see
    the module docstring). A cached file with the wrong hash is fetched again (with a warning); a wrong
    hash anywhere else is a ``ValueError``. ``FileNotFoundError`` when the file is nowhere to be found
    (offline, or ``download=False`` and no local copy).
    """
    entry = ZOO[check_choice(name, "name", tuple(ZOO))]
    check_bool(download, "download")
    if source is not None:
        return _check_hash(_source_path(source, entry), entry, "source")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "models"
    cached = cache / entry.file
    if cached.is_file():
        if sha256_file(cached) == entry.sha256:
            return cached
        warnings.warn(
            f"cached {cached} is not the published {entry.file} (sha256 differs); fetching it again",
            stacklevel=2,
        )
    zoo = os.environ.get("WATTACK_ZOO_DIR")
    if zoo and (Path(zoo).expanduser() / entry.file).is_file():
        return _check_hash(Path(zoo).expanduser() / entry.file, entry, "$WATTACK_ZOO_DIR file")
    if not download:
        raise FileNotFoundError(
            f"{entry.file} is not in the cache {cache} and download=False: {_fallbacks(entry)}"
        )
    return _download(entry, cached)


# ---------------------------------------------------------------------------- loading


def load_model(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    source: str | Path | None = None,
    straight_through: bool = False,
) -> nn.Module:
    """Zoo model ``name`` with its published weights, on CPU, in eval mode.

    Args:
        name: one of ``list_models`` (``"mnist_vanilla"``, ``"mnist_adv_training"``,
            ``"mnist_robust"``, ``"mnist_binarize"``).
        cache_dir: download cache (default ``$WATTACK_CACHE/models`` or
            ``~/.cache/wasserstein_attacks/models``).
        source: a local copy instead of the cache and the network: the file, a folder holding it, or
            a ``file://`` URL.
        straight_through: for a model with a binarized input (``mnist_binarize``), make the
            threshold's backward pass the identity (BPDA); the forward pass is unchanged. Without it
            the input gradient is exactly zero, which the gradient-masking check must flag.

    Returns:
        An ``nn.Module`` mapping ``[B, 1, 28, 28]`` in [0, 1] to logits ``[B, 10]``; its
        ``checkpoint_meta`` names the zoo entry, file, sha256 and URL.

    """
    entry = ZOO[check_choice(name, "name", tuple(ZOO))]
    if check_bool(straight_through, "straight_through") and not entry.binarize:
        raise ValueError(f"straight_through=True needs a model with a binarized input, and {name} has none")
    path = model_path(name, cache_dir=cache_dir, source=source)
    # Seeded build: loading a checkpoint must not consume the caller's global random state.
    model = build_model(
        entry.architecture, binarize=entry.binarize, straight_through=straight_through, seed=0
    )
    load_weights(model, path)
    model.checkpoint_meta = {"zoo": entry.name, "file": entry.file, "sha256": entry.sha256, "url": entry.url}
    return model.eval()


def load_reference_model(name: str, **kwargs) -> nn.Module:
    """Return ``load_model`` ``(name, **kwargs)``; also takes the short names (``adv_training``, ...)."""
    full = _SHORT_NAMES.get(name, name) if isinstance(name, str) else name
    return load_model(full, **kwargs)
