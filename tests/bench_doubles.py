"""Test doubles for the pipeline tests, importable by subprocesses (tests/ on PYTHONPATH).

- :class:`RandomShift`: a toy attack registered as ``test_random_shift``: each example moves all its
  mass by one random window offset (drawn from its own seed); the common ending scales the move back
  to the radius, so the centre of mass moves by at most ``eps`` pixels. ``delay`` slows each call
  (kill-and-resume tests); ``started`` names a file touched as each call starts (a test can wait
  until a worker process is busy).
- :class:`CentreOfMass`: a model whose logits depend only on the image's centre of mass, with class
  centres rotated by 45 degrees from the synthetic blobs' so that examples sit near its decision
  boundaries: some are clean errors, the others break at assorted radii.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from wasserstein_attacks import transport as T
from wasserstein_attacks.attacks.base import Attack, RunOutput, available, example_generators, register


class RandomShift(Attack):
    """Move each example's mass by one random offset of the window (per-example seed)."""

    name = "test_random_shift"

    def __init__(self, *, salt: int = 0, delay: float = 0.0, started: str | None = None):
        self.salt = salt
        self.delay = delay
        self.started = started

    def _run(self, model, x, labels, *, threat, targets, seeds):
        if self.started:
            Path(self.started).touch()
        if self.delay:
            time.sleep(self.delay)
        b, c, h, w = x.shape
        k = threat.kernel_size
        kk, stay = k * k, k * k // 2
        gens = example_generators([(s + 7919 * self.salt) % (1 << 63) for s in seeds])
        offsets = [int(torch.randint(kk - 1, (1,), generator=g)) for g in gens]
        valid = T.valid_mask(h, w, k, device=x.device)
        plan = T.identity_plan(x, k)
        xf = x.reshape(b, c, h * w)
        for i, o in enumerate(offsets):
            o = o + (o >= stay)
            move = valid[:, o].to(x.dtype)
            plan[i, :, :, o] = xf[i] * move
            plan[i, :, :, stay] = xf[i] * (1 - move)
        return RunOutput(plan=plan, adversarial=None, iterations=torch.ones(b, dtype=torch.long))


if "test_random_shift" not in available():
    register("test_random_shift")(RandomShift)


class CentreOfMass(torch.nn.Module):
    """Logits ``-||com(x) - centre_k||^2`` (pixels^2) for ``num_classes`` centres on a circle."""

    def __init__(self, height: int = 12, width: int = 12, num_classes: int = 4, softmax: bool = False,
                 nan: bool = False):
        super().__init__()
        self.softmax, self.nan = softmax, nan
        angle = 2 * math.pi * (torch.arange(num_classes, dtype=torch.float64) + 0.5) / num_classes
        radius = 0.3 * min(height, width)
        centres = torch.stack(
            [(height - 1) / 2 + radius * torch.sin(angle), (width - 1) / 2 + radius * torch.cos(angle)], 1
        )
        self.register_buffer("centres", centres.float())
        self.register_buffer("hh", torch.arange(height, dtype=torch.float32))
        self.register_buffer("ww", torch.arange(width, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.sum(1)  # [B, H, W]
        n = m.sum((1, 2)).clamp_min(1e-12)
        cy = (m.sum(2) * self.hh).sum(1) / n
        cx = (m.sum(1) * self.ww).sum(1) / n
        com = torch.stack([cy, cx], 1)
        logits = -((com[:, None, :] - self.centres[None]) ** 2).sum(-1)
        if self.nan:  # a broken model: argmax would read its NaN logits as class 0
            logits = logits * torch.nan
        return logits.softmax(1) if self.softmax else logits


def centre_of_mass_model(height: int = 12, width: int = 12, num_classes: int = 4, softmax: bool = False,
                         nan: bool = False):
    """Factory for Hydra configs (``softmax``: probabilities, which the model checks flag; ``nan``: NaN)."""
    return CentreOfMass(height, width, num_classes, softmax, nan)
