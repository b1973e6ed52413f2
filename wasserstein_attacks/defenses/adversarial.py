"""Adversarial training under the Wasserstein threat model: one loop, any attack or suite inside it.

Outer minimisation (Madry et al. 2018) by SGD/Adam; inner maximisation by any registered attack
(``attacks.get(name)``: the box-aware ``frank_wolfe_box``/``pgd_box`` or the faithful ports of Wong,
Hu and Wu) or a ``Suite`` run at the current radius. Every adversarial example is certified inside the
ball by the attack's common ending, so the model is trained on members of the threat model only.

Per global batch of ``batch_size`` examples (positions ``0..b-1`` after the epoch's shuffle):

1. the first ``round(clean_fraction * b)`` positions stay clean, the others are attacked at the radius
   ``eps_t`` of the ramp (``RadiusRamp``) with the model in eval mode; with ``eps_fractions`` each
   attacked example gets its own radius, ``eps_t`` times one of those fractions, drawn from the seed,
   the epoch and its dataset index (a mix of training radii in every batch, the same in any sharding);
   with ``eps_adapt`` each example keeps its own fraction across epochs (instance-adaptive radii, as
   Balaji et al. 2019): multiplied by ``eps_adapt`` after an attack it resisted, divided by it after one
   that broke it, within ``[eps_adapt_min, 1]``, so each example trains near the edge of its robustness;
2. loss ``"ce"``: cross-entropy at the training input (adversarial or clean) of each example;
   loss ``"trades"`` (Zhang et al. 2019): cross-entropy at the clean image plus ``beta`` times
   ``KL(p(x) || p(x_adv))`` for the attacked examples. The inner attack keeps maximising its own
   loss (``ce``, ``margin`` or ``dlr`` of the true label) rather than the KL: the attacks' contract
   (per-example stopping at the first certified misclassification) is defined by a label, and
   Wong et al. trained with the attack unchanged too. This is the documented choice, not TRADES' exact
   inner problem; loss ``"mart"`` (Wang et al. 2020, misclassification-aware): the boosted
   cross-entropy ``-log p_y(x') - log(1 - max_{k != y} p_k(x'))`` at the training input ``x'``
   (adversarial or clean) plus ``beta`` times ``KL(p(x) || p(x_adv)) * (1 - p_y(x))`` for the attacked
   examples, so the examples the model misclassifies clean weigh most in the consistency term;
3. the summed loss divided by ``b`` is minimised (so a data-parallel run, each rank holding every
   ``world``-th position, gives the one-process gradient); with ``awp`` (adversarial weight
   perturbation, Wu, Xia & Wang 2020) its gradient is taken at weights moved uphill first: each weight
   matrix or kernel ``w`` by ``awp * ||w|| * g / ||g||``, ``g`` the same loss's gradient at ``w`` (biases
   stay), the move undone before the optimiser's step. It flattens the loss around the weights, against
   robust overfitting.

Resumable: ``train_state.pt`` (model, optimiser, scheduler, RNG state, epoch and step, the log so far)
is written atomically every ``checkpoint_every`` steps and after every epoch; data order and attack
randomness derive from the seed, the epoch and the dataset index, so a run killed and started again ends
with the same weights, bit for bit on CPU, as one that never stopped.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from .._util import atomic_write, check_bool, check_choice, check_float, check_int, torch_threads
from ..attacks import Attack, Suite
from ..data import ImageDataset
from ..models import save_checkpoint
from ..threat import WassersteinBall
from .distributed import all_sum, dist_info, shard_positions
from .runlog import TrainingLog
from .schedules import RadiusRamp
from .train_state import N_STATS, Position, TrainRun
from .training import deterministic

__all__ = ["AdversarialTraining", "LOSSES", "STATE_FILE", "CHECKPOINT_FILE", "EXPORT_FILE"]

#: Outer losses: ``ce`` (Madry et al.), ``trades`` (Zhang et al. 2019), ``mart`` (Wang et al. 2020).
LOSSES = ("ce", "trades", "mart")
STATE_FILE = "train_state.pt"
CHECKPOINT_FILE = "checkpoint.pt"
EXPORT_FILE = "model_state_dict.pt"




def _derive_seed(*parts) -> int:
    """Return a 62-bit seed from the parts (stable across processes, unlike ``hash``)."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 2


class AdversarialTraining:
    """Adversarial training with a Wasserstein attack (or suite) as the inner maximisation.

    Construct with the hyperparameters, then call on a model and a training set:
    ``AdversarialTraining(attack=get("frank_wolfe_box", steps=10), threat=ball, eps=0.1)(model, data, out)``.
    Defaults follow Wong et al.'s MNIST recipe where they give one (SGD, lr 0.1, momentum 0.9,
    weight decay 5e-4, batch 128, a growing radius).

    Args:
        attack: an ``Attack`` (its own ``steps``/``loss``/stopping apply: attack steps per batch) or a
            ``Suite`` (run at the single radius ``eps_t``; examples it does not break stay clean).
        threat: the ball's convention (``p``, window, box, tolerances); its ``eps`` is ignored.
        eps: target radius, units of eps (fraction of the image's mass x pixel distance^p), > 0.
        eps_start: radius at the first step, in ``(0, eps]``.
        ramp: ``"geometric"``, ``"linear"`` or ``"none"`` (see ``RadiusRamp``).
        ramp_epochs: epochs over which the radius grows to ``eps`` (fractional allowed; per step).
        loss: ``"ce"``, ``"trades"`` or ``"mart"`` (see the module docstring).
        beta: weight of the KL term of ``"trades"`` and ``"mart"`` (Zhang et al.'s default 6).
        clean_fraction: share of each batch trained on clean images, in ``[0, 1]``.
        epochs: passes over the training set (each shuffled from ``seed`` and the epoch).
        batch_size: global batch (all ranks together).
        lr: learning rate.
        optimizer: ``"sgd"`` (Nesterov when momentum > 0) or ``"adam"``.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        schedule: ``"cosine"`` (per step, to 0 at the end) or ``"constant"``.
        seed: seeds the shuffles, the attacks (per example and epoch) and the global RNG of the run.
        checkpoint_every: also save the resumable state every this many steps (0: after epochs only).
        eps_fractions: ``None`` (every attacked example at ``eps_t``) or fractions in ``(0, 1]``: each
            attacked example at ``eps_t`` times one of them, drawn uniformly per example and epoch
            (e.g. ``[0.6, 1.0]`` with ``eps`` 0.5 trains at 0.3 and 0.5 at once). Attacks only (a suite
            runs at one radius).
        eps_adapt: ``None`` or a factor > 1: instance-adaptive radii (see the module docstring). Every
            example starts at fraction 1 (the ramp's ``eps_t``); its fraction is part of the resumable
            state and is updated identically on every rank. Attacks only; not with ``eps_fractions``.
        eps_adapt_min: the smallest fraction with ``eps_adapt``, in ``(0, 1]``.
        awp: relative size of the adversarial weight perturbation, in ``[0, 1)`` (gamma of
            Wu, Xia & Wang 2020, e.g. 0.005); 0 (default): none. One extra forward and backward pass per step.
        ema: decay of an exponential moving average of the weights, in ``[0, 1)``; 0 (default) keeps
            none. With ``ema`` > 0 the checkpoints, the exported state dict and the model left in place
            hold the average (the attacks and the logged training accuracies use the live weights).
        num_threads: CPU threads (restored afterwards); ``None`` keeps the setting. Bitwise
            reproducibility needs the same count.
        progress: tqdm bar on the main rank.

    """

    def __init__(
        self,
        *,
        attack: Attack | Suite,
        threat: WassersteinBall,
        eps: float,
        eps_start: float = 0.01,
        ramp: str = "geometric",
        ramp_epochs: float = 1.0,
        loss: str = "ce",
        beta: float = 6.0,
        clean_fraction: float = 0.0,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 0.1,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: str = "cosine",
        seed: int = 0,
        checkpoint_every: int = 0,
        eps_fractions: list[float] | None = None,
        eps_adapt: float | None = None,
        eps_adapt_min: float = 0.2,
        awp: float = 0.0,
        ema: float = 0.0,
        num_threads: int | None = 1,
        progress: bool = True,
    ):
        if not isinstance(attack, (Attack, Suite)):
            raise ValueError(f"attack must be an Attack or a Suite, got {type(attack).__name__}")
        if not isinstance(threat, WassersteinBall) or threat.kernel_size is None:
            raise ValueError("threat must be a WassersteinBall with a local window (kernel_size not None)")
        self.attack, self.threat = attack, threat
        self.ramp = RadiusRamp(eps, eps_start if ramp != "none" else eps, ramp_epochs, ramp)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.beta = check_float(beta, "beta", allow_zero=True)
        self.clean_fraction = check_float(clean_fraction, "clean_fraction", allow_zero=True)
        if self.clean_fraction > 1:
            raise ValueError(f"clean_fraction must be in [0, 1], got {clean_fraction!r}")
        self.epochs = check_int(epochs, "epochs", low=0)
        self.batch_size = check_int(batch_size, "batch_size")
        self.lr = check_float(lr, "lr")
        self.optimizer = check_choice(optimizer, "optimizer", ("sgd", "adam"))
        self.momentum = check_float(momentum, "momentum", allow_zero=True)
        self.weight_decay = check_float(weight_decay, "weight_decay", allow_zero=True)
        self.schedule = check_choice(schedule, "schedule", ("cosine", "constant"))
        self.seed = check_int(seed, "seed", low=0)
        self.checkpoint_every = check_int(checkpoint_every, "checkpoint_every", low=0)
        self.eps_fractions = _fractions(eps_fractions)
        self.eps_adapt = None if eps_adapt is None else check_float(eps_adapt, "eps_adapt")
        if self.eps_adapt is not None and self.eps_adapt <= 1:
            raise ValueError(f"eps_adapt must be null or a factor > 1, got {eps_adapt!r}")
        self.eps_adapt_min = check_float(eps_adapt_min, "eps_adapt_min")
        if self.eps_adapt_min > 1:
            raise ValueError(f"eps_adapt_min must be in (0, 1], got {eps_adapt_min!r}")
        for name in ("eps_fractions", "eps_adapt"):  # per-example radii: a suite runs at one radius
            if getattr(self, name) is not None and isinstance(attack, Suite):
                raise ValueError(f"{name} needs an attack as the inner maximisation (a suite runs at one "
                                 "radius); use attack=<name>")
        if self.eps_adapt is not None and self.eps_fractions is not None:
            raise ValueError("eps_adapt and eps_fractions both set the training radii: give one of them")
        self.awp = check_float(awp, "awp", allow_zero=True)
        if self.awp >= 1:
            raise ValueError(f"awp must be in [0, 1) (the weight perturbation's size relative to the "
                             f"weights), got {awp!r}")
        self.ema = check_float(ema, "ema", allow_zero=True)
        if self.ema >= 1:
            raise ValueError(f"ema must be in [0, 1) (the weight average's decay per step), got {ema!r}")
        self.num_threads = None if num_threads is None else check_int(num_threads, "num_threads")
        self.progress = check_bool(progress, "progress")

    # ------------------------------------------------------------------------------ description

    def describe(self) -> dict:
        """JSON-ready hyperparameters (recorded in the log and the checkpoint; they key a resume)."""
        inner = self.attack
        if isinstance(inner, Suite):
            attack = {"suite": inner.name, "version": inner.version, "attacks": list(inner.labels)}
        else:
            attack = {
                "attack": inner.name,
                **{
                    k: v
                    for k, v in sorted(vars(inner).items())
                    if isinstance(v, (int, float, str, bool, type(None)))
                },
            }
        names = (
            "loss",
            "beta",
            "clean_fraction",
            "epochs",
            "batch_size",
            "lr",
            "optimizer",
            "momentum",
            "weight_decay",
            "schedule",
            "seed",
        )
        return {
            "inner": attack,
            "threat": {k: v for k, v in self.threat.describe().items() if k != "eps"},
            "eps": self.ramp.eps,
            "eps_start": self.ramp.start,
            "ramp": self.ramp.kind,
            "ramp_epochs": self.ramp.epochs,
            **{n: getattr(self, n) for n in names},
            # only when used: states and logs written before the option existed keep their config
            **({"ema": self.ema} if self.ema > 0 else {}),
            **({"awp": self.awp} if self.awp > 0 else {}),
            **({"eps_fractions": list(self.eps_fractions)} if self.eps_fractions is not None else {}),
            **(
                {"eps_adapt": self.eps_adapt, "eps_adapt_min": self.eps_adapt_min}
                if self.eps_adapt is not None
                else {}
            ),
        }

    # ------------------------------------------------------------------------------ one step

    def _radii(
        self, idx: torch.Tensor, eps: float, seed: int, adapt: torch.Tensor | None = None
    ) -> float | torch.Tensor:
        """Radius of the examples at dataset indices ``idx [n]``: ``eps``, or float64 ``[n]``.

        ``adapt``: the run's per-example fractions ``[N]`` (with ``eps_adapt``).
        """
        if adapt is not None:
            return eps * adapt[idx]
        f = self.eps_fractions
        if f is None:
            return eps
        return torch.tensor([eps * f[_derive_seed(seed, "radius", int(i)) % len(f)] for i in idx.tolist()],
                            dtype=torch.float64)

    def _adversarial(
        self, net: nn.Module, x, y, idx, eps: float, seed: int, adapt: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return certified adversarial images ``[n, C, H, W]`` of ``x`` and bool ``[n]``: broken.

        The model runs in eval mode. With ``eps_fractions`` or ``adapt`` each example is attacked in its
        own ball (``_radii``).
        """
        ball = self.threat.with_eps(self._radii(idx, eps, seed, adapt))
        was = net.training
        net.eval()
        try:
            if isinstance(self.attack, Suite):
                res = self.attack.run(net, x, y, [eps], threat=ball, seed=seed, indices=idx, progress=False)
                return res.adversarial.to(x.device, x.dtype), ~res.robust(eps).to(x.device)
            out = self.attack(net, x, y, threat=ball, seed=seed, indices=idx)
            return out.adversarial.detach(), out.success
        finally:
            net.train(was)

    def _objective(self, model: nn.Module, x, x_adv, y, adv) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the summed local loss and the adversarial logits ``[n_adv, classes]`` (for accuracy).

        One forward pass per step (clean and adversarial images concatenated for TRADES and MART), as DDP
        wants.
        """
        n = x.shape[0]
        if self.loss == "trades":
            logits = model(torch.cat([x, x_adv[adv]]))
            clean, adv_logits = logits[:n], logits[n:]
            kl = F.kl_div(
                F.log_softmax(adv_logits, 1), F.log_softmax(clean[adv], 1), reduction="sum", log_target=True
            )
            return F.cross_entropy(clean, y, reduction="sum") + self.beta * kl, adv_logits.detach()
        inputs_img = torch.where(adv[:, None, None, None], x_adv, x)  # what each example trains on
        if self.loss == "ce":
            logits = model(inputs_img)
            return F.cross_entropy(logits, y, reduction="sum"), logits[adv].detach()
        logits = model(torch.cat([inputs_img, x[adv]]))
        inputs, clean = logits[:n], logits[n:]
        log_p = F.log_softmax(inputs, 1)
        kl = F.kl_div(log_p[adv], F.log_softmax(clean, 1), reduction="none", log_target=True).sum(1)
        weight = 1 - F.softmax(clean, 1).gather(1, y[adv, None]).squeeze(1)
        return _boosted_ce(inputs, y).sum() + self.beta * (kl * weight).sum(), inputs[adv].detach()

    def _step(self, run: TrainRun, images, labels, indices, eps: float, attack_seed: int) -> torch.Tensor:
        """One optimiser step on this rank's share of a global batch; returns the step's summed stats."""
        b = labels.shape[0]
        pos = shard_positions(b, run.info.rank, run.info.world)
        dev = run.info.device
        x, y, idx = images[pos].to(dev), labels[pos].to(dev), indices[pos]
        pos = pos.to(dev)
        adv = pos >= round(self.clean_fraction * b)
        net = run.net
        net.eval()
        with torch.no_grad():
            clean_ok = (net(x).argmax(1) == y).sum() if x.shape[0] else torch.zeros((), device=dev)
        x_adv = x.clone()
        # +1: resisted, -1: broken, 0: not attacked; per global-batch position, summed over ranks
        outcome = torch.zeros(b, dtype=torch.float64, device=dev)
        if bool(adv.any()):
            x_adv[adv], broken = self._adversarial(
                net, x[adv], y[adv], idx[adv.cpu()], eps, attack_seed, run.adapt
            )
            outcome[pos[adv]] = 1.0 - 2.0 * broken.to(dev, torch.float64)
        if run.adapt is not None:
            self._adapt(run.adapt, indices, all_sum(outcome).cpu())
        net.train()
        total, adv_logits = self._objective(run.model, x, x_adv, y, adv)
        run.opt.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks: scaling by world / b makes the result sum(loss) / b overall.
        scale = run.info.world / b
        (total * scale).backward()
        if self.awp > 0:  # the log keeps the loss and accuracy at the weights themselves
            moves = self._perturb_weights(net)
            run.opt.zero_grad(set_to_none=True)
            (self._objective(run.model, x, x_adv, y, adv)[0] * scale).backward()
            with torch.no_grad():
                for p, v in moves:
                    p.sub_(v)
        run.opt.step()
        if run.sched is not None:
            run.sched.step()
        run.update_ema()
        adv_ok = (adv_logits.argmax(1) == y[adv]).sum()
        stats = torch.stack(
            [
                total.detach(),
                torch.tensor(float(pos.numel()), device=dev),
                clean_ok.to(total.dtype),
                adv.sum().to(total.dtype),
                adv_ok.to(total.dtype),
            ]
        ).double()
        return all_sum(stats).cpu()

    def _perturb_weights(self, net: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Move ``net``'s weights uphill along their gradients (AWP); return ``(parameter, move)`` pairs.

        Each parameter of 2 or more dimensions (weight matrices, kernels) moves by
        ``awp * ||w|| * g / ||g||`` with ``g`` its current ``.grad`` (the step's loss, summed over ranks
        by DDP, so every rank moves alike); 1-d parameters (biases, norms) and ones without a gradient
        stay. The caller subtracts the moves again.
        """
        moves = []
        with torch.no_grad():
            for p in net.parameters():
                if p.grad is None or p.dim() <= 1:
                    continue
                # g = 0 gives v = 0: the clamp only avoids 0 / 0 without a host sync
                v = p.grad * (self.awp * p.norm() / p.grad.norm().clamp_min(torch.finfo(p.dtype).tiny))
                p.add_(v)
                moves.append((p, v))
        return moves

    def _adapt(self, fractions: torch.Tensor, indices: torch.Tensor, outcome: torch.Tensor) -> None:
        """Update the per-example ``fractions [N]`` in place from one global batch's ``outcome [b]``.

        ``indices [b]``: the batch's dataset indices; ``outcome``: +1 resisted, -1 broken, 0 clean.
        """
        moved = outcome != 0
        idx = indices[moved]
        fractions[idx] = (fractions[idx] * self.eps_adapt ** outcome[moved]).clamp(self.eps_adapt_min, 1.0)

    # ------------------------------------------------------------------------------ the loop

    def __call__(
        self,
        model: nn.Module,
        dataset: ImageDataset,
        out_dir: str | Path,
        *,
        resume: bool = True,
        logger: dict | None = None,
        device: str | torch.device | None = "auto",
        meta: dict | None = None,
    ) -> dict:
        """Train ``model`` in place on ``dataset``; files go to ``out_dir``; returns the log.

        With ``ema`` the model ends with the weight average (the weights delivered).

        Args:
            model: maps ``[B, C, H, W]`` in [0, 1] to logits ``[B, classes]``; left in eval mode on its
                device. In a data-parallel run (an initialised ``torch.distributed`` group, e.g. under
                ``torchrun``) every rank passes the same model and data; rank 0 writes the files.
            dataset: training images float32 ``[N, C, H, W]`` and labels.
            out_dir: run folder: ``train_state.pt`` (resume), ``checkpoint.pt`` (``save_checkpoint``
                format, after each epoch), ``model_state_dict.pt`` (final plain state dict),
                ``train_log.json``, ``curves.png``.
            resume: continue from ``out_dir/train_state.pt`` when present (it must come from the same
                hyperparameters and data); False starts over.
            logger: ``None`` or the wandb logger config (``TrainingLog``).
            device: ``"auto"`` (``cuda:$LOCAL_RANK`` if available), ``"cpu"``, ``"cuda:1"``...
            meta: extra JSON-ready values recorded in the log and the checkpoint (e.g. the model's name).

        Returns:
            ``{"config": ..., "epochs": [per-epoch rows: epoch, eps, loss, clean_accuracy,
            adversarial_accuracy, lr, seconds, steps]}``.

        """
        if not isinstance(dataset, ImageDataset) or len(dataset) == 0:
            raise ValueError("dataset must be a non-empty ImageDataset")
        out = Path(out_dir)
        info = dist_info(device)
        config = {
            **self.describe(),
            "dataset": dataset.name,
            "n_train": len(dataset),
            "image_shape": list(dataset.shape),
            **(meta or {}),
        }
        run = TrainRun.start(self, model, info, self.epochs * math.ceil(len(dataset) / self.batch_size))
        if self.eps_adapt is not None:
            run.adapt = torch.ones(len(dataset), dtype=torch.float64)
        log = TrainingLog(
            out,
            {**config, "world_size": info.world, "package_version": __version__},
            logger,
            enabled=info.main,
        )
        threads = self.num_threads or torch.get_num_threads()
        with (
            torch.random.fork_rng(devices=[info.device] if info.device.type == "cuda" else []),
            deterministic(),
            torch_threads(threads),
        ):
            torch.manual_seed(self.seed)
            pos = Position()
            if resume and (out / STATE_FILE).is_file():
                pos = run.load(out / STATE_FILE, config)
            rows = self._loop(run, dataset, out, config, pos, log)
        if info.main:
            self._export(run, out, config, rows)
        if run.ema is not None:  # the model left in place is the one delivered
            model.load_state_dict(run.ema)
        log.close({"final": rows[-1]} if rows else None)
        model.eval()
        return {"config": config, "epochs": rows}

    def _loop(
        self, run: TrainRun, dataset: ImageDataset, out: Path, config: dict, pos: Position, log: TrainingLog
    ) -> list[dict]:
        steps = math.ceil(len(dataset) / self.batch_size)
        bar = tqdm(
            total=self.epochs * steps,
            initial=pos.epoch * steps + pos.step,
            unit="step",
            desc=f"adv-train {dataset.name}",
            disable=not (self.progress and run.info.main),
        )
        logged = len(pos.rows)
        with bar:
            for epoch in range(pos.epoch, self.epochs):
                order = _derive_seed(self.seed, "shuffle", epoch)
                attack_seed = _derive_seed(self.seed, "attack", epoch)
                started = time.perf_counter() - pos.seconds
                batches = dataset.batches(self.batch_size, shuffle=True, seed=order)
                for k, batch in enumerate(itertools.islice(batches, pos.step, None), start=pos.step):
                    eps = self.ramp((epoch * steps + k) / steps)
                    pos.stats += self._step(run, batch.images, batch.labels, batch.indices, eps, attack_seed)
                    bar.update(1)
                    bar.set_postfix(eps=f"{eps:.3g}", loss=f"{pos.stats[0] / pos.stats[1]:.3f}")
                    if self.checkpoint_every and (k + 1) % self.checkpoint_every == 0 and k + 1 < steps:
                        pos.epoch, pos.step, pos.seconds = epoch, k + 1, time.perf_counter() - started
                        run.save(out / STATE_FILE, config, pos)
                pos.rows.append(_row(epoch, eps, pos.stats, run, time.perf_counter() - started, steps))
                if run.adapt is not None:  # where the per-example radii stand after the epoch
                    pos.rows[-1]["eps_adapt_mean"] = eps * float(run.adapt.mean())
                pos = Position(epoch + 1, 0, 0.0, torch.zeros(N_STATS, dtype=torch.float64), pos.rows)
                run.save(out / STATE_FILE, config, pos)
                if run.info.main:
                    save_checkpoint(
                        _delivered(run),
                        out / CHECKPOINT_FILE,
                        {"config": config, "epoch": epoch + 1, "log": pos.rows},
                    )
                log.write(pos.rows, logged)
                logged = len(pos.rows)
        return pos.rows

    def _export(self, run: TrainRun, out: Path, config: dict, rows: list[dict]) -> None:
        """Write the final model: ``checkpoint.pt`` (``save_checkpoint``) and a plain state dict."""
        state = run.final_state()
        meta = {"config": config, "epoch": len(rows), "log": rows}
        save_checkpoint(_delivered(run), out / CHECKPOINT_FILE, meta)
        atomic_write(out / EXPORT_FILE, lambda f: torch.save(state, f))


def _delivered(run: TrainRun) -> nn.Module:
    """``run.net`` itself, or with a weight average a copy of it that holds the average."""
    if run.ema is None:
        return run.net
    net = copy.deepcopy(run.net)
    net.load_state_dict(run.ema)
    return net


def _boosted_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MART's boosted cross-entropy ``[n]`` of logits ``[n, classes]`` and labels ``[n]``.

    ``-log p_y - log(1 - max_{k != y} p_k)``; the second term is the log of the other classes' mass,
    ``logsumexp`` over every class but the strongest wrong one, so it stays finite where ``p_k -> 1``.
    """
    wrong = logits.scatter(1, y[:, None], float("-inf")).argmax(1, keepdim=True)
    rest = logits.scatter(1, wrong, float("-inf")).logsumexp(1)
    return F.cross_entropy(logits, y, reduction="none") - (rest - logits.logsumexp(1))


def _fractions(value) -> tuple[float, ...] | None:
    """``eps_fractions`` checked: ``None``, or a non-empty list of numbers in ``(0, 1]``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"eps_fractions must be null or a list of fractions in (0, 1], got {value!r}")
    out = tuple(check_float(v, "eps_fractions") for v in value)
    if not out or any(v > 1 for v in out):
        raise ValueError(f"eps_fractions must be a non-empty list of fractions in (0, 1], got {value!r}")
    return out


def _row(epoch: int, eps: float, stats: torch.Tensor, run: TrainRun, seconds: float, steps: int) -> dict:
    """Return the log entry of one epoch (accuracies are fractions of the epoch's training examples)."""
    loss_sum, n, clean_ok, n_adv, adv_ok = stats.tolist()
    return {
        "epoch": epoch + 1,
        "eps": eps,
        "loss": loss_sum / max(n, 1),
        "clean_accuracy": clean_ok / max(n, 1),
        "adversarial_accuracy": adv_ok / n_adv if n_adv else None,
        "attacked": int(n_adv),
        "lr": run.opt.param_groups[0]["lr"],
        "seconds": seconds,
        "steps": steps,
    }
