"""SinkhornPenalty (GeomLoss Sinkhorn divergence as a CW-style penalty) and its divergence helper."""

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks.attacks import SinkhornPenalty, available, get, sinkhorn_divergence

ROOT = Path(__file__).resolve().parents[1]
H = W = 8
FAST = dict(steps=20, binary_search_steps=2, lr=0.5)


def _model(seed=0, channels=1):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, 3)
    ).eval()


def _images(b=6, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, channels, H, W)
    for i in range(b):
        r, c = 1 + i % 3, 1 + (i // 3) % 3
        x[i, :, r : r + 4, c : c + 4] = 0.2 + 0.8 * torch.rand(channels, 4, 4, generator=g)
    return x


def _problem(b=6, channels=1):
    model = _model(channels=channels)
    x = _images(b, channels)
    with torch.no_grad():
        labels = model(x).argmax(1)
    return model, x, labels


def test_registered():
    assert "sinkhorn_penalty" in available()
    assert isinstance(get("sinkhorn_penalty", steps=3), SinkhornPenalty)


def test_finds_certified_adversarial_examples_inside_the_ball():
    model, x, labels = _problem()
    eps = 0.2
    threat = WassersteinBall(eps=eps)
    res = SinkhornPenalty(**FAST)(model, x, labels, threat=threat)
    assert res.success.float().mean() >= 0.5
    assert bool(res.certified.all())
    assert res.adversarial.shape == x.shape and res.adversarial.dtype == x.dtype
    assert float(res.adversarial.min()) >= 0 and float(res.adversarial.max()) <= 1
    torch.testing.assert_close(res.adversarial.sum((2, 3)), x.sum((2, 3)), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        pred = model(res.adversarial).argmax(1)
    assert bool((pred[res.success] != labels[res.success]).all())
    d = threat.distance(x, res.adversarial)
    assert bool((d[res.success] <= eps * (1 + 1e-4)).all())
    assert bool((res.cost <= eps * (1 + 1e-4)).all())
    # The certificate (plan cost) bounds the exact distance.
    assert bool((d <= res.cost + 1e-6).all())


def test_info_reports_divergence_and_costs_per_example():
    model, x, labels = _problem()
    threat = WassersteinBall(eps=0.2)
    res = SinkhornPenalty(**FAST)(model, x, labels, threat=threat)
    b = x.shape[0]
    for key in ("sinkhorn_divergence", "plan_cost", "exact_cost", "const"):
        assert len(res.info[key]) == b
    assert json.loads(json.dumps(res.info, allow_nan=False)) == res.info  # strict JSON: no NaN

    def tensor(key):
        return torch.tensor([math.nan if v is None else v for v in res.info[key]], dtype=torch.float64)

    plan_cost = tensor("plan_cost")
    # The common ending only ever lowers the cost (repair toward identity).
    assert bool((res.cost <= plan_cost + 1e-6).all())
    exact = tensor("exact_cost")
    refined = ~torch.isnan(exact)
    assert bool(refined[res.success].all())  # every success was re-solved exactly
    torch.testing.assert_close(res.cost[refined], exact[refined], rtol=1e-4, atol=1e-6)
    exact_now = res.threat.distance(x, res.adversarial)
    # The certificate bounds the referee's distance; they differ by at most the unmatched mass it may
    # leave (mass_tol * N) moved at the window's dearest move (2 sqrt 2 pixels for k = 5).
    gap = res.cost[refined] - exact_now[refined]
    assert bool((gap >= -1e-9).all()) and bool((gap <= threat.mass_tol * 2 * math.sqrt(2) + 1e-6).all())
    assert bool(torch.isfinite(tensor("const")[res.success]).all())
    div = tensor("sinkhorn_divergence")
    assert bool((div >= -1e-5).all()) and bool((div[res.success] > 0).all())


def test_penalty_lowers_the_cost_compared_with_no_penalty():
    model, x, labels = _problem()
    threat = WassersteinBall(eps=0.5)
    with_pen = SinkhornPenalty(steps=20, binary_search_steps=4, lr=0.5)(model, x, labels, threat=threat)
    # (Almost) no penalty: a negligible constant, no search on it, no plan-cost term.
    no_pen = SinkhornPenalty(steps=20, binary_search_steps=1, lr=0.5, initial_const=1e-9, cost_weight=0.0)(
        model, x, labels, threat=threat
    )
    both = with_pen.success & no_pen.success
    assert int(both.sum()) >= 3
    assert float(with_pen.cost[both].mean()) < 0.8 * float(no_pen.cost[both].mean())


def test_batch_equals_examples_one_by_one_with_random_restarts():
    model, x, labels = _problem(b=4)
    threat = WassersteinBall(eps=0.1)  # some examples are broken at once, the others get a random restart
    attack = SinkhornPenalty(steps=12, binary_search_steps=2, lr=0.5, restarts=2)
    idx = torch.arange(10, 14)
    batch = attack(model, x, labels, threat=threat, seed=7, indices=idx)
    for i in range(4):
        one = attack(model, x[i : i + 1], labels[i : i + 1], threat=threat, seed=7, indices=idx[i : i + 1])
        torch.testing.assert_close(one.adversarial[0], batch.adversarial[i], rtol=1e-5, atol=1e-6)
        assert bool(one.success[0] == batch.success[i])
        assert int(one.iterations[0]) == int(batch.iterations[i])
    assert bool(batch.success.any()) and bool((batch.iterations > 24).any())  # both paths were exercised


def test_per_example_eps_tensor_equals_scalar():
    model, x, labels = _problem(b=3)
    attack = SinkhornPenalty(steps=10, binary_search_steps=1, lr=0.5)
    a = attack(model, x, labels, threat=WassersteinBall(eps=0.2))
    b = attack(model, x, labels, threat=WassersteinBall(eps=torch.full((3,), 0.2)))
    torch.testing.assert_close(a.adversarial, b.adversarial)
    assert torch.equal(a.success, b.success)


def test_targeted_success_means_the_target():
    model, x, labels = _problem(b=4)
    targets = (labels + 1) % 3
    res = SinkhornPenalty(**FAST)(model, x, labels, threat=WassersteinBall(eps=0.3), targets=targets)
    assert bool(res.success.any())
    with torch.no_grad():
        pred = model(res.adversarial).argmax(1)
    assert bool((pred[res.success] == targets[res.success]).all())


def test_multichannel_and_all_zero_images():
    model, x, labels = _problem(b=3, channels=2)
    x[1, 1] = 0  # a massless channel
    x[2] = 0  # an all-zero image: its ball is {x}
    attack = SinkhornPenalty(steps=10, binary_search_steps=1, lr=0.5)
    res = attack(model, x, labels, threat=WassersteinBall(eps=0.2))
    assert bool(res.certified.all())
    torch.testing.assert_close(res.adversarial[2], x[2])
    assert float(res.adversarial[1, 1].abs().max()) == 0.0
    torch.testing.assert_close(res.adversarial.sum((2, 3)), x.sum((2, 3)), rtol=1e-5, atol=1e-5)


def test_without_box():
    model, x, labels = _problem(b=3)
    threat = WassersteinBall(eps=0.2, box=None)
    res = SinkhornPenalty(steps=10, binary_search_steps=1, lr=0.5)(model, x, labels, threat=threat)
    assert bool(res.certified.all())
    assert bool((threat.distance(x, res.adversarial)[res.success] <= 0.2 * (1 + 1e-4)).all())


def _delta(shift=(0, 0), p_channels=1):
    x = torch.zeros(1, p_channels, H, W)
    x[0, :, 3 + shift[0], 3 + shift[1]] = 0.5
    return x


@pytest.mark.parametrize(
    "p, shift, expected", [(1, (0, 1), 1.0), (1, (1, 1), math.sqrt(2)), (2, (0, 1), 1.0), (2, (1, 1), 2.0)]
)
def test_divergence_known_answers_for_a_shifted_delta(p, shift, expected):
    # Between two Dirac masses there is only one plan, so the debiased divergence is the ground cost.
    d = sinkhorn_divergence(_delta(), _delta(shift), p=p, blur=0.1)
    torch.testing.assert_close(d, torch.tensor([expected]), rtol=1e-3, atol=1e-4)


def test_divergence_is_zero_on_identical_images_and_weighted_by_channel_mass():
    x = _images(b=2, channels=2)
    torch.testing.assert_close(sinkhorn_divergence(x, x), torch.zeros(2), rtol=0, atol=1e-4)
    two = torch.zeros(1, 2, H, W)
    two[0, 0, 3, 3] = 0.75  # channel 0 holds 3/4 of the mass and moves one pixel
    two[0, 1, 5, 5] = 0.25
    moved = two.clone()
    moved[0, 0] = torch.roll(two[0, 0], 1, dims=1)
    d = sinkhorn_divergence(two, moved, blur=0.1)
    torch.testing.assert_close(d, torch.tensor([0.75]), rtol=1e-3, atol=1e-4)
    y = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sinkhorn_divergence(x, torch.roll(y, 1, dims=3)).sum(), y)
    assert bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(binary_search_steps=0), "binary_search_steps"),
        (dict(initial_const=0.0), "initial_const"),
        (dict(lr=-1.0), "lr"),
        (dict(blur=0.0), "blur"),
        (dict(scaling=1.0), "scaling"),
        (dict(divergence_every=0), "divergence_every"),
        (dict(cost_weight=-1.0), "cost_weight"),
        (dict(kappa=float("nan")), "kappa"),
        (dict(loss="l2"), "loss"),
        (dict(restarts=True), "restarts"),
        (dict(init_noise=-0.1), "init_noise"),
        (dict(exact_refine=1), "exact_refine"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SinkhornPenalty(**kwargs)


def test_hydra_config_is_exactly_the_constructor():
    omegaconf = pytest.importorskip("omegaconf")
    from hydra.utils import instantiate

    cfg = omegaconf.OmegaConf.load(ROOT / "wasserstein_attacks" / "conf" / "attack" / "sinkhorn_penalty.yaml")
    assert cfg["_target_"] == "wasserstein_attacks.attacks.SinkhornPenalty"
    params = inspect.signature(SinkhornPenalty.__init__).parameters
    defaults = {k: v.default for k, v in params.items() if k != "self"}
    assert {k: v for k, v in cfg.items() if k != "_target_"} == defaults
    attack = instantiate(cfg)
    assert isinstance(attack, SinkhornPenalty) and repr(attack) == repr(SinkhornPenalty())
