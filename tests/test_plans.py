"""Plan-space kernels and attacks (wasserstein_attacks.attacks.plans): projections, oracles, box variants.

The projection of Wu et al. is checked against an independent QP solve (scipy SLSQP) on tiny instances,
the entropic oracle against the linear program it smooths (scipy linprog), and both for feasibility,
idempotence and known answers.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.optimize import linprog, minimize

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks import transport as T
from wasserstein_attacks.attacks import base, get
from wasserstein_attacks.attacks.plans import (
    ExactProjectionPGD,
    FrankWolfe,
    FrankWolfeBox,
    PGDBox,
    apgd_checkpoints,
)
from wasserstein_attacks.solvers import (
    PlanRows,
    capacity_projection,
    entropic_lmo,
    fit_box,
    project_plan,
    project_simplex,
)
from wasserstein_attacks.solvers.simplex import _simplex_support

REPO = Path(__file__).resolve().parent.parent
DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def images(b=3, c=1, h=4, w=4, seed=0, ones=True):
    """Sparse-ish images in [0, 1] with some pixels at exactly 0 and 1 (as MNIST)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=DT)
    x = torch.where(x < 0.35, torch.zeros_like(x), x)
    if ones:
        x = torch.where(x > 0.8, torch.ones_like(x), x)
    x[:, :, 1, 1] = 1.0  # every image has mass and a saturated pixel
    return x


def check_feasible(P, x, threat, *, box=False, atol=1e-9):
    b, c, h, w = x.shape
    k = threat.kernel_size
    valid = T.valid_mask(h, w, k)
    assert (P >= -atol).all()
    assert (P[..., ~valid].abs() <= atol).all(), "mass on out-of-image entries"
    torch.testing.assert_close(T.row_sums(P, h, w), x, atol=atol, rtol=0)
    cost = T.plan_cost(P, threat.p, mass=x.sum((1, 2, 3)))
    assert (cost <= threat.eps_for(b) * (1 + 1e-9) + atol).all(), (cost, threat.eps_for(b))
    if box:
        assert T.column_sums(P, h, w).max() <= 1 + 1e-6


# ------------------------------------------------------------------------------------ simplex


def test_simplex_projection_known_cases():
    v = torch.tensor([[3.0, 0.0, 0.0], [0.5, 0.2, 0.1], [0.0, 0.0, 0.0]], dtype=DT)
    mass = torch.tensor([1.0, 1.0, 0.6], dtype=DT)
    out = project_simplex(v, mass)
    third = 0.2 / 3  # the missing mass 0.2 of the second row, shared by its 3 entries
    expect = torch.tensor([[1.0, 0, 0], [0.5 + third, 0.2 + third, 0.1 + third], [0.2, 0.2, 0.2]], dtype=DT)
    torch.testing.assert_close(out, expect)


def test_simplex_projection_feasible_idempotent_and_masked():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(200, 9, generator=g, dtype=DT) * 3
    mass = torch.rand(200, generator=g, dtype=DT) * 2
    valid = torch.rand(200, 9, generator=g) > 0.3
    valid[:, 4] = True
    out = project_simplex(v, mass, valid)
    assert (out >= 0).all() and (out[~valid] == 0).all()
    torch.testing.assert_close(out.sum(-1), mass)
    torch.testing.assert_close(project_simplex(out, mass, valid), out)


def test_simplex_projection_is_the_nearest_point():
    # Any other point of the simplex is farther: compare with random feasible points.
    g = torch.Generator().manual_seed(2)
    v = torch.randn(50, 5, generator=g, dtype=DT)
    mass = torch.full((50,), 0.7, dtype=DT)
    out = project_simplex(v, mass)
    for _ in range(20):
        q = torch.rand(50, 5, generator=g, dtype=DT)
        q = q / q.sum(-1, keepdim=True) * 0.7
        assert (((out - v) ** 2).sum(-1) <= ((q - v) ** 2).sum(-1) + 1e-12).all()


# ------------------------------------------------------------------------------ exact projection


def _slsqp_projection(V, x, eps, k, p=1):
    """Reference: the projection of one example by a generic QP solver over the valid entries with mass."""
    c, h, w = x.shape
    valid = T.valid_mask(h, w, k).numpy()
    cost = T.offset_costs(k, p).numpy()
    xs = x.reshape(c, h * w).numpy()
    Vn = V.reshape(c, h * w, k * k).numpy()
    var = [(ch, i, o) for ch in range(c) for i in range(h * w) if xs[ch, i] > 0
           for o in range(k * k) if valid[i, o]]
    idx = {v: n for n, v in enumerate(var)}
    target = np.array([Vn[v] for v in var])
    cvec = np.array([cost[v[2]] for v in var])
    budget = eps * xs.sum()
    rows = sorted({(ch, i) for ch, i, _ in var})
    A = np.zeros((len(rows), len(var)))
    for r, (ch, i) in enumerate(rows):
        for o in range(k * k):
            if (ch, i, o) in idx:
                A[r, idx[(ch, i, o)]] = 1
    bvec = np.array([xs[ch, i] for ch, i in rows])
    res = minimize(
        lambda z: 0.5 * ((z - target) ** 2).sum(), np.clip(target, 0, None) * 0 + A.T @ (bvec / A.sum(1)),
        jac=lambda z: z - target, method="SLSQP", bounds=[(0, None)] * len(var),
        constraints=[{"type": "eq", "fun": lambda z: A @ z - bvec, "jac": lambda z: A},
                     {"type": "ineq", "fun": lambda z: budget - cvec @ z, "jac": lambda z: -cvec[None]}],
        options={"ftol": 1e-14, "maxiter": 2000},
    )
    assert res.success, res.message
    out = np.zeros((c, h * w, k * k))
    for n, v in enumerate(var):
        out[v] = res.x[n]
    return torch.from_numpy(out).reshape(1, c, h * w, k * k)


@pytest.mark.parametrize("solver", ["bisection", "newton"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_projection_matches_a_qp_solver(solver, seed):
    k = 3
    x = images(1, 1, 3, 3, seed=seed)
    g = torch.Generator().manual_seed(10 + seed)
    V = T.identity_plan(x, k) + 0.6 * torch.randn(1, 1, 9, k * k, generator=g, dtype=DT)
    threat = WassersteinBall(0.15, kernel_size=k)
    P = project_plan(V, x, threat, solver=solver, steps=200, tol=1e-12)
    check_feasible(P, x, threat)
    ref = _slsqp_projection(V[0], x[0], 0.15, k)
    torch.testing.assert_close(P, ref, atol=2e-5, rtol=0)
    # The cost constraint is active here (the unconstrained projection costs more than the budget).
    assert T.plan_cost(P, 1, mass=x.sum((1, 2, 3))).item() == pytest.approx(0.15, rel=1e-6)


def test_exact_projection_feasible_and_idempotent_on_a_batch():
    x = images(4, 2, 6, 5, seed=3)
    k = 5
    g = torch.Generator().manual_seed(4)
    V = T.identity_plan(x, k) + 0.3 * torch.randn(4, 2, 30, k * k, generator=g, dtype=DT)
    threat = WassersteinBall(torch.tensor([0.01, 0.05, 0.2, 1.0]), kernel_size=k)
    for solver in ("bisection", "newton"):
        P = project_plan(V, x, threat, solver=solver, steps=100, tol=1e-12)
        check_feasible(P, x, threat)
        again = project_plan(P, x, threat, solver=solver, steps=100, tol=1e-12)
        torch.testing.assert_close(again, P, atol=1e-9, rtol=0)
    # The authors' bisection (25 steps, tolerance 1e-4) is feasible and close to the exact projection.
    rough = project_plan(V, x, threat, solver="bisection")
    check_feasible(rough, x, threat)
    torch.testing.assert_close(rough, P, atol=1e-3, rtol=0)


def test_exact_projection_known_answers():
    x = images(2, 1, 5, 5, seed=5)
    k = 5
    ident = T.identity_plan(x, k)
    # A feasible point is its own projection; with eps = 0 everything stays.
    torch.testing.assert_close(project_plan(ident, x, WassersteinBall(0.3)), ident)
    g = torch.Generator().manual_seed(6)
    V = ident + torch.randn(ident.shape, generator=g, dtype=DT)
    torch.testing.assert_close(project_plan(V, x, WassersteinBall(0.0)), ident)
    # With a huge radius the cost constraint is inactive: row-wise simplex projections (lambda = 0).
    valid = T.valid_mask(5, 5, k)
    rows = project_simplex(V, x.reshape(2, 1, 25), valid.expand(2, 1, 25, k * k))
    torch.testing.assert_close(project_plan(V, x, WassersteinBall(100.0)), rows)


# ------------------------------------------------------------------------------ entropic oracle


def _lp_value(G, x, eps, k):
    """max <G, S> over S >= 0 on the window, S 1 = x, <C, S> <= eps N (one example, scipy linprog)."""
    c, h, w = x.shape
    valid = T.valid_mask(h, w, k).numpy()
    cost = T.offset_costs(k).numpy()
    xs = x.reshape(c, h * w).numpy()
    Gn = G.reshape(c, h * w, k * k).numpy()
    var = [(ch, i, o) for ch in range(c) for i in range(h * w) if xs[ch, i] > 0
           for o in range(k * k) if valid[i, o]]
    rows = sorted({(ch, i) for ch, i, _ in var})
    A = np.zeros((len(rows), len(var)))
    for n, (ch, i, _) in enumerate(var):
        A[rows.index((ch, i)), n] = 1
    res = linprog(-np.array([Gn[v] for v in var]), A_ub=np.array([[cost[v[2]] for v in var]]),
                  b_ub=[eps * xs.sum()], A_eq=A, b_eq=[xs[r] for r in rows], bounds=(0, None), method="highs")
    assert res.status == 0
    return -res.fun


@pytest.mark.parametrize("solver", ["bisection", "newton"])
def test_entropic_oracle_is_feasible_and_near_the_lp_optimum(solver):
    k, gamma = 3, 1e-3
    x = images(3, 1, 4, 4, seed=7)
    g = torch.Generator().manual_seed(8)
    G = torch.rand(3, 1, 16, k * k, generator=g, dtype=DT) * 2 - 1
    threat = WassersteinBall(0.1, kernel_size=k)
    S = entropic_lmo(G, x, threat, gamma=gamma, solver=solver)
    check_feasible(S, x, threat)
    for i in range(3):
        lp = _lp_value(G[i], x[i], 0.1, k)
        value = float((S[i] * G[i]).sum())
        # Entropy costs at most gamma * N * log(k*k); the multiplier search a little more.
        assert value <= lp + 1e-9
        assert value >= lp - gamma * float(x[i].sum()) * math.log(k * k) - 0.02 * abs(lp), (value, lp)


def test_entropic_oracle_spends_the_budget_and_ours_is_at_least_as_good():
    k = 5
    x = images(4, 1, 8, 8, seed=9)
    g = torch.Generator().manual_seed(10)
    G = torch.rand(4, 1, 64, k * k, generator=g, dtype=DT) * 2 - 1
    threat = WassersteinBall(0.05, kernel_size=k)
    n = x.sum((1, 2, 3))
    theirs = entropic_lmo(G, x, threat, solver="bisection")
    ours = entropic_lmo(G, x, threat, solver="newton", steps=8)  # cold start; warm-started 6 do in the attack
    for S in (theirs, ours):
        check_feasible(S, x, threat)
    # Ours mixes the bracket's ends and so spends the whole budget.
    torch.testing.assert_close(T.plan_cost(ours, 1, mass=n), torch.full((4,), 0.05, dtype=DT))
    assert ((ours * G).sum((1, 2, 3)) >= (theirs * G).sum((1, 2, 3)) - 1e-3).all()


# ------------------------------------------------------------------------------ box


def test_fit_box_returns_overflow_and_keeps_rows():
    k = 3
    x = images(2, 1, 5, 5, seed=11)
    rows = PlanRows(x, k, 1)
    # Every pixel next to (2, 2) sends all its mass there: a pile far above 1.
    hub = 2 * 5 + 2 + torch.arange(2)[:, None] * 25
    to_hub = (rows.target == hub[rows.example]) & rows.valid
    R = torch.where(to_hub.any(-1, keepdim=True), to_hub.to(DT), rows.identity() / rows.mass[:, None])
    R = R * rows.mass[:, None]
    assert rows.columns(R).max() > 2
    F = fit_box(rows, R)
    assert rows.columns(F).max() <= 1
    torch.testing.assert_close(F.sum(-1), rows.mass)
    assert (rows.transport_cost(F) <= rows.transport_cost(R) + 1e-12).all()
    assert (F >= 0).all()


def test_capacity_projection_restores_the_box():
    k = 3
    x = images(2, 1, 5, 5, seed=13)
    g = torch.Generator().manual_seed(14)
    V = T.identity_plan(x, k) + 0.5 * torch.rand(2, 1, 25, k * k, generator=g, dtype=DT)
    threat = WassersteinBall(0.3, kernel_size=k)
    loose = project_plan(V, x, threat)
    assert T.column_sums(loose, 5, 5).max() > 1.05
    P = capacity_projection(V, x, threat, steps=200)
    check_feasible(P, x, threat)
    assert T.column_sums(P, 5, 5).max() <= 1 + 1e-3  # approximate, as the authors'


def test_rows_subset_matches_the_rows_of_the_subset():
    x = images(5, 2, 4, 4, seed=15)
    rows = PlanRows(x, 3, 1)
    pick = torch.tensor([1, 3, 4])
    sub, sel = rows.subset(pick)
    ref = PlanRows(x[pick], 3, 1)
    for name in ("index", "mass", "example", "valid", "target", "total"):
        torch.testing.assert_close(getattr(sub, name), getattr(ref, name))
    torch.testing.assert_close(rows.mass[sel], ref.mass)


def test_rows_columns_and_at_targets_are_the_plain_scatter_and_gather_bit_for_bit():
    # The fast CPU forms (scatter_add_, index_select) must not change a single bit of what the attacks
    # compute: committed checkpoints of adversarial training are reproduced from their commands.
    g = torch.Generator().manual_seed(17)
    for dtype in (torch.float32, torch.float64):
        x = images(6, 1, 9, 9, seed=16).to(dtype)
        rows = PlanRows(x, 5, 1)
        R = (torch.rand(rows.index.shape[0], 25, generator=g, dtype=torch.float64) ** 4).to(dtype)
        flat = (R * rows.validf).reshape(-1)
        ref = torch.zeros(rows.size, dtype=dtype).index_add_(0, rows.target.reshape(-1), flat)
        assert torch.equal(rows.columns(R), ref)
        pixels = torch.rand(x.shape, generator=g, dtype=torch.float64).to(dtype)
        assert torch.equal(rows.at_targets(pixels), pixels.reshape(-1)[rows.target] * rows.validf)
        # ... and the simplex support with the cached off-window mask is the one built from validf.
        V = torch.randn(rows.index.shape[0], 25, generator=g, dtype=torch.float64).to(dtype)
        fast = _simplex_support(V, rows.mass, rows.validf, rows.offwindow)
        plain = _simplex_support(V, rows.mass, rows.validf)
        assert all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))


# ------------------------------------------------------------------------------ attacks


class Tiny(torch.nn.Module):
    def __init__(self, c=1, h=8, w=8, classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(classes, c * h * w, generator=g) * 2)

    def forward(self, x):
        return x.flatten(1) @ self.w.t().to(x.dtype)


@pytest.fixture(scope="module")
def setting():
    model = Tiny().eval()
    x = images(12, 1, 8, 8, seed=21).float()
    labels = model(x).argmax(1)
    return model, x, labels


@pytest.mark.parametrize("cls", [FrankWolfeBox, PGDBox])
def test_box_aware_attacks_lose_nothing_to_the_repair(setting, cls):
    model, x, labels = setting
    res = cls(steps=40)(model, x, labels, threat=WassersteinBall(0.1))
    assert res.success.any()
    assert res.certified.all()
    # Every iterate is feasible: the common ending keeps (almost) all moved mass, and claimed == verified.
    assert (res.repair > 1 - 1e-4).all(), res.repair
    assert res.info["claimed_success"] == res.success.tolist()


def test_faithful_attacks_report_claimed_and_verified_success(setting):
    model, x, labels = setting
    for attack in (ExactProjectionPGD(steps=30), FrankWolfe(steps=30, solver="bisection")):
        res = attack(model, x, labels, threat=WassersteinBall(0.1))
        claimed = torch.tensor(res.info["claimed_success"])
        assert claimed.any() and res.certified.all()
        assert res.info["multiplier_evaluations"] > 0
        # Verified successes can only be fewer than the claimed ones... up to the repair re-evaluation.
        assert int(res.success.sum()) <= int(claimed.sum()) + 1


def test_post_projection_brings_pgd_inside_the_box(setting):
    model, x, labels = setting
    threat = WassersteinBall(0.2)
    plain = ExactProjectionPGD(steps=20, stop_on_success=False)(model, x, labels, threat=threat)
    post = ExactProjectionPGD(steps=20, stop_on_success=False, post_projection=True, post_steps=200)(
        model, x, labels, threat=threat)
    # The plain attack leaves the box, so the common ending cuts its plans back; post-projected ones less.
    assert plain.repair.min() < 0.99
    assert post.repair.mean() > plain.repair.mean()


def test_restarts_are_seeded_per_example(setting):
    model, x, labels = setting
    threat = WassersteinBall(0.03)
    one = FrankWolfeBox(steps=8, restarts=1)(model, x, labels, threat=threat)
    a = FrankWolfeBox(steps=8, restarts=3)(model, x, labels, threat=threat, seed=5)
    b = FrankWolfeBox(steps=8, restarts=3)(model, x, labels, threat=threat, seed=5)
    torch.testing.assert_close(a.adversarial, b.adversarial)
    assert (a.success >= one.success).all()  # restarts only add successes (the first run is the same)
    assert a.certified.all()


def test_margin_loss_and_targeted(setting):
    model, x, labels = setting
    targets = (labels + 1) % 3
    attack = FrankWolfeBox(steps=30, loss="margin")
    res = attack(model, x, labels, threat=WassersteinBall(0.3), targets=targets)
    assert res.certified.all()
    hit = model(res.adversarial).argmax(1) == targets
    assert (res.success == hit).all() and res.success.any()


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(steps=1.5), dict(loss="hinge"), dict(restarts=0),
                                    dict(stop_on_success=1)])
@pytest.mark.parametrize("name", ["pgd_wu", "frank_wolfe", "frank_wolfe_box", "pgd_box"])
def test_bad_arguments_raise_value_errors_naming_them(name, kwargs):
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=key):
        get(name, **kwargs)


@pytest.mark.parametrize("name,kwargs", [("pgd_wu", dict(lr=-1.0)), ("pgd_wu", dict(solver="exact")),
                                         ("frank_wolfe", dict(gamma=0.0)),
                                         ("frank_wolfe_box", dict(dual_lr=math.inf)),
                                         ("pgd_box", dict(newton_steps=0))])
def test_bad_hyperparameters_raise(name, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        get(name, **kwargs)


@pytest.mark.parametrize("name", ["pgd_wu", "frank_wolfe", "frank_wolfe_box", "pgd_box"])
def test_config_file_is_the_constructor_with_its_defaults(name):
    cfg = yaml.safe_load((REPO / "wasserstein_attacks" / "conf" / "attack" / f"{name}.yaml").read_text())
    cls = base._REGISTRY[name]
    assert cfg.pop("_target_") == f"wasserstein_attacks.attacks.{cls.__name__}"
    params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    assert cfg == params


@pytest.mark.parametrize("fn", [project_plan, entropic_lmo, capacity_projection])
def test_public_kernels_validate_their_inputs(fn):
    x = images(2, 1, 4, 4)
    good = T.identity_plan(x, 5)
    with pytest.raises(ValueError, match="k\\*k"):
        fn(good[:, :, :, :9], x, WassersteinBall(0.1))
    with pytest.raises(ValueError, match="x"):
        fn(good, x * 2, WassersteinBall(0.1))
    with pytest.raises(ValueError, match="threat"):
        fn(good, x, None)


def test_apgd_checkpoints_follow_croce_and_hein():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 of the iterations; values: steps since the last one.
    assert apgd_checkpoints(100) == {22: 22, 41: 19, 57: 16, 70: 13, 80: 10, 87: 7, 93: 6, 99: 6}
    assert list(apgd_checkpoints(10)) == [3, 5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_apgd_schedule_is_feasible_deterministic_and_not_weaker(setting, loss):
    model, x, labels = setting
    threat = WassersteinBall(0.05)
    fixed = PGDBox(steps=40, loss=loss)(model, x, labels, threat=threat)
    a = PGDBox(steps=40, loss=loss, schedule="apgd", lr=1.0)(model, x, labels, threat=threat, seed=3)
    b = PGDBox(steps=40, loss=loss, schedule="apgd", lr=1.0)(model, x, labels, threat=threat, seed=3)
    torch.testing.assert_close(a.adversarial, b.adversarial)
    assert a.certified.all() and (a.repair > 1 - 1e-4).all()
    assert a.info["claimed_success"] == a.success.tolist()
    assert int(a.success.sum()) >= int(fixed.success.sum())


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule"):
        PGDBox(schedule="cosine")


def test_the_shared_loop_hands_a_step_the_loss_it_differentiated(setting):
    # APGD's checkpoints compare losses: the objective a step sees must be the loss of the iterate whose
    # gradient it got, example by example (examples fooled early drop out of the batch).
    model, x, labels = setting
    seen = []

    def step(sub, grad, t, idx):
        expected = base.loss_per_example(model(sub["var"]), labels[idx], "margin")
        torch.testing.assert_close(sub["objective"], expected)
        seen.append(idx.numel())
        return {"var": (sub["var"] + 0.05 * grad.sign()).clamp(0, 1)}

    state = {"var": x.clone(), "objective": torch.zeros(x.shape[0])}
    base.iterate(model, x, labels, None, steps=6, loss="margin", state=state, image=lambda s: s["var"],
                 step=step)
    assert len(seen) >= 2 and seen[-1] < seen[0]  # examples fooled on the way left the batch


def test_a_plan_attack_begins_from_a_given_plan():
    """``start``: an adversarial starting plan is a success at once; bad starts are refused by name."""
    from wasserstein_attacks.attacks import ProjectedSinkhorn

    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8) * 0.5
    model = Tiny().eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    ball = WassersteinBall(eps=0.5)
    first = PGDBox(steps=50, loss="margin")(model, x, y, threat=ball)
    assert first.success.any(), "the toy model must be breakable at this radius"
    again = PGDBox(steps=50, loss="margin")(model, x, y, threat=ball, start=first.plan)
    won = first.success
    assert again.success[won].all() and (again.iterations[won] == 0).all()
    # A start far outside the ball (every row spread over its window, ten times the mass) still ends
    # in a verified member of the ball, for a projected and a Frank-Wolfe attack alike.
    wild = torch.rand_like(first.plan) * 10
    for attack in (PGDBox(steps=5, loss="margin"), FrankWolfe(steps=5, loss="margin")):
        res = attack(model, x, y, threat=ball, start=wild)
        assert res.certified.all() and res.adversarial.min() >= 0 and res.adversarial.max() <= 1
        exact = ball.distance(x, res.adversarial)
        assert (exact <= ball.eps * (1 + ball.cost_tol)).all()
    with pytest.raises(ValueError, match=r"start must be a local plan tensor \[B, C, H\*W, k\*k\]"):
        PGDBox(steps=2)(model, x, y, threat=ball, start=first.plan[:2])
    with pytest.raises(ValueError, match="start must be finite"):
        PGDBox(steps=2)(model, x, y, threat=ball, start=torch.full_like(first.plan, float("nan")))
    with pytest.raises(ValueError, match="ProjectedSinkhorn does not begin from a plan"):
        ProjectedSinkhorn(steps=2)(model, x, y, threat=ball, start=first.plan)
