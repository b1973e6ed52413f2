"""Test doubles for the leaderboard tests: a tiny model, synthetic data, a toy attack, runs -> results.json.

Nothing here is a real result. ``python tests/_leaderboard_fixtures.py`` regenerates the committed
example entry under ``tests/fixtures/leaderboard/`` (clearly labelled as an example).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks import transport as T
from wasserstein_attacks._util import sha256_file
from wasserstein_attacks.attacks import base as attack_base
from wasserstein_attacks.attacks.base import Attack, RunOutput, register
from wasserstein_attacks.attacks.suite import Suite
from wasserstein_attacks.models import safe_load

FIXTURE_ROOT = Path(__file__).resolve().parent / "fixtures" / "leaderboard"
RADII = [0.05, 0.1, 0.2, 0.5]
THREAT = WassersteinBall(0.1, kernel_size=3)
SIDE = 8


def synthetic_data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[n, 1, 8, 8]`` in [0, 0.5]: a tilted 4x4 blob at a random column, last column empty.

    Labels follow the blob's centre of mass (right of 3.4 -> class 1), with every 8th label flipped
    so that the tiny model makes clean errors.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, SIDE, SIDE)
    for i in range(n):
        col = int(torch.randint(1, 4, (1,), generator=g))
        # A random left-right tilt spreads the centres of mass continuously, so radii of breaks vary.
        tilt = torch.exp((2 * torch.rand(1, generator=g) - 1) * torch.arange(4.0))
        blob = (0.2 + 0.8 * torch.rand(4, 4, generator=g)) * tilt
        x[i, 0, 2:6, col : col + 4] = 0.5 * blob / blob.max()
    cols = torch.arange(SIDE, dtype=torch.float32)
    com = (x.sum(dim=(1, 2)) * cols).sum(1) / x.sum(dim=(1, 2, 3))
    y = (com > 3.4).long()
    y[::8] = 1 - y[::8]
    return x, y


class TinyNet(torch.nn.Module):
    """Linear model on 1x8x8 images whose logit difference is the mass-weighted column minus 3.4."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(SIDE * SIDE, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def tiny_model(scale: float = 5.0) -> TinyNet:
    """A deterministic :class:`TinyNet`: shifting mass right raises the class-1 logit."""
    model = TinyNet()
    cols = torch.arange(SIDE, dtype=torch.float32).repeat(SIDE) - 3.4
    with torch.no_grad():
        model.fc.weight.copy_(torch.stack([-cols, cols]) * scale)
        model.fc.bias.zero_()
    return model.eval()


def save_model(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def load_tiny(architecture: str, checkpoint: Path) -> torch.nn.Module:
    """Model loader for ``verify_entry``: the tiny architecture from a weights-only state dict."""
    if architecture != "tiny-linear":
        raise ValueError(f"unknown test architecture {architecture!r}")
    model = TinyNet()
    model.load_state_dict(safe_load(checkpoint))
    return model.eval()


NAME = "test_leaderboard_shift"
if NAME in attack_base.available():  # imported a second time under another module name
    ShiftRight = type(attack_base.get(NAME))
else:

    @register(NAME)
    class ShiftRight(Attack):
        """Toy attack: move the fraction ``eps`` of every pixel's mass one pixel right (cost <= eps)."""

        def __init__(self, *, fraction: float = 1.0):
            self.fraction = fraction

        def _run(self, model, x, labels, *, threat, targets, seeds):
            k = threat.kernel_size
            plan = T.identity_plan(x.to(torch.float64), k)
            t = (threat.eps_for(x.shape[0]).to(x.device) * self.fraction).clamp(max=1.0)[:, None, None]
            right = T.stay_index(k) + 1
            movable = T.valid_mask(x.shape[2], x.shape[3], k, device=x.device)[:, right]
            stay = plan[..., T.stay_index(k)]
            moved = stay * t * movable
            plan[..., right] = moved
            plan[..., T.stay_index(k)] = stay - moved
            return RunOutput(plan=plan, adversarial=None, iterations=torch.ones(x.shape[0], dtype=torch.long))


def toy_suite(version: int = 1) -> Suite:
    """A one-attack suite around the toy attack (the attacks' label is the registry name)."""
    return Suite("toy", version, [ShiftRight()])


def write_results(folder: Path, *, ok, cost, by, clean, adversarial, labels, index, threat=THREAT,
                  radii=RADII, checkpoint_sha256="0" * 64, seed=0, model_name="tiny-linear", suite_version=1,
                  dataset=("synthetic", "test")) -> Path:
    """Write ``results.json`` + ``examples.npz`` in the agreed format from per-example arrays.

    Accuracies are computed here from the arrays with the ball's certification rule, as a
    benchmark run would; ``cost`` is float64 ``[n]`` (inf: not broken).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ok = np.asarray(ok, dtype=bool)
    cost = np.asarray(cost, dtype=np.float64)
    tol = threat.cost_tol
    grid = sorted(float(r) for r in radii)

    def acc(r):
        return float(np.mean(ok & ~(cost <= r * (1 + tol))))

    def grid_radius(c):
        return 0.0 if c == 0 else next((r for r in grid if c <= r * (1 + tol)), None)

    desc = {k: v for k, v in threat.describe().items() if k != "eps"}
    results = {
        "schema_version": 1,
        "clean_accuracy": float(np.mean(ok)),
        "robust_accuracy": {repr(r): acc(r) for r in grid},
        "n_examples": len(ok),
        "radii": grid,
        "threat": desc,
        "suite": {"name": "toy", "version": suite_version,
                  "attacks": [{"name": NAME, "attack": NAME,
                               "config": {"_target_": "_leaderboard_fixtures.ShiftRight",
                                          "fraction": 1.0}}]},
        "per_attack_robust_accuracy": {NAME: {repr(r): acc(r) for r in grid}},
        "per_attack_broken": {NAME: sum(b == NAME for b in by)},
        "examples": {
            "index": [int(i) for i in index],
            "label": [int(v) for v in labels],
            "clean_correct": ok.tolist(),
            "broken_cost": [None if math.isinf(c) else float(c) for c in cost],
            "broken_radius": [None if math.isinf(c) else grid_radius(c) for c in cost],
            "broken_by": list(by),
            "exact_distance": [None] * len(ok),
        },
        "exact_check": {"fraction": 0.0, "tolerance": tol, "checked": 0, "within_counted_radius": 0,
                        "max_exact_over_cost": None},
        "model": {"name": model_name, "checkpoint": "tiny.pt", "checkpoint_sha256": checkpoint_sha256,
                  "weights_sha256": "1" * 64},
        "dataset": {"name": dataset[0], "split": dataset[1], "n": len(ok)},
        "seed": seed,
        "batch_size": len(ok),
        "package_version": "0.1.0",
        "git_commit": None,
        "config_hash": "0123456789abcdef",
        "config": {"note": "test fixture"},
        "hardware": {"device": "cpu", "torch": torch.__version__},
        "model_checks": {"stochastic": False, "warnings": []},
        "shard": None,
    }
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    np.savez_compressed(folder / "examples.npz", index=np.asarray(index), label=np.asarray(labels),
                        clean=np.asarray(clean, dtype=np.float32),
                        adversarial=np.asarray(adversarial, dtype=np.float32),
                        broken_cost=cost)
    return folder / "results.json"


def run_benchmark(folder: Path, model, images, labels, *, suite=None, seed=0,
                  checkpoint_sha256: str = "0" * 64, model_name: str = "tiny-linear",
                  dataset=("synthetic", "test"), threat: WassersteinBall = THREAT) -> Path:
    """Run the toy suite on the tiny model and write the run's results (a miniature ``wattack-bench``)."""
    suite = suite or toy_suite()
    index = torch.arange(images.shape[0])
    res = suite.run(model, images, labels, RADII, threat=threat.with_eps(max(RADII)), seed=seed,
                    indices=index, progress=False)
    return write_results(folder, ok=res.clean_correct.numpy(), cost=res.broken_cost.numpy(), by=res.broken_by,
                         clean=images.numpy(), adversarial=res.adversarial.numpy(), labels=labels.numpy(),
                         index=index.numpy(), seed=seed, checkpoint_sha256=checkpoint_sha256,
                         model_name=model_name, dataset=dataset, threat=threat)


def synthetic_run(folder: Path, *, n: int = 40, seed: int = 0, broken_fraction: float = 0.5,
                  clean_errors: int = 4, suite_version: int = 1) -> Path:
    """A run with made-up but exactly valid outcomes (no model): broken examples are one-pixel shifts.

    Each broken example moves the fraction ``c`` of its mass one pixel right (exact cost ``c``), so
    the committed adversarial examples are inside the ball at their claimed radius.
    """
    x, y = synthetic_data(n, seed=seed)
    rng = np.random.default_rng(seed)
    ok = np.ones(n, dtype=bool)
    ok[rng.choice(n, size=clean_errors, replace=False)] = False
    cost = np.where(ok, np.inf, 0.0)
    cand = np.flatnonzero(ok)
    broken = rng.choice(cand, size=int(round(broken_fraction * cand.size)), replace=False)
    cost[broken] = rng.choice([0.04, 0.08, 0.15, 0.3, 0.45], size=broken.size)
    adv = x.clone()
    for i in broken:
        adv[i] = _shift(x[i], float(cost[i]))
    by = [NAME if math.isfinite(c) and c > 0 else None for c in cost]
    return write_results(folder, ok=ok, cost=cost, by=by, clean=x.numpy(), adversarial=adv.numpy(),
                         labels=y.numpy(), index=np.arange(n), seed=seed, suite_version=suite_version)


def _shift(img: torch.Tensor, fraction: float) -> torch.Tensor:
    """Move ``fraction`` of every pixel's mass one pixel right (the last column must be empty)."""
    moved = img * fraction
    out = img - moved
    out[..., 1:] += moved[..., :-1]
    return out


def make_example(root: Path = FIXTURE_ROOT, work: Path | None = None) -> Path:
    """Build the committed example entry from a real toy run (tiny model, toy attack, synthetic data)."""
    import tempfile

    from wasserstein_attacks import leaderboard as lb

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work or tmp)
        model = tiny_model()
        ckpt = save_model(model, work / "tiny.pt")
        x, y = synthetic_data(48)
        results = run_benchmark(work / "run", model, x, y, checkpoint_sha256=sha256_file(ckpt))
        return lb.add_entry(
            results, root=root, entry_id="ExampleTinyLinear", name="EXAMPLE ONLY: tiny linear model",
            authors="wasserstein_attacks test suite", source="https://example.org/wasserstein-attacks/example",
            training="none (weights set by hand)", architecture="tiny-linear",
            note="Example entry for tests: synthetic 8x8 data, a hand-set linear model, a toy attack. "
                 "Not a result.",
            added="2000-01-01T00:00:00Z", overwrite=True)


if __name__ == "__main__":
    print(make_example(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE_ROOT))
