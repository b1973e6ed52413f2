"""``wattack-train defense=adversarial``: build the training run from its config and run it.

The attack (or suite) and the threat model are built by the caller (``cli``, through ``bench``), so this
layer only builds what belongs to it: the training set, the model (fresh, or fine-tuned from the standard
MNIST model or a checkpoint) and the trainer. Works alike in one process and under ``torchrun``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..attacks import Attack, Suite
from ..data import ImageDataset
from ..models import build_model, load_weights
from ..threat import WassersteinBall
from .adversarial import CHECKPOINT_FILE, EXPORT_FILE, AdversarialTraining
from .distributed import dist_info, init_from_env

__all__ = ["initial_model", "run_adversarial_training"]


def initial_model(model: dict, init: str | None, standard: dict | None = None) -> nn.Module:
    """Build the model to train: ``build_model(**model)``, then load ``init`` into it.

    Args:
        model: keyword arguments of ``build_model`` (``name``, ``num_classes``, ``seed``...).
        init: ``None`` (fresh weights), ``"standard"`` (the weights of ``standard_mnist_model(**standard)``,
            trained once and cached) or a file: a ``save_checkpoint`` checkpoint or another state-dict
            format (``load_weights``), read with ``weights_only=True``.
        standard: keyword arguments of ``standard_mnist_model`` for ``init="standard"``.

    """
    if not isinstance(model, dict) or "name" not in model:
        raise ValueError(f"defense.model must hold build_model's arguments (name, ...), got {model!r}")
    net = build_model(**model)
    if init is None:
        return net
    if init == "standard":
        from .training import standard_mnist_model

        net.load_state_dict(standard_mnist_model(**(standard or {})).state_dict())
        return net
    path = Path(str(init)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"defense.init: file {path} not found (or use null / standard)")
    return load_weights(net, path)


def run_adversarial_training(
    defense: dict,
    *,
    dataset: ImageDataset,
    inner: Attack | Suite,
    threat: WassersteinBall,
    out_dir: str | Path,
    logger: dict | None = None,
    standard: dict | None = None,
) -> dict:
    """Train as ``defense`` (the ``defense=adversarial`` config as a dict) says; return the trainer's log.

    Joins the ``torchrun`` process group when the environment describes one; rank 0 prints a summary.
    """
    init_from_env()
    net = initial_model(defense.get("model"), defense.get("init"), standard)
    trainer = AdversarialTraining(attack=inner, threat=threat, **defense.get("training", {}))
    meta = {"model": dict(defense["model"]), "init": defense.get("init")}
    log = trainer(
        net,
        dataset,
        out_dir,
        resume=bool(defense.get("resume", True)),
        logger=logger,
        device=defense.get("device", "auto"),
        meta=meta,
    )
    if dist_info(defense.get("device", "auto")).main and log["epochs"]:
        last, out = log["epochs"][-1], Path(out_dir)
        adv = last["adversarial_accuracy"]
        print(
            f"adversarial training done: epoch {last['epoch']}, eps {last['eps']:.4g}, train clean accuracy "
            f"{last['clean_accuracy']:.4f}, adversarial {'-' if adv is None else f'{adv:.4f}'}\n"
            f"outputs in {out}: {CHECKPOINT_FILE}, {EXPORT_FILE}, train_log.json, curves.png",
            flush=True,
        )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return log
