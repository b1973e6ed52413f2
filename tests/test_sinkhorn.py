"""The Sinkhorn attacks (Wong et al. 2019, Hu et al. 2020): Lambert W, the projection kernel, the attacks."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import torch
import yaml

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks import transport as T
from wasserstein_attacks.attacks import ConstrainedSinkhorn, ProjectedSinkhorn, available, get
from wasserstein_attacks.solvers.sinkhorn import (
    SinkhornDuals,
    _Gathered,
    _Window,
    dual_objective,
    lambertw,
    lambertw_exp,
    sinkhorn_plan,
    sinkhorn_projection,
)

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64


# ------------------------------------------------------------------------------------ Lambert W


def test_lambertw_matches_scipy():
    z = torch.cat([
        torch.linspace(-1 / math.e + 1e-9, 0, 3001, dtype=F64),
        torch.logspace(-300, 300, 3001, dtype=F64),
        torch.tensor([0.0, 1.0, math.e, 10.0], dtype=F64),
    ])
    ref = np.real(scipy.special.lambertw(z.numpy()))
    got = lambertw(z).numpy()
    near = z.numpy() < -1 / math.e + 1e-4  # the branch point is ill-conditioned (also for scipy)
    np.testing.assert_allclose(got[~near], ref[~near], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got[near], ref[near], rtol=1e-6)
    assert lambertw(torch.tensor([-1 / math.e], dtype=F64)).item() == pytest.approx(-1.0, abs=1e-7)
    finite = z.numpy() < 1e300
    np.testing.assert_allclose((got * np.exp(got))[finite], z.numpy()[finite], rtol=1e-10, atol=1e-15)


def test_lambertw_keeps_dtype_and_rejects_bad_input():
    out = lambertw(torch.tensor([0.5, 2.0], dtype=torch.float32))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.real(scipy.special.lambertw([0.5, 2.0])), rtol=1e-6)
    with pytest.raises(ValueError, match="z must be >= -1/e"):
        lambertw(torch.tensor([-0.5], dtype=F64))
    with pytest.raises(ValueError, match="z must be a floating-point tensor"):
        lambertw(torch.tensor([1]))
    with pytest.raises(ValueError, match="NaN"):
        lambertw_exp(torch.tensor([math.nan], dtype=F64))


def test_lambertw_exp_log_domain():
    s = torch.linspace(-700, 700, 4001, dtype=F64)
    ref = np.real(scipy.special.lambertw(np.exp(s.numpy())))
    np.testing.assert_allclose(lambertw_exp(s).numpy(), ref, rtol=1e-12)
    # Far beyond float range: check the defining equation w + log w = s directly.
    big = torch.tensor([800.0, 1e4, 1e8, 1e15], dtype=F64)
    w = lambertw_exp(big)
    np.testing.assert_allclose((w + torch.log(w)).numpy(), big.numpy(), rtol=1e-14)
    tiny = torch.tensor([-705.0, -1000.0], dtype=F64)  # W0(a) = a (1 - a + ...) for tiny a
    np.testing.assert_allclose(lambertw_exp(tiny).numpy(), np.exp(tiny.numpy()), rtol=1e-12, atol=0)
    ends = lambertw_exp(torch.tensor([-math.inf, math.inf], dtype=F64))
    assert ends[0].item() == 0.0 and ends[1].item() == math.inf


# ----------------------------------------------------------------------------- the projection


def _images(b=2, c=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=F64) * (torch.rand(b, c, h, w, generator=g) > 0.5)
    x = x / x.flatten(1).sum(1)[:, None, None, None]
    y = x + 0.02 * torch.randn(b, c, h, w, generator=g, dtype=F64)
    return x, y


def _dense_reference(x, w, eps, lam, k, p, iters, cap=None):
    """The papers' updates written out with a dense K (numpy, scipy's Lambert W): Wong et al. 2019,
    Algorithm 1 (alpha, beta, damped Newton on psi), and Hu et al. 2020's capped beta / phi switch."""
    c, h, wd = x.shape
    xs, ws = x.reshape(c, -1).numpy(), w.reshape(c, -1).numpy()
    hw = np.stack(np.divmod(np.arange(h * wd), wd), 1)
    d = hw[:, None, :] - hw[None, :, :]
    cm = np.sqrt((d**2).sum(-1)) ** p
    inwin = (np.abs(d) <= k // 2).all(-1)
    m = xs.size
    alpha = np.full_like(xs, np.log(1 / m))
    beta = alpha.copy()
    psi = 1.0
    for _ in range(iters):
        kk = np.where(inwin, np.exp(-psi * cm - 1), 0.0)
        with np.errstate(divide="ignore"):
            alpha = np.log(np.exp(-beta) @ kk.T) - np.log(xs)
        kea = np.exp(-alpha) @ kk
        beta1 = np.real(scipy.special.lambertw(lam * np.exp(lam * ws) * kea)) - lam * ws
        if cap is None:
            beta, phi = beta1, np.zeros_like(ws)
        else:
            beta0 = np.log(kea / cap)
            phi = lam * (ws - cap) + beta0
            beta = np.where(phi < 0, beta1, beta0)
            phi = np.maximum(phi, 0)
        plan = np.exp(-alpha)[:, :, None] * kk[None] * np.exp(-beta)[:, None, :]
        g1 = -eps + (plan * cm).sum()
        g2 = -(plan * cm**2).sum()
        delta, t = g1 / g2, 1.0
        while psi - t * delta < 0 and t > 1e-2:
            t /= 2
        psi = max(psi - t * delta, 0.0)
    return -alpha, -beta, psi, (beta - phi) / lam + ws


@pytest.mark.parametrize("cap", [None, 0.04])
@pytest.mark.parametrize("p", [1, 2])
def test_projection_matches_the_papers_updates(cap, p):
    x, y = _images()
    for i, eps in enumerate((0.1, 0.3)):
        f, g, psi, z = _dense_reference(x[i], y[i], eps, 1000.0, 5, p, 4, cap)
        pr = sinkhorn_projection(x[i : i + 1], y[i : i + 1], eps, lam=1000.0, p=p, maxiters=3, cap=cap,
                                 stopping="dual")
        assert pr.iterations.item() == 4
        assert pr.duals.psi.item() == pytest.approx(psi, rel=1e-12)
        np.testing.assert_allclose(pr.duals.g[0].reshape(1, -1).numpy(), g, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(pr.z[0].reshape(1, -1).numpy(), z, rtol=1e-10, atol=1e-13)
        fin = np.isfinite(f)
        np.testing.assert_array_equal(torch.isfinite(pr.duals.f[0]).reshape(1, -1).numpy(), fin)
        np.testing.assert_allclose(pr.duals.f[0].reshape(1, -1).numpy()[fin], f[fin], rtol=1e-11, atol=1e-11)


def test_dual_objective_increases_and_is_a_lower_bound():
    x, y = _images()
    eps = torch.tensor([0.1, 0.3], dtype=F64)
    objs = []
    for it in (0, 1, 2, 5, 10, 20, 50):
        pr = sinkhorn_projection(x, y, eps, maxiters=it, stopping="dual")
        objs.append(dual_objective(x, y, eps, pr.duals))
    objs = torch.stack(objs)
    assert bool((objs[1:] >= objs[:-1] - 1e-12).all()), objs
    assert bool((objs[-1] > objs[0] + 1).all())
    # Weak duality: the identity plan (z = x, cost 0 <= eps) is feasible for the primal.
    lam = 1000.0
    entropy = torch.where(x > 0, x * torch.log(x), 0.0).flatten(1).sum(1)
    primal = lam / 2 * ((y - x) ** 2).flatten(1).sum(1) + entropy
    assert bool((objs[-1] <= primal).all())


def test_projection_output_is_feasible_after_convergence():
    x, y = _images()
    eps = torch.tensor([0.1, 0.3], dtype=F64)
    pr = sinkhorn_projection(x, y, eps, maxiters=3000, stopping="dual", tol=1e-8)
    assert bool(pr.converged.all())
    plan = sinkhorn_plan(pr.duals)
    torch.testing.assert_close(T.row_sums(plan, 8, 8), x, atol=2e-4, rtol=0)
    torch.testing.assert_close(T.column_sums(plan, 8, 8), pr.z, atol=2e-5, rtol=0)
    torch.testing.assert_close(pr.z.flatten(1).sum(1), torch.ones(2, dtype=F64), atol=2e-4, rtol=0)
    cost = T.plan_cost(plan, 1, mass=torch.ones(2, dtype=F64))
    torch.testing.assert_close(cost, pr.cost)
    assert bool((cost <= eps * (1 + 1e-3)).all()) and bool((pr.z >= 0).all())
    assert bool((plan * ~T.valid_mask(8, 8, 5)).eq(0).all())
    # The authors' looser rule (tol 1e-4) stops earlier, with the plan further from its marginals.
    loose = sinkhorn_projection(x, y, eps, maxiters=3000, stopping="dual")
    assert bool((loose.iterations < pr.iterations).all())


def test_projection_pulls_a_far_point_to_the_radius():
    # A 3x3 block of mass and its copy shifted by 2 pixels: that costs 2 > eps = 0.5, so the
    # projection must stop on the sphere (cost ~ eps, psi > 0), between x and w.
    x = torch.zeros(1, 1, 10, 10, dtype=F64)
    x[0, 0, 3:6, 3:6] = 1 / 9
    w = torch.roll(x, 2, dims=3)
    pr = sinkhorn_projection(x, w, 0.5, maxiters=3000, stopping="dual")
    assert pr.converged.item() and pr.duals.psi.item() > 1
    assert pr.cost.item() == pytest.approx(0.5, rel=5e-3)
    assert (pr.z - w).norm() < 0.7 * (x - w).norm()
    assert pr.z[0, 0, :, 6:].sum().item() > 0.1  # mass did arrive where w is


def test_projection_is_nearly_idempotent():
    x, _ = _images()
    # A point inside the ball (a fifth of the mass moved one pixel right, cost <= 0.2 < eps) is nearly
    # a fixed point; the entropic blur that remains shrinks like 1/lam.
    w = x.clone()
    w[..., 1:] = 0.8 * x[..., 1:] + 0.2 * x[..., :-1]
    w[..., 0] = 0.8 * x[..., 0]
    w[..., -1] += 0.2 * x[..., -1]
    moved = (w - x).abs().flatten(1).sum(1)
    blur = []
    for lam in (1e4, 1e5):
        pr = sinkhorn_projection(x, w, 0.3, lam=lam, maxiters=3000, stopping="dual")
        assert bool(pr.converged.all())
        blur.append((pr.z - w).abs().flatten(1).sum(1))
    assert bool((blur[1] < 0.02 * moved).all())
    assert bool((blur[1] < 0.2 * blur[0]).all())
    # The centre itself: with lam = 1e5 the projection keeps it up to the blur.
    pr = sinkhorn_projection(x, x, 0.1, lam=1e5, maxiters=3000, stopping="dual")
    assert float((pr.z - x).abs().flatten(1).sum(1).max()) < 5e-3


def test_cap_is_respected_and_binds():
    x, y = _images()
    cap = 0.08  # above every pixel of x (the problem is feasible)
    y = y.clone()
    y[:, :, 4, 4] = 0.2  # push one pixel far above the cap
    pr = sinkhorn_projection(x, y, 0.3, cap=cap, maxiters=100, feasibility=(1e-3, 1e-2))
    assert bool((pr.z <= cap * (1 + 1e-12)).all())
    assert bool((pr.z[:, :, 4, 4] == cap).all())
    assert bool((pr.phi[:, :, 4, 4] > 0).all())
    assert bool(((pr.z.flatten(1).sum(1) - 1).abs() <= 1e-2).all())
    assert bool((pr.cost - 0.3 <= 1e-3).all())


def test_warm_start_and_per_example_stopping():
    x, y = _images()
    cold = sinkhorn_projection(x, y, 0.3, maxiters=400, stopping="dual")
    warm = sinkhorn_projection(x, y + 1e-4, 0.3, maxiters=400, stopping="dual", init=cold.duals)
    assert bool(cold.converged.all()) and bool(warm.converged.all())
    assert bool((warm.iterations < cold.iterations / 5).all())
    # Each example stops on its own: the batch equals its examples one by one.
    for i in range(2):
        one = sinkhorn_projection(x[i : i + 1], y[i : i + 1], 0.3, maxiters=400, stopping="dual")
        assert one.iterations.item() == cold.iterations[i].item()
        torch.testing.assert_close(one.z[0], cold.z[i], rtol=1e-12, atol=1e-15)


def test_window_sums_fast_path_equals_exact_log_sum_exp():
    win = _Window(6, 7, 5, 1, None)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(3, 2, 6, 7, generator=g, dtype=F64) * 5
    v[0, 0, 2, 3] = -math.inf  # empty pixels (Wong et al.'s zero-mass rows)
    v[1, 1] = -math.inf
    psi = torch.tensor([0.5, 3.0, 40.0], dtype=F64)
    exact = torch.logsumexp(win.logits(v, psi), -1).reshape(v.shape)
    fast = _Gathered(win, v)
    assert not bool(fast._risky(psi).any())
    torch.testing.assert_close(fast.log_window(psi), exact, rtol=1e-12, atol=1e-12)
    f = torch.randn(3, 2, 6, 7, generator=g, dtype=F64)
    pair = win.pair_of
    nb = win.logits(v, torch.zeros(3, dtype=F64)) + 1 + f.reshape(3, 2, -1, 1)
    ref = torch.stack([torch.logsumexp(nb[..., pair == q].flatten(1), 1) for q in range(9)], 1)
    torch.testing.assert_close(fast.log_pair_totals(f), ref, rtol=1e-12, atol=1e-12)
    # A spread beyond float range takes the exact path and stays exact.
    v2 = v.clone()
    v2[2, 0, 0, 0] = 900.0
    wide = _Gathered(win, v2)
    assert bool(wide._risky(psi)[2])
    exact2 = torch.logsumexp(win.logits(v2, psi), -1).reshape(v.shape)
    torch.testing.assert_close(wide.log_window(psi), exact2, rtol=1e-12, atol=1e-12)


def test_projection_rejects_bad_input():
    x, y = _images()
    with pytest.raises(ValueError, match="w must be"):
        sinkhorn_projection(x, y[:, :, :4], 0.1)
    with pytest.raises(ValueError, match="eps must be"):
        sinkhorn_projection(x, y, -0.1)
    with pytest.raises(ValueError, match="stopping must be"):
        sinkhorn_projection(x, y, 0.1, stopping="fast")
    with pytest.raises(ValueError, match="lam must be"):
        sinkhorn_projection(x, y, 0.1, lam=0.0)
    with pytest.raises(ValueError, match="x must be"):
        sinkhorn_projection(-x, y, 0.1)


def test_initial_duals_are_the_authors_start():
    d = SinkhornDuals.initial((2, 1, 4, 4))
    torch.testing.assert_close(d.f, torch.full((2, 1, 4, 4), math.log(16), dtype=F64))
    torch.testing.assert_close(d.psi, torch.ones(2, dtype=F64))


# --------------------------------------------------------------------------------- the attacks


def _blobs(n=6, size=8, seed=0):
    """Bright 3x3 blobs at random places on a dim background, label = which half holds the blob."""
    g = torch.Generator().manual_seed(seed)
    x = 0.05 * torch.rand(n, 1, size, size, generator=g)
    labels = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(1, size - 4, (2,), generator=g).tolist()
        x[i, 0, r : r + 3, c : c + 3] = 0.9
        labels[i] = int(c + 1 >= size // 2)
    return x, labels


def _model(size=8):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size * size, 2))
    with torch.no_grad():  # a weak classifier: "is the mass on the right half?"
        w = torch.zeros(2, size, size)
        w[1, :, size // 2 :] = 1.0
        w[0, :, : size // 2] = 1.0
        m[1].weight.copy_(w.reshape(2, -1))
        m[1].bias.zero_()
    return m.eval()


FAST = {
    "sinkhorn_wong": dict(steps=4, sinkhorn_maxiters=15),
    "sinkhorn_hu": dict(steps=4, sinkhorn_maxiters=15, cost_tol=1e-2, mass_tol=5e-2),
}
HU_LOOSE = {k: v for k, v in FAST["sinkhorn_hu"].items() if k != "steps"}
# Hu et al.'s 1.5 % mass check fails on these tiny high-contrast images; it is recorded, and the
# warning is the expected behaviour here (it is tested in test_mass_check_is_recorded).
quiet_mass_check = pytest.mark.filterwarnings("ignore:ConstrainedSinkhorn. the authors' check:RuntimeWarning")


def test_registered():
    assert {"sinkhorn_wong", "sinkhorn_hu"} <= set(available())
    assert isinstance(get("sinkhorn_wong"), ProjectedSinkhorn)
    assert isinstance(get("sinkhorn_hu"), ConstrainedSinkhorn)


@quiet_mass_check
@pytest.mark.parametrize("name", ["sinkhorn_wong", "sinkhorn_hu"])
def test_attack_is_certified_and_succeeds(name):
    x, labels = _blobs()
    model = _model()
    threat = WassersteinBall(eps=0.5)
    x0 = x.clone()
    res = get(name, **FAST[name])(model, x, labels, threat=threat)
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    assert res.adversarial.shape == x.shape and res.adversarial.dtype == x.dtype
    assert bool(res.certified.all())
    assert res.success_rate > 0
    ok = res.success
    d = threat.distance(x[ok], res.adversarial[ok])
    assert bool((d <= 0.5 * (1 + 1e-4)).all())
    assert bool((res.adversarial >= 0).all() and (res.adversarial <= 1).all())
    info = res.info
    for key in ("claimed_success", "radius", "raw_plan_cost", "raw_mass_change", "projections"):
        assert len(info[key]) == x.shape[0]
    moved = torch.tensor(info["projections"]) > 0
    assert bool(moved.any())
    radius = torch.tensor(info["radius"], dtype=F64)[moved]
    torch.testing.assert_close(radius, torch.full_like(radius, 0.5))
    # The raw entropic plan's cost is the projection's, near the radius (the common ending then rescales).
    assert max(info["raw_plan_cost"]) < 0.5 * 1.2


@quiet_mass_check
@pytest.mark.parametrize("name", ["sinkhorn_wong", "sinkhorn_hu"])
def test_batch_equals_examples_one_by_one(name):
    x, labels = _blobs(n=3, seed=1)
    model = _model()
    eps = torch.tensor([0.3, 0.5, 0.6])
    attack = get(name, **FAST[name])
    res = attack(model, x, labels, threat=WassersteinBall(eps=eps))
    for i in range(3):
        one = attack(model, x[i : i + 1], labels[i : i + 1], threat=WassersteinBall(eps=float(eps[i])),
                     indices=torch.tensor([i]))
        assert one.success.item() == res.success[i].item()
        assert one.iterations.item() == res.iterations[i].item()
        torch.testing.assert_close(one.adversarial[0], res.adversarial[i], rtol=1e-5, atol=1e-6)


def test_ramp_schedules_follow_the_authors():
    wong = ProjectedSinkhorn(ramp=True, ramp_start=0.1, ramp_factor=1.1, ramp_every=10)
    eps = torch.tensor([10.0, 0.12], dtype=F64)
    torch.testing.assert_close(wong._radius(0, eps), torch.tensor([0.1, 0.1], dtype=F64))
    torch.testing.assert_close(wong._radius(25, eps), torch.tensor([0.1 * 1.1**2, 0.12], dtype=F64))
    hu = ConstrainedSinkhorn(ramp=True)
    torch.testing.assert_close(hu._radius(0, eps), torch.tensor([0.01, 0.01], dtype=F64))
    torch.testing.assert_close(hu._radius(9, eps), torch.tensor([0.1, 0.1], dtype=F64))
    torch.testing.assert_close(hu._radius(199, eps), torch.tensor([2.0, 0.12], dtype=F64))
    assert ConstrainedSinkhorn()._radius(5, eps).tolist() == eps.tolist()  # fixed radius by default


@quiet_mass_check
def test_ramp_run_records_the_radius_of_success():
    x, labels = _blobs(n=4, seed=2)
    res = ConstrainedSinkhorn(steps=6, ramp=True, ramp_start=0.1, ramp_increment=0.1, **HU_LOOSE)(
        _model(), x, labels, threat=WassersteinBall(eps=2.0))
    radius = torch.tensor(res.info["radius"], dtype=F64)
    its = res.iterations.to(F64)
    moved = torch.tensor(res.info["projections"]) > 0
    # The last projection of an example that ran t steps used the radius of step t - 1.
    torch.testing.assert_close(radius[moved], (0.1 + 0.1 * (its - 1))[moved])
    assert bool((res.cost[res.success] <= 2.0 * (1 + 1e-4)).all())


@quiet_mass_check
def test_output_image_and_restarts():
    x, labels = _blobs(n=4, seed=3)
    model = _model()
    threat = WassersteinBall(eps=0.3)
    img = ConstrainedSinkhorn(steps=3, output="image", **HU_LOOSE)(model, x, labels, threat=threat)
    assert bool(img.certified.all()) and img.info["output"] == "image"
    att = ProjectedSinkhorn(steps=3, sinkhorn_maxiters=15, restarts=2)
    a, b = att(model, x, labels, threat=threat, seed=5), att(model, x, labels, threat=threat, seed=5)
    torch.testing.assert_close(a.adversarial, b.adversarial, rtol=0, atol=0)
    used = torch.tensor(a.info["restarts_used"])
    assert bool(((used == 1) | (used == 2) | (used == 0)).all())


@quiet_mass_check
def test_degenerate_inputs_stay_put():
    x, labels = _blobs(n=2)
    x[1] = 0  # an all-zero image: its ball is {x}
    res = ConstrainedSinkhorn(steps=3, **HU_LOOSE)(_model(), x, labels, threat=WassersteinBall(eps=0.5))
    torch.testing.assert_close(res.adversarial[1], x[1], rtol=0, atol=0)
    assert res.info["projections"][1] == 0
    wong = ProjectedSinkhorn(steps=3, sinkhorn_maxiters=10)
    res0 = wong(_model(), x, labels, threat=WassersteinBall(eps=0.0))
    torch.testing.assert_close(res0.adversarial, x, rtol=0, atol=0)


def test_train_mode_is_restored_with_a_warning():
    x, labels = _blobs(n=2)
    model = _model().train()
    with pytest.warns(UserWarning, match="train mode"):
        ProjectedSinkhorn(steps=2, sinkhorn_maxiters=5)(model, x, labels, threat=WassersteinBall(eps=0.2))
    assert model.training


@pytest.mark.parametrize("cls,kwargs,match", [
    (ProjectedSinkhorn, dict(steps=0), "steps must be"),
    (ProjectedSinkhorn, dict(alpha=-1.0), "alpha must be"),
    (ProjectedSinkhorn, dict(loss="hinge"), "loss must be"),
    (ProjectedSinkhorn, dict(output="both"), "output must be"),
    (ProjectedSinkhorn, dict(ramp="yes"), "ramp must be"),
    (ConstrainedSinkhorn, dict(lam=0.0), "lam must be"),
    (ConstrainedSinkhorn, dict(restarts=0), "restarts must be"),
    (ConstrainedSinkhorn, dict(cost_tol=-1.0), "cost_tol must be"),
    (ConstrainedSinkhorn, dict(stopping="never"), "stopping must be"),
])
def test_constructor_rejects_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("name,cls", [("sinkhorn_wong", ProjectedSinkhorn),
                                      ("sinkhorn_hu", ConstrainedSinkhorn)])
def test_config_is_exactly_the_constructor(name, cls):
    cfg = yaml.safe_load((REPO / "wasserstein_attacks" / "conf" / "attack" / f"{name}.yaml").read_text())
    assert cfg.pop("_target_") == f"wasserstein_attacks.attacks.{cls.__name__}"
    params = inspect.signature(cls.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    assert cfg == defaults
    built = cls(**cfg)
    assert type(built) is cls


def test_mass_check_is_recorded():
    # A one-pixel-wide bright bar: clamping after the capped projection changes the mass by more than
    # the authors' 1.5 %; their assert becomes a record and a RuntimeWarning, and the run goes on.
    x = torch.full((1, 1, 8, 8), 0.02)
    x[0, 0, 2:6, 4] = 1.0
    labels = torch.tensor([1])
    with pytest.warns(RuntimeWarning, match="1.5 %"):
        res = ConstrainedSinkhorn(steps=3, **HU_LOOSE)(_model(), x, labels, threat=WassersteinBall(eps=0.5))
    assert res.info["mass_check_failures"][0] >= 1
    assert res.info["max_mass_change"][0] >= 0.015
    assert bool(res.certified.all())
