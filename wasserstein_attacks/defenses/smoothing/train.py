"""Training the base classifier for flow-space smoothing: noise augmentation and SmoothAdv.

- ``train_under_noise``: Cohen et al.'s recipe (train on noised inputs, "Gaussian augmentation"),
  here with the flow noise of the smoothed classifier; the loop is ``defenses.training.train_model``
  with the model wrapped in ``NoisyInput``. With ``consistency > 0``, Jeong & Shin's consistency
  regularization (NeurIPS 2020): ``m`` noised copies of each image, cross-entropy on each, plus
  ``consistency`` times the mean KL divergence from the copies' mean prediction to each copy's, plus
  ``entropy`` times that mean prediction's entropy. Certification needs the top class on nearly every
  draw (``pA`` near 1), which plain cross-entropy on single draws does not ask for.
- ``SmoothedSoft``: the soft smoothed classifier ``log E_delta[softmax f(x + div(s delta))]``,
  estimated with ``m`` fixed draws shared by all examples (so a batch gives the per-example result); it
  is an ``nn.Module`` the package's attacks can attack directly ("attack through the expectation").
- ``smoothadv_train``: SmoothAdv (Salman et al., NeurIPS 2019): per batch, attack ``SmoothedSoft``
  inside the Wasserstein ball (any registered attack; its outputs are certified members of the ball),
  then minimise the base classifier's cross-entropy averaged over the ``m`` noised copies of the
  adversarial images.
"""

from __future__ import annotations

import hashlib
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..._util import check_float, check_int
from ...attacks import Attack
from ...data import ImageDataset
from ...threat import WassersteinBall
from ..training import train_model
from .flows import apply_flow, num_edges
from .noise import FlowNoise

__all__ = ["NoisyInput", "SmoothedSoft", "consistency_loss", "train_under_noise", "smoothadv_train"]


def _derive_seed(*parts) -> int:
    """62-bit seed from the parts (stable across processes, unlike ``hash``)."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 2


def _scale(x: torch.Tensor, noise: FlowNoise) -> torch.Tensor:
    """Per-example factor ``[B]`` from noise units to pixel mass: ``N(x)`` for relative noise, else 1."""
    return x.sum((1, 2, 3)) if noise.relative else x.new_ones(x.shape[0])


class NoisyInput(nn.Module):
    """``model(x + div(s delta))`` with fresh noise in training mode; ``model(x)`` in eval mode.

    In training mode every image is noised ``m`` times: ``x [B, C, H, W]`` -> logits ``[m * B, K]``,
    copy-major (rows ``j * B .. (j + 1) * B - 1`` hold copy ``j``). Draws come from the global RNG of
    ``x``'s device, which ``train_model`` seeds from its ``seed``.
    """

    def __init__(self, model: nn.Module, noise: FlowNoise, m: int = 1):
        super().__init__()
        self.model, self.noise, self.m = model, noise, check_int(m, "m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> logits ``[B, num_classes]`` (eval) or ``[m * B, num_classes]`` (training)."""
        if not self.training:
            return self.model(x)
        x = x.repeat(self.m, 1, 1, 1)
        b, c, h, w = x.shape
        u = torch.rand(b, c, num_edges(h, w), device=x.device, dtype=torch.float64)
        delta = self.noise._from_uniform(u).to(x.dtype)
        return self.model(apply_flow(x, delta * _scale(x, self.noise)[:, None, None]))


class SmoothedSoft(nn.Module):
    """Soft smoothed classifier: ``log mean_j softmax(f(x + div(s delta_j)))``, ``[B, C, H, W] -> [B, K]``.

    Args:
        model: the base classifier.
        noise: the flow noise.
        m: noise draws ``delta_1..m`` (drawn once per image shape from ``seed``, shared by all
            examples: common random numbers make the estimate smooth in ``x`` and batch-independent).
        seed: seed of the draws.

    The output is a log-probability vector, usable as logits (argmax, cross-entropy, margins).

    """

    def __init__(self, model: nn.Module, noise: FlowNoise, *, m: int = 8, seed: int = 0):
        super().__init__()
        if not isinstance(noise, FlowNoise):
            raise ValueError(f"noise must be a FlowNoise (laplace or uniform), got {type(noise).__name__}")
        self.model, self.noise = model, noise
        self.m, self.seed = check_int(m, "m"), check_int(seed, "seed", low=0)
        self._draws: dict[tuple[int, int, int], torch.Tensor] = {}
        # An evaluation wrapper: start in eval mode without touching the base model's own mode.
        self.training = False

    def draws(self, c: int, h: int, w: int) -> torch.Tensor:
        """Return the ``m`` draws ``[m, C, E]`` (float32, CPU, noise units) for ``C x H x W`` images."""
        key = (c, h, w)
        if key not in self._draws:
            gen = torch.Generator().manual_seed(self.seed)
            self._draws[key] = self.noise.sample((self.m, c, num_edges(h, w)), gen)
        return self._draws[key]

    def noised(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> ``[B * m, C, H, W]``: every example moved by every draw (example-major)."""
        b, c, h, w = x.shape
        d = self.draws(c, h, w).to(x.device, x.dtype)
        flows = _scale(x, self.noise)[:, None, None, None] * d[None]
        return apply_flow(x[:, None], flows).reshape(b * self.m, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the mean softmax over the draws, ``[B, num_classes]``."""
        logp = F.log_softmax(self.model(self.noised(x)), dim=1)
        return torch.logsumexp(logp.reshape(x.shape[0], self.m, -1), dim=1) - math.log(self.m)


def consistency_loss(logits: torch.Tensor, labels: torch.Tensor, *, m: int, consistency: float,
                     entropy: float) -> torch.Tensor:
    """Jeong & Shin (2020)'s loss on ``m`` noised copies per image: a scalar.

    Args:
        logits: ``[m * B, K]``, copy-major (``NoisyInput`` with ``m`` copies).
        labels: ``[B]`` class indices.
        m: copies per image.
        consistency: weight of ``mean_j KL(p_mean || p_j)`` (0: cross-entropy on every copy only).
        entropy: weight of the entropy of ``p_mean`` (used only with ``consistency > 0``).

    """
    ce = F.cross_entropy(logits, labels.repeat(m))
    if consistency == 0:
        return ce
    logp = F.log_softmax(logits, dim=1).reshape(m, labels.shape[0], -1)
    log_mean = torch.logsumexp(logp, dim=0) - math.log(m)
    p_mean = log_mean.exp()
    kl = (p_mean * (log_mean - logp)).sum(-1).mean()
    return ce + consistency * kl - entropy * (p_mean * log_mean).sum(-1).mean()


def train_under_noise(
    model: nn.Module, dataset: ImageDataset, noise: FlowNoise, *, m: int = 1, consistency: float = 0.0,
    entropy: float = 0.5, **train_kwargs: object,
) -> dict:
    """Train ``model`` in place on flow-noised inputs (Cohen et al. 2019's augmentation, flow noise).

    Args:
        model: the base classifier, ``[B, C, H, W] -> [B, K]``.
        dataset: the training set.
        noise: the flow noise.
        m: noised copies per image and step (a batch of ``b`` images is ``m * b`` forward passes).
        consistency: Jeong & Shin's weight ``lambda`` of the consistency term (``> 0`` needs ``m >= 2``).
        entropy: their weight ``eta`` of the mean prediction's entropy.
        **train_kwargs: to ``defenses.training.train_model`` (epochs, lr, batch_size, seed, ...).

    Returns ``train_model``'s history.

    """
    if not isinstance(noise, FlowNoise):
        raise ValueError(f"noise must be a FlowNoise (laplace or uniform), got {type(noise).__name__}")
    m = check_int(m, "m")
    consistency = check_float(consistency, "consistency", allow_zero=True)
    entropy = check_float(entropy, "entropy", allow_zero=True)
    if consistency > 0 and m < 2:
        raise ValueError(f"m must be >= 2 with consistency > 0 (the term compares copies), got m={m}")

    def loss_fn(logits, labels):
        return consistency_loss(logits, labels, m=m, consistency=consistency, entropy=entropy)

    return train_model(NoisyInput(model, noise, m), dataset, loss_fn=loss_fn, **train_kwargs)


def smoothadv_train(
    model: nn.Module,
    dataset: ImageDataset,
    noise: FlowNoise,
    *,
    attack: Attack,
    eps: float,
    kernel_size: int = 5,
    m: int = 4,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """Train with SmoothAdv (Salman et al. 2019) in the ball ``W1, local k x k, box [0,1]`` of radius ``eps``.

    Per batch: ``attack(SmoothedSoft(model, noise, m), x, y, threat=ball)`` (fresh draws per step), then
    one Adam step on the mean cross-entropy of ``model`` over the ``m`` noised copies of the attacked
    images. Trains ``model`` in place and leaves it in eval mode.

    Returns:
        ``{"epoch_loss": [...], "attack_success": [fraction per epoch], "seconds": ..., "steps": ...}``.

    """
    if not isinstance(attack, Attack):
        raise ValueError(f"attack must be an Attack (attacks.get(name)), got {type(attack).__name__}")
    epochs, batch_size = check_int(epochs, "epochs", low=0), check_int(batch_size, "batch_size")
    threat = WassersteinBall(eps=check_float(eps, "eps"), p=1, kernel_size=kernel_size)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=check_float(lr, "lr"))
    device = next(model.parameters()).device
    hist, succ, start, step = [], [], time.perf_counter(), 0
    for epoch in range(epochs):
        tot, hits, count = 0.0, 0, 0
        for batch in dataset.batches(batch_size, shuffle=True, seed=_derive_seed(seed, "order", epoch)):
            x, y = batch.images.to(device), batch.labels.to(device)
            soft = SmoothedSoft(model, noise, m=m, seed=_derive_seed(seed, "noise", step))
            res = attack(
                soft, x, y, threat=threat, seed=_derive_seed(seed, "attack", step), indices=batch.indices
            )
            model.train()
            logits = model(soft.noised(res.adversarial.detach()))
            loss = F.cross_entropy(logits, y.repeat_interleave(soft.m))
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.eval()
            tot, hits, count, step = (
                tot + float(loss.detach()) * len(y),
                hits + int(res.success.sum()),
                count + len(y),
                step + 1,
            )
        hist.append(tot / max(count, 1))
        succ.append(hits / max(count, 1))
    model.eval()
    return {"epoch_loss": hist, "attack_success": succ, "seconds": time.perf_counter() - start, "steps": step}
