"""Does any part of the image survive flow noise at the levels that certify 0.05? The least noisy features.

Flow noise adds ``div(delta)`` to the image, ``delta`` i.i.d. on the edges of the 4-connected grid (in
fractions of the image's mass ``N``). Its covariance is ``sigma^2 N^2 L``, ``L`` the grid's Laplacian,
whose eigenvectors are the 2-D cosine modes (DCT-II) with eigenvalues ``l_a + l_b``,
``l_a = 2 - 2 cos(pi a / H)``: the noise is weakest on the lowest modes and absent on the constant one
(the mass). A base classifier that reads only the ``K x K`` lowest modes of the mass-normalised image
(the constant one left out) and the mass itself reads the image where the noise is weakest. Trained
under the noise with consistency regularisation (Jeong & Shin 2020; ``m`` = 2 copies), it is certified
with the package's CERTIFY (``SmoothedClassifier``: ``n0`` = 100, ``n`` = 10,000, alpha 0.05) on the
first 100 MNIST test images, the published models' protocol, beside the mass-only classifier (``K`` = 0:
the mass alone, through the same network).

    python benchmarks/smoothing_lowpass.py --seeds 0 1 2        # GRID, under a minute per setting
    python benchmarks/smoothing_lowpass.py --n 1000 --out benchmarks/results/smoothing_lowpass-n1000.json
    python benchmarks/smoothing_lowpass.py --k 3 --noise uniform --sigma 0.1

Writes ``benchmarks/results/smoothing_lowpass.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attack_setup import RESULTS, machine, provenance, write_json  # noqa: E402

from wasserstein_attacks.data import load_dataset  # noqa: E402
from wasserstein_attacks.defenses.smoothing import SmoothedClassifier  # noqa: E402
from wasserstein_attacks.defenses.smoothing.flows import apply_flow, num_edges  # noqa: E402
from wasserstein_attacks.defenses.smoothing.noise import make_noise  # noqa: E402
from wasserstein_attacks.defenses.smoothing.train import consistency_loss  # noqa: E402

OUT = RESULTS / "smoothing_lowpass.json"
RADII = (0.01, 0.02, 0.05, 0.1, 0.2)
#: (noise, sigma, K): the levels whose image-reading networks certify the most at 0.05-0.1 (README).
GRID = [*((noise, sigma, k) for noise, sigma in (("uniform", 0.07), ("uniform", 0.1)) for k in (0, 3, 6)),
        ("laplace", 0.1, 0), ("laplace", 0.1, 3)]


class LowModes(torch.nn.Module):
    """``[B, 1, H, W]`` -> logits: an MLP on the ``k x k`` lowest cosine modes of ``x / N(x)`` (the
    constant mode left out, each mode divided by its noise standard deviation at unit ``sigma``) and
    ``log N(x)``. ``k = 0``: the mass alone."""

    def __init__(self, k: int, size: int = 28, hidden: int = 256, classes: int = 10):
        super().__init__()
        i = torch.arange(size, dtype=torch.float64)
        basis = torch.stack([torch.cos(math.pi * a * (i + 0.5) / size) for a in range(max(k, 1))])
        self.register_buffer("basis", (basis / basis.norm(dim=1, keepdim=True)).float())
        lam = torch.tensor([2 - 2 * math.cos(math.pi * a / size) for a in range(max(k, 1))])
        lam2 = (lam[:, None] + lam[None, :]).reshape(-1)
        self.register_buffer("keep", lam2 > 0)
        self.register_buffer("noise_sd", lam2.clamp_min(1e-12).sqrt().float())
        self.k = k
        width = max(k * k, 1)  # k*k - 1 modes and the mass
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.net = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` -> ``[B, k*k]`` raw features (modes over their noise scale, then log mass)."""
        mass = x.sum((1, 2, 3))
        out = [torch.log(mass.clamp_min(1e-6))[:, None]]
        if self.k > 0:
            z = x[:, 0] / mass[:, None, None]
            modes = torch.einsum("ah,bhw,cw->bac", self.basis, z, self.basis).reshape(x.shape[0], -1)
            out.insert(0, (modes / self.noise_sd)[:, self.keep])
        return torch.cat(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((self.features(x) - self.mean) / self.std)


def train(model: LowModes, noise, images, labels, *, epochs: int, consistency: float, seed: int) -> float:
    """Jeong & Shin's loss (``consistency_loss``) on 2 noised copies per image, entropy weight 0.5; Adam,
    batches of 500. Returns the seconds taken."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    e = num_edges(*images.shape[-2:])
    copies = 2

    def noised(x):
        draws = noise.sample((x.shape[0], 1, e), gen) * x.sum((1, 2, 3))[:, None, None]
        return apply_flow(x, draws)

    with torch.no_grad():  # feature scaling from one noised pass over the training set
        f = torch.cat([model.features(noised(images[i:i + 5000])) for i in range(0, len(images), 5000)])
        model.mean.copy_(f.mean(0))
        model.std.copy_(f.std(0) + 1e-6)
    opt = torch.optim.Adam(model.net.parameters(), 1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(500):
            logits = model(noised(images[idx].repeat(copies, 1, 1, 1)))  # copy-major, as the loss wants
            loss = consistency_loss(logits, labels[idx], m=copies, consistency=consistency, entropy=0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def measure(noise_name: str, sigma: float, k: int, args, seed: int = 0) -> dict:
    """Train one low-mode classifier from ``seed`` and certify it on the first ``args.n`` test images."""
    noise = make_noise(noise_name, sigma=sigma)
    tr, te = load_dataset("mnist", "train"), load_dataset("mnist", "test", n=args.n)
    torch.manual_seed(seed)  # the initial weights: torch's default seed differs from run to run
    model = LowModes(k)
    seconds = train(model, noise, tr.images, tr.labels, epochs=args.epochs, consistency=args.consistency,
                    seed=seed)
    model.eval()
    res = SmoothedClassifier(model, noise, num_classes=10, batch_size=2000).certify(
        te.images, n0=100, n=args.draws, alpha=0.05, seed=seed)
    correct = res.prediction == te.labels
    return {"noise": noise_name, "sigma": sigma, "k": k, "seed": seed, "epochs": args.epochs,
            "consistency": args.consistency, "train_seconds": seconds, "certify_seconds": res.seconds,
            "n": args.draws, "n0": 100, "alpha": 0.05, "examples": args.n,
            "smoothed_correct": float(correct.double().mean()),
            "certified_accuracy": {repr(r): float((correct & (res.radius > r)).double().mean())
                                   for r in RADII}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", choices=["uniform", "laplace"])
    parser.add_argument("--sigma", type=float)
    parser.add_argument("--k", type=int, help="modes per axis (0: the mass alone)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--consistency", type=float, default=20.0)
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--n", type=int, default=100, help="first n MNIST test images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one model per seed (initial weights, training draws, CERTIFY's draws)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    origin = provenance()
    if origin["git_dirty"] is not False:
        raise SystemExit("the checkout has uncommitted changes: commit first")
    grid = GRID if args.k is None else [(args.noise or "uniform", args.sigma or 0.1, args.k)]
    report = {"protocol": {"features": "k x k lowest cosine modes of x / N(x) without the constant, "
                                       "over their noise scale, and log N(x); MLP 256-256",
                           "training": "60,000 MNIST training images under the noise, 2 copies, "
                                       "consistency KL and half the entropy of the mean (Jeong & Shin)",
                           "certify": "CERTIFY, n0 100, alpha 0.05, radii in eps units"},
              "runs": []}
    for seed, (noise_name, sigma, k) in ((s, g) for s in args.seeds for g in grid):
        run = measure(noise_name, sigma, k, args, seed)
        report["runs"].append(run)
        cells = " ".join(f"{100 * v:5.1f}" for v in run["certified_accuracy"].values())
        print(f"seed {seed} {noise_name:8s} sigma {sigma:<5} k {k}: smoothed correct "
              f"{100 * run['smoothed_correct']:5.1f} certified {cells}", flush=True)
        report.update(machine=machine(), provenance=origin)  # the code that ran, not the JSON it writes
        write_json(args.out, report)


if __name__ == "__main__":
    main()
