"""Flow-space randomized smoothing (Levine & Feizi 2020): flows, radii, units, soundness, PREDICT/CERTIFY.

The soundness tests use classifiers whose smoothed probability is known exactly: ``f(z) = 1`` iff the
mass of ``z`` on a set ``S`` of pixels exceeds ``t``. Its noised score is ``w.x - s * (sum of the noise
on the edges leaving S)``, so ``pA(x')`` is a CDF of a sum of i.i.d. noise variables, and every ``x'``
whose exact distance (the package's LP referee) is below the certified radius must keep ``pA > 1/2``.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import ot
import pytest
import torch
from scipy import stats
from scipy.signal import fftconvolve

from wasserstein_attacks.attacks import get as get_attack
from wasserstein_attacks.data import load_dataset
from wasserstein_attacks.defenses import smoothing as sm
from wasserstein_attacks.models import build_model
from wasserstein_attacks.threat import WassersteinBall

DENSE = WassersteinBall(eps=0.0, p=1, kernel_size=None)


def _pairs(seed: int, b: int = 4, c: int = 1, h: int = 4, w: int = 4):
    """Random images and partners of equal per-channel mass, values in [0.1, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.8 * torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    y = 0.1 + 0.8 * torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    y = y * x.sum((2, 3), keepdim=True) / y.sum((2, 3), keepdim=True)
    return x, y


def _ground_cost(h: int, w: int, metric: str) -> np.ndarray:
    ij = np.array([(i, j) for i in range(h) for j in range(w)], dtype=np.float64)
    d = np.abs(ij[:, None] - ij[None])
    return d.sum(-1) if metric == "manhattan" else np.sqrt((d**2).sum(-1))


# ----------------------------------------------------------------------------------------- flows


def test_divergence_conserves_mass_and_is_minus_the_adjoint_of_the_gradient():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 2, sm.num_edges(4, 5), generator=g, dtype=torch.float64)
    d = sm.divergence(f, 4, 5)
    torch.testing.assert_close(d.sum((-2, -1)), torch.zeros(3, 2, dtype=torch.float64), atol=1e-12, rtol=0)
    # <w, div f> = sum over edges of f_e (w_target - w_source)
    wimg = torch.randn(4, 5, generator=g, dtype=torch.float64)
    grad = torch.cat([(wimg[:, 1:] - wimg[:, :-1]).reshape(-1), (wimg[1:] - wimg[:-1]).reshape(-1)])
    torch.testing.assert_close((d * wimg).sum((-2, -1)), f @ grad)
    with pytest.raises(ValueError, match=r"^flow must have 31 edges"):
        sm.divergence(torch.zeros(30), 4, 5)


def test_min_flow_is_manhattan_w1_and_bounds_the_threat_distance():
    """min ||f||_1 = Manhattan W1 (POT), and Manhattan/sqrt(2) <= Euclidean W1 <= windowed W1 <= Manhattan."""
    x, y = _pairs(1, b=4, c=2)
    flow = sm.min_flow_l1(x, y).numpy()
    n_mass = x.sum((1, 2, 3)).numpy()
    man = np.array(
        [
            sum(
                ot.emd2(
                    x[i, c].reshape(-1).numpy(), y[i, c].reshape(-1).numpy(), _ground_cost(4, 4, "manhattan")
                )
                for c in range(2)
            )
            for i in range(4)
        ]
    )
    np.testing.assert_allclose(flow, man, rtol=1e-7)
    euc = DENSE.distance(x, y).numpy() * n_mass
    win = WassersteinBall(eps=0.0, p=1, kernel_size=3).distance(x, y).numpy() * n_mass
    assert np.all(flow / math.sqrt(2) <= euc * (1 + 1e-9)) and np.all(euc <= flow * (1 + 1e-9))
    assert np.all(euc <= win * (1 + 1e-9))
    # The constant is attained: one diagonal step costs sqrt(2) (Euclidean) and needs a flow of 2.
    z = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    z[..., 0, 0], z[..., 1, 1] = 1.0, 0.5
    z2 = z.clone()
    z2[..., 0, 0], z2[..., 1, 1] = 0.5, 1.0
    diag = float(DENSE.distance(z, z2)) * 1.5
    assert diag == pytest.approx(math.sqrt(2) * 0.5) and float(sm.min_flow_l1(z, z2)) == pytest.approx(1.0)
    assert sm.min_flow_l1(x, y * 1.1).isinf().all()  # masses differ: no flow


# ------------------------------------------------------------------------------- statistics, radii


def test_clopper_pearson_matches_known_values_and_its_definition():
    np.testing.assert_allclose(sm.clopper_pearson_lower(10, 10, 0.05), 0.05**0.1, rtol=1e-12)
    # the two-sided 95 % interval of 5/10 is [0.187, 0.813]
    np.testing.assert_allclose(sm.clopper_pearson_lower(5, 10, 0.025), 0.18708602, atol=1e-7)
    assert sm.clopper_pearson_lower(0, 10, 0.05) == 0.0
    k = np.array([1, 37, 95, 999])
    low = sm.clopper_pearson_lower(k, 1000, 0.001)
    # the definition: P[Bin(n, pL) >= k] = alpha
    np.testing.assert_allclose(stats.binom.sf(k - 1, 1000, low), 0.001, rtol=1e-6)


def test_radius_formulas_and_the_ceiling():
    lap, uni = sm.LaplaceNoise(sigma=1.0), sm.UniformNoise(sigma=1.0)
    p = np.array([0.4, 0.6, 0.9, 0.999])
    b = 1 / math.sqrt(2)
    np.testing.assert_allclose(lap.radius(p), [0, *(-b * np.log(2 * (1 - p[1:])))])
    np.testing.assert_allclose(uni.radius(p), [0, *(2 * math.sqrt(3) * (p[1:] - 0.5))])
    # 1-D Neyman-Pearson: a shift by R(pA) brings the set {z <= t} of P0 = pA to exactly 1/2.
    t = stats.laplace.ppf(0.9, scale=b)
    assert stats.laplace.cdf(t - lap.radius(0.9), scale=b) == pytest.approx(0.5, abs=1e-12)
    # Levine & Feizi's published ceiling (ALGORITHMS.md: n = 10,000, alpha = 0.05, ~2.03 sigma in eps units).
    pa = 0.05 ** (1 / 10_000)
    lf = 1 / (2 * math.sqrt(2)) * math.log(pa / (1 - pa)) / math.sqrt(2)
    assert lf == pytest.approx(2.03, abs=0.005)
    assert lap.max_radius(10_000, 0.05) / math.sqrt(2) >= lf  # ours: Teng et al.'s tighter bound
    np.testing.assert_allclose(sm.flow_radius_to_eps([2.0], [4.0], relative=False), [2 / (math.sqrt(2) * 4)])
    with pytest.raises(ValueError, match=r"^p must be 1: flow-space smoothing certifies W1"):
        sm.flow_radius_to_eps([1.0], [1.0], relative=True, p=2)


# ------------------------------------------------------------------------------ exact soundness


def _sum_cdf(noise: sm.FlowNoise, k: int, values: np.ndarray) -> np.ndarray:
    """CDF of the sum of ``k`` i.i.d. draws of ``noise`` at ``values`` (exact for k = 1, else convolved)."""
    if isinstance(noise, sm.LaplaceNoise):
        dist = stats.laplace(scale=noise.scale)
    else:
        dist = stats.uniform(loc=-noise.half_width, scale=2 * noise.half_width)
    if k == 1:
        return dist.cdf(values)
    h = noise.sigma / 400
    grid = np.arange(-40 * noise.sigma, 40 * noise.sigma + h / 2, h)
    cell = np.diff(dist.cdf(np.append(grid - h / 2, grid[-1] + h / 2)))
    mass = cell
    for _ in range(k - 1):
        mass = fftconvolve(mass, cell).clip(0)
    support = k * grid[0] + h * np.arange(mass.size)
    return np.interp(values, support + h / 2, np.cumsum(mass))


class _CutProbability:
    """Exact ``P[f(x' + div(N delta)) = 1]`` for ``f(z) = [mass of z on the first `cols` columns > t]``."""

    def __init__(self, x: torch.Tensor, noise: sm.FlowNoise, cols: int, p0: float):
        self.noise, self.cols, self.k = noise, cols, x.shape[-2]  # one crossing edge per row
        self.scale = float(x.sum())
        q = np.interp(p0, _sum_cdf(noise, self.k, self._grid()), self._grid())
        self.t = self.mass_left(x) - self.scale * q

    def _grid(self) -> np.ndarray:
        return np.linspace(-12 * self.noise.sigma, 12 * self.noise.sigma, 20001)

    def mass_left(self, z: torch.Tensor) -> float:
        return float(z[..., : self.cols].sum())

    def __call__(self, z: torch.Tensor) -> float:
        return float(_sum_cdf(self.noise, self.k, np.array([(self.mass_left(z) - self.t) / self.scale]))[0])


def _move_across_cut(x: torch.Tensor, cols: int, amount: float) -> torch.Tensor:
    """Move ``amount`` of mass one pixel right across the cut, spread over the rows (the cheapest attack)."""
    y = x.clone()
    y[..., cols - 1] -= amount / x.shape[-2]
    y[..., cols] += amount / x.shape[-2]
    return y


@pytest.mark.parametrize("noise", [sm.LaplaceNoise(sigma=0.05), sm.UniformNoise(sigma=0.05)], ids=repr)
def test_certified_radius_is_sound_and_the_flow_radius_tight_on_a_strip(noise):
    """1x1x6 strip, one edge crosses the cut: below the radius nothing flips; just above R_flow it does."""
    x = torch.tensor([[[[0.5, 0.6, 0.4, 0.7, 0.3, 0.5]]]], dtype=torch.float64)
    prob = _CutProbability(x, noise, cols=3, p0=0.8)
    assert prob(x) == pytest.approx(0.8, abs=1e-6)
    r_flow = float(noise.radius(prob(x)))
    r_eps = float(sm.flow_radius_to_eps(r_flow, x.sum(), relative=True))
    n_mass = float(x.sum())
    inside = _move_across_cut(x, 3, 0.99 * r_eps * n_mass)
    assert float(DENSE.distance(x, inside)) < r_eps and prob(inside) > 0.5
    # On a strip the Euclidean and Manhattan costs agree, so the flow radius itself is tested: tight.
    assert prob(_move_across_cut(x, 3, 0.99 * r_flow * n_mass)) > 0.5
    assert prob(_move_across_cut(x, 3, 1.01 * r_flow * n_mass)) < 0.5


@pytest.mark.parametrize("noise", [sm.LaplaceNoise(sigma=0.05), sm.UniformNoise(sigma=0.05)], ids=repr)
def test_certified_radius_is_sound_in_random_directions_on_4x4(noise):
    """1x4x4, four edges cross the cut: random x' scaled to 0.98 of the radius (exact LP) never flip."""
    g = torch.Generator().manual_seed(3)
    x = 0.3 + 0.4 * torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64)
    prob = _CutProbability(x, noise, cols=2, p0=0.85)
    r_eps = float(sm.flow_radius_to_eps(noise.radius(prob(x)), x.sum(), relative=True))
    dirs = [sm.divergence(torch.randn(1, 1, 24, generator=g, dtype=torch.float64), 4, 4) for _ in range(6)]
    dirs.append(_move_across_cut(x, 2, 1.0) - x)
    for d in dirs:
        unit = float(DENSE.distance(x, x + 1e-3 * d)) / 1e-3  # W1 of x + s d is linear in s (dense, p = 1)
        y = x + (0.98 * r_eps / unit) * d
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        assert float(DENSE.distance(x, y)) < r_eps
        assert prob(y) > 0.5


# -------------------------------------------------------------------------------- PREDICT, CERTIFY


class _LinearCut(torch.nn.Module):
    """Two classes: 1 iff the mass on the first ``cols`` columns exceeds ``t`` (``t=None``: always 1)."""

    def __init__(self, cols: int, t: float | None):
        super().__init__()
        self.cols, self.t = cols, t
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.eval()

    def forward(self, z):
        score = z[..., : self.cols].sum((1, 2, 3)) - (self.t if self.t is not None else -1e9)
        return torch.stack([torch.zeros_like(score), score], 1) + 0 * self.dummy


def _images(b: int = 3, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(b, 1, 4, 4, generator=g)


def test_certify_is_sound_on_a_sampled_run_and_deterministic():
    noise = sm.LaplaceNoise(sigma=0.05)
    x = _images(3)
    smoothed = sm.SmoothedClassifier(_LinearCut(2, float(x[0, ..., :2].sum()) - 0.3), noise, num_classes=2)
    kw = dict(n0=50, n=2000, alpha=0.001, seed=7)
    res = smoothed.certify(x, **kw)
    assert int(res.prediction[0]) == 1 and float(res.radius[0]) > 0
    again = smoothed.certify(x, **kw)
    torch.testing.assert_close(res.radius, again.radius, rtol=0, atol=0)
    single = smoothed.certify(x[1:2], **kw, indices=torch.tensor([1]))  # a batch equals its examples alone
    torch.testing.assert_close(single.p_lower, res.p_lower[1:2], rtol=0, atol=0)
    small = sm.SmoothedClassifier(smoothed.model, noise, num_classes=2, batch_size=7).certify(x, **kw)
    torch.testing.assert_close(small.counts, res.counts, rtol=0, atol=0)
    assert not torch.equal(smoothed.certify(x, **{**kw, "seed": 8}).counts, res.counts)
    y = _move_across_cut(x[:1].double(), 2, 0.9 * float(res.radius[0]) * float(x[0].sum())).float()
    assert float(DENSE.distance(x[:1], y)) < float(res.radius[0])
    assert int(smoothed.predict(y, n=2000, alpha=0.001, seed=9)[0]) == 1


def test_abstention_and_the_ceiling():
    x = _images(1)
    noise = sm.UniformNoise(sigma=0.05)
    coin = sm.SmoothedClassifier(_LinearCut(2, float(x[..., :2].sum())), noise, num_classes=2)  # pA = 1/2
    res = coin.certify(x, n0=20, n=500, alpha=0.001)
    assert bool(res.abstain[0]) and float(res.radius[0]) == 0 and float(res.p_lower[0]) < 0.5
    assert int(coin.predict(x, n=500, alpha=0.001)[0]) == sm.ABSTAIN
    sure = sm.SmoothedClassifier(_LinearCut(2, None), noise, num_classes=2).certify(
        x, n0=10, n=500, alpha=0.01
    )
    assert float(sure.p_lower[0]) == pytest.approx(0.01 ** (1 / 500), rel=1e-12)
    assert float(sure.radius[0]) == pytest.approx(noise.max_radius(500, 0.01) / math.sqrt(2), rel=1e-12)
    assert sure.certified_accuracy(torch.tensor([1]), [0.01, 10.0]) == {0.01: 1.0, 10.0: 0.0}


def test_bad_inputs_fail_in_one_line():
    model = _LinearCut(2, None)
    smoothed = sm.SmoothedClassifier(model, sm.LaplaceNoise(sigma=0.1), num_classes=2)
    cases = [
        (lambda: sm.LaplaceNoise(sigma=-1.0), r"^sigma must be a finite float > 0"),
        (lambda: sm.make_noise("gaussian", sigma=0.1), r"^name must be one of 'laplace', 'uniform'"),
        (lambda: sm.SmoothedClassifier(model, "laplace", num_classes=2), r"^noise must be a FlowNoise"),
        (lambda: smoothed.certify(_images(1), n0=0, n=10, alpha=0.1), r"^n0 must be an integer >= 1"),
        (lambda: smoothed.certify(_images(1), n0=5, n=10, alpha=1.5), r"^alpha must lie in \(0, 1\)"),
        (lambda: smoothed.certify(_images(1), n0=5, n=10, alpha=0.1, p=2), r"^p must be 1"),
        (
            lambda: smoothed.certify(_images(1) + 2, n0=5, n=10, alpha=0.1),
            r"^images must lie in \[0.0, 1.0\]",
        ),
        (lambda: sm.clopper_pearson_lower(11, 10, 0.05), r"^successes must lie in \[0, n\]"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as exc:
            call()
        assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ soft classifier, training, attack


def test_soft_smoothed_classifier_is_batch_independent_log_probabilities():
    model = build_model("tiny", num_classes=4, seed=0).eval()
    soft = sm.SmoothedSoft(model, sm.LaplaceNoise(sigma=0.05), m=3, seed=1)
    x = load_dataset("synthetic", "test", n=3).images.requires_grad_(True)
    out = soft(x)
    torch.testing.assert_close(torch.logsumexp(out, 1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(soft(x[1:2].detach()), out[1:2].detach(), atol=1e-5, rtol=0)
    out[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_training_under_noise_smoothadv_and_the_empirical_attack_run():
    data = load_dataset("synthetic", "train", n=16)
    noise = sm.UniformNoise(sigma=0.05)
    nets = [build_model("tiny", num_classes=4, seed=0) for _ in range(2)]
    for net in nets:
        sm.train_under_noise(net, data, noise, epochs=1, batch_size=8, seed=3, progress=False)
    torch.testing.assert_close(nets[0].state_dict(), nets[1].state_dict(), rtol=0, atol=0)  # seeded
    before = [p.detach().clone() for p in nets[0].parameters()]
    attack = get_attack("frank_wolfe_box", steps=3)
    hist = sm.smoothadv_train(nets[0], data, noise, attack=attack, eps=0.05, m=2, batch_size=8, seed=0)
    assert hist["steps"] == 2 and len(hist["epoch_loss"]) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, nets[0].parameters(), strict=True))
    smoothed = sm.SmoothedClassifier(nets[0], noise, num_classes=4, batch_size=64)
    test = load_dataset("synthetic", "test", n=4)
    threat = WassersteinBall(eps=0.05)
    res = sm.attack_smoothed(smoothed, attack, test.images, test.labels, threat=threat, m=2, n=40, alpha=0.05)
    assert res.adversarial.shape == test.images.shape and bool((res.cost <= 0.05 * (1 + 1e-4)).all())
    assert 0.0 <= res.robust_accuracy <= 1.0
    with pytest.raises(ValueError, match=r"^p must be 1"):
        sm.attack_smoothed(smoothed, attack, test.images, test.labels, threat=WassersteinBall(eps=0.1, p=2))


def test_consistency_loss_matches_its_definition_and_trains_reproducibly():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3 * 5, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    ce = torch.nn.functional.cross_entropy(logits, y.repeat(3))
    assert torch.equal(sm.consistency_loss(logits, y, m=3, consistency=0.0, entropy=0.5), ce)
    p = logits.softmax(1).reshape(3, 5, 4)  # copy-major: row j * 5 + i is copy j of image i
    mean = p.mean(0)
    kl = sum((mean * (mean.log() - p[j].log())).sum(1).mean() for j in range(3)) / 3
    ent = -(mean * mean.log()).sum(1).mean()
    got = sm.consistency_loss(logits, y, m=3, consistency=2.0, entropy=0.25)
    torch.testing.assert_close(got, ce + 2.0 * kl + 0.25 * ent)
    # Identical copies: no inconsistency to pay for.
    same = logits[:5].repeat(3, 1)
    torch.testing.assert_close(sm.consistency_loss(same, y, m=3, consistency=5.0, entropy=0.0),
                               torch.nn.functional.cross_entropy(same, y.repeat(3)))
    data = load_dataset("synthetic", "train", n=16)
    noise = sm.LaplaceNoise(sigma=0.05)
    nets = [build_model("tiny", num_classes=4, seed=0) for _ in range(2)]
    for net in nets:
        hist = sm.train_under_noise(net, data, noise, m=2, consistency=1.0, epochs=1, batch_size=8, seed=3,
                                    progress=False)
        assert hist["steps"] == 2 and math.isfinite(hist["epoch_loss"][0])
    torch.testing.assert_close(nets[0].state_dict(), nets[1].state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^m must be >= 2 with consistency > 0"):
        sm.train_under_noise(nets[0], data, noise, m=1, consistency=1.0, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"^consistency must be a finite float >= 0"):
        sm.train_under_noise(nets[0], data, noise, m=2, consistency=-1.0, epochs=1, progress=False)


# ------------------------------------------------------------------------------------------- CLI


def test_cli_smoke_run_and_a_bad_config(tmp_path, monkeypatch, capsys):
    from wasserstein_attacks.cli import certify_main

    args = [
        "dataset=synthetic",
        "model=tiny",
        "dataset.n=3",
        "n0=10",
        "n=50",
        "train.epochs=1",
        "train.n=16",
        "smoothing=uniform",
        "smoothing.sigma=0.05",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    monkeypatch.setattr(sys, "argv", ["wattack-certify", *args])
    certify_main()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["certified_accuracy"]) == ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5"]
    assert results["noise"] == {"name": "uniform", "sigma": 0.05, "relative": True}
    assert (results["n0"], results["n"], results["alpha"], results["seed"]) == (10, 50, 0.001, 0)
    assert len(results["examples"]["radius"]) == 3 and results["abstentions"] >= 0
    assert (tmp_path / "run" / "certified_accuracy.png").stat().st_size > 1000
    capsys.readouterr()
    monkeypatch.setattr(
        sys,
        "argv",
        ["wattack-certify", *args[:-1], "smoothing.sigma=-1", f"hydra.run.dir={tmp_path / 'bad'}"],
    )
    with pytest.raises(SystemExit) as exc:
        certify_main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err
    assert err.startswith("wattack-certify: error: sigma must be a finite float > 0")


def test_cli_smoothadv_and_the_empirical_attack(tmp_path, monkeypatch, capsys):
    from wasserstein_attacks.cli import certify_main

    run = tmp_path / "run"
    args = [
        "dataset=synthetic", "model=tiny", "dataset.n=3", "n0=10", "n=50", "train.epochs=1", "train.n=16",
        "train.method=smoothadv", "train.smoothadv.n=8", "train.smoothadv.steps=2", "train.smoothadv.m=2",
        "train.smoothadv.batch_size=8", "empirical.n=2", "empirical.steps=2", "empirical.m=2",
        "empirical.predict_n=30", "radii=[0.05,0.5]", f"hydra.run.dir={run}",
    ]
    monkeypatch.setattr(sys, "argv", ["wattack-certify", *args])
    certify_main()
    results = json.loads((run / "results.json").read_text())
    hist = results["base_training"]["smoothadv_history"]
    assert hist["steps"] == 1 and len(hist["attack_success"]) == 1
    emp = results["empirical"]
    assert emp["n_examples"] == 2 and list(emp["robust_accuracy"]) == ["0.05", "0.5"]
    # The worst case over the grid: robustness cannot grow with the radius.
    assert emp["robust_accuracy"]["0.5"] <= emp["robust_accuracy"]["0.05"] <= emp["clean_accuracy"]
    assert "empirical robust accuracy (2 examples)" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["wattack-certify", *args[:-1], "train.method=adv",
                                      f"hydra.run.dir={tmp_path / 'bad'}"])
    with pytest.raises(SystemExit) as exc:
        certify_main()
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "wattack-certify: error: train.method must be 'noise' or 'smoothadv', got 'adv'")


def test_empirical_robustness_attacks_only_what_stands_and_matches_the_full_attacks():
    data = load_dataset("synthetic", "test", n=8)
    net = build_model("tiny", num_classes=4, seed=3).eval()  # a seed whose examples break at two radii
    smoothed = sm.SmoothedClassifier(net, sm.UniformNoise(sigma=0.05), num_classes=4, batch_size=64)
    attack = get_attack("pgd_box", steps=10, loss="margin")
    kw = dict(m=2, n=30, alpha=0.2, seed=1)
    out = sm.empirical_robustness(smoothed, attack, data.images, data.labels, [0.05, 0.5], **kw)
    # The same attacks on every example at every radius: the first radius that breaks each one.
    first = [None] * 8
    for r in (0.05, 0.5):
        ball = WassersteinBall(eps=r)
        res = sm.attack_smoothed(smoothed, attack, data.images, data.labels, threat=ball, **kw)
        for i in res.success.nonzero()[:, 0].tolist():
            first[i] = r if first[i] is None else first[i]
    assert out["broken_at"] == first and any(f is not None for f in first)  # something to compare
    assert out["clean_accuracy"] == float(res.clean_correct.double().mean())


# ------------------------------------------------------------------------------------------ mass prior


def test_mass_prior_is_the_class_frequency_per_mass_bin_and_ignores_any_flow():
    from wasserstein_attacks.models import MassPrior

    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 6, 6, generator=g)
    y = (x.sum((1, 2, 3)) > x.sum((1, 2, 3)).median()).long()  # class 1 = heavy images
    net = build_model("tiny", num_classes=2, seed=0)
    prior = MassPrior(net, num_classes=2, bins=4)
    with torch.no_grad():
        assert torch.equal(prior(x), net(x))  # unfitted: adds nothing
        prior.fit(x, y)
        expected = net(x) + prior.log_prior[torch.bucketize(x.sum((1, 2, 3)), prior.edges)]
        assert torch.equal(prior(x), expected)
    assert torch.all(prior.edges[1:] > prior.edges[:-1])
    assert torch.allclose(prior.log_prior.exp().sum(1), torch.ones(4))
    # The mass alone separates the classes here: the heaviest bin says class 1, the lightest class 0.
    assert prior.log_prior[-1].argmax() == 1 and prior.log_prior[0].argmax() == 0
    # Any flow keeps the mass, hence the bin: the prior term is the same before and after.
    flow = 5.0 * torch.randn(60, 1, sm.num_edges(6, 6), generator=g)
    moved = sm.apply_flow(x, flow)
    assert torch.equal(prior.bin(moved), prior.bin(x))
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, 2\)"):
        prior.fit(x, y + 1)
    with pytest.raises(ValueError, match=r"^images must be \[N, C, H, W\] and labels \[N\]"):
        prior.fit(x[:, 0], y)
    with pytest.raises(ValueError, match=r"^bins must be an int >= 1"):
        MassPrior(net, num_classes=2, bins=0)


def test_mass_only_classifier_is_certified_to_the_ceiling_and_loads_as_a_leaderboard_model(tmp_path):
    from wasserstein_attacks.leaderboard.verify import check_architecture, load_model
    from wasserstein_attacks.models import MassPrior

    data = load_dataset("mnist", "train", n=500)
    net = build_model("mnist_convnet", seed=0)
    with torch.no_grad():
        net[-1].weight.zero_()
        net[-1].bias.zero_()
    model = MassPrior(net).fit(data.images, data.labels).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model(check_architecture("mnist_convnet-massprior"), tmp_path / "w.pt")
    x = load_dataset("mnist", "test", n=6).images
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    noise = sm.make_noise("laplace", sigma=0.2)
    smoothed = sm.SmoothedClassifier(loaded, noise, num_classes=10, batch_size=200)
    res = smoothed.certify(x, n0=20, n=200, alpha=0.05, seed=0, indices=torch.arange(6))
    with torch.no_grad():
        assert res.prediction.tolist() == model(x).argmax(1).tolist()  # every draw agrees with the prior
    ceiling = sm.flow_radius_to_eps(noise.max_radius(200, 0.05), 1.0, relative=True)
    assert np.allclose(res.radius, ceiling)
    with pytest.raises(ValueError, match="^architecture must be a models.build_model name"):
        check_architecture("mnist_convnet-prior")


def test_cli_mass_prior_only_and_added(tmp_path, monkeypatch, capsys):
    from wasserstein_attacks.cli import certify_main

    base = ["dataset=synthetic", "model=tiny", "dataset.n=4", "n0=10", "n=40", "train.n=32",
            "smoothing.sigma=0.5", "radii=[0.05]"]
    monkeypatch.setattr(sys, "argv", ["wattack-certify", *base, "train.mass_prior=only",
                                      f"hydra.run.dir={tmp_path / 'only'}"])
    certify_main()
    res = json.loads((tmp_path / "only" / "results.json").read_text())
    assert res["base_training"]["mass_prior"] == {"mode": "only", "bins": 20, "n": 32}
    assert res["model"]["checkpoint"] == "base_model.pt" and (tmp_path / "only" / "base_model.pt").is_file()
    assert res["abstentions"] == 0  # the mass alone decides: all draws agree
    monkeypatch.setattr(sys, "argv", ["wattack-certify", *base, "train.mass_prior=true", "train.epochs=1",
                                      f"hydra.run.dir={tmp_path / 'add'}"])
    certify_main()
    res = json.loads((tmp_path / "add" / "results.json").read_text())
    assert res["base_training"]["mass_prior"]["mode"] == "add" and res["base_training"]["epochs"] == 1
    capsys.readouterr()
    for bad, message in (
        (["train.mass_prior=maybe"], "train.mass_prior must be false, true or only, got 'maybe'"),
        (["train.mass_prior=only", "train.epochs=1"],
         "train.mass_prior=only reads the mass alone: there is nothing to train (epochs=0)"),
    ):
        argv = ["wattack-certify", *base, *bad, f"hydra.run.dir={tmp_path / 'bad'}"]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exc:
            certify_main()
        assert exc.value.code == 2
        assert capsys.readouterr().err.strip() == f"wattack-certify: error: {message}"
