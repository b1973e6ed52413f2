"""The resumable state of a training run: model, optimiser, scheduler, RNG, position, log so far.

``train_state.pt`` is one ``torch.save`` dict of tensors and plain values (loadable with
``weights_only=True``), written atomically by the main rank. Restoring it and replaying the same data
order gives the same weights as a run that never stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._util import atomic_write
from ..models.checkpoints import safe_load
from .distributed import DistInfo

__all__ = ["N_STATS", "Position", "TrainRun", "STATE_FORMAT"]

STATE_FORMAT = "wasserstein_attacks/train-state-v1"
#: Per-step sums reduced over ranks: loss, examples, clean correct, attacked examples, adversarial correct.
N_STATS = 5


@dataclass
class Position:
    """Where training stands: next ``epoch``, next ``step`` in it, the epoch's sums so far, the log."""

    epoch: int = 0
    step: int = 0
    seconds: float = 0.0
    stats: torch.Tensor = field(default_factory=lambda: torch.zeros(N_STATS, dtype=torch.float64))
    rows: list[dict] = field(default_factory=list)


@dataclass
class TrainRun:
    """What a step updates: ``net``, ``model`` (its DDP wrapper, or ``net``), ``opt``, ``sched``.

    With ``ema_decay`` > 0 also an exponential moving average of ``net``'s state (``ema``, after
    ``ema_updates`` optimiser steps). With instance-adaptive radii, ``adapt``: float64 ``[N]``, each
    training example's fraction of the ramp's radius (the same on every rank).
    """

    net: nn.Module
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | None
    info: DistInfo
    ema_decay: float = 0.0
    ema: dict[str, torch.Tensor] | None = None
    ema_updates: int = 0
    adapt: torch.Tensor | None = None

    def update_ema(self) -> None:
        """Fold ``net``'s state into the average after an optimiser step.

        The decay is ``min(ema_decay, (1 + t) / (10 + t))`` at update t, so the starting weights (for a
        fine-tuning run, another model's) fade within the first steps instead of weighing
        ``ema_decay ** steps``. Non-float buffers are copied.
        """
        if self.ema is None:
            return
        t = self.ema_updates
        d = min(self.ema_decay, (1 + t) / (10 + t))
        with torch.no_grad():
            for k, v in self.net.state_dict().items():
                if v.is_floating_point():
                    self.ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    self.ema[k].copy_(v)
        self.ema_updates += 1

    def final_state(self) -> dict[str, torch.Tensor]:
        """Return the delivered weights (CPU copies): the average with ``ema_decay`` > 0, else ``net``'s."""
        src = self.ema if self.ema is not None else self.net.state_dict()
        return {k: v.detach().cpu().clone() for k, v in src.items()}

    @classmethod
    def start(cls, trainer, net: nn.Module, info: DistInfo, total_steps: int) -> TrainRun:
        """Put ``net`` on the device, build ``trainer``'s optimiser and schedule, wrap in DDP if needed."""
        net.to(info.device)
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        t = trainer
        if t.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        else:
            opt = torch.optim.SGD(
                params, lr=t.lr, momentum=t.momentum, nesterov=t.momentum > 0, weight_decay=t.weight_decay
            )
        sched = None
        if t.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total_steps, 1))
        model = net
        if info.world > 1:
            # DDP broadcasts rank 0's weights now; a resumed state is then loaded identically on every rank.
            ids = [info.device.index] if info.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        ema = {k: v.detach().clone() for k, v in net.state_dict().items()} if t.ema > 0 else None
        return cls(net, model, opt, sched, info, t.ema, ema)

    def save(self, path: Path, config: dict, pos: Position) -> None:
        """Write the state atomically (main rank only)."""
        if not self.info.main:
            return
        state = {
            "format": STATE_FORMAT,
            "config": json.dumps(config, sort_keys=True),
            "epoch": pos.epoch,
            "step": pos.step,
            "seconds": pos.seconds,
            "stats": pos.stats.clone(),
            "rows": json.dumps(pos.rows),
            "model": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            **({"ema": self.final_state(), "ema_updates": self.ema_updates} if self.ema is not None else {}),
            **({"adapt": self.adapt.clone()} if self.adapt is not None else {}),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.info.device)
            if self.info.device.type == "cuda"
            else None,
        }
        atomic_write(path, lambda f: torch.save(state, f))

    def load(self, path: Path, config: dict) -> Position:
        """Restore the state of ``path`` (written with the same ``config``) and return the position."""
        state = safe_load(path)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a training state ({STATE_FORMAT}); remove it or resume=False")
        if state["config"] != json.dumps(config, sort_keys=True):
            raise ValueError(
                f"{path} was written by another config or dataset: use a new run folder or resume=False"
            )
        self.net.load_state_dict(state["model"])
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError(f"{path} holds no weight average: use a new run folder or resume=False")
            for k, v in state["ema"].items():
                self.ema[k].copy_(v)
            self.ema_updates = int(state["ema_updates"])
        if self.adapt is not None:
            adapt = state.get("adapt")
            if not isinstance(adapt, torch.Tensor) or adapt.shape != self.adapt.shape:
                raise ValueError(f"{path} holds no per-example radii: use a new run folder or resume=False")
            self.adapt.copy_(adapt)
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and self.info.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.info.device)
        return Position(
            state["epoch"],
            state["step"],
            state["seconds"],
            state["stats"].double(),
            json.loads(state["rows"]),
        )
