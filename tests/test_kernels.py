"""Triton kernels of the plan solvers against their torch reference (Triton's CPU interpreter, tiny sizes).

Run with ``TRITON_INTERPRET=1`` (the whole module is skipped without it: on a CPU Triton runs only in its
interpreter; the kernels are only dispatched to for CUDA tensors, or under the interpreter in mode
"triton"). Each kernel is compared with the torch path on random and edge-case inputs (an all-zero
image, saturated pixels, k = 3, 5, 7, C = 1 and 3), and an attack run through the kernels is certified
and equals the torch run.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from wasserstein_attacks import WassersteinBall, _kernels
from wasserstein_attacks import transport as T
from wasserstein_attacks.solvers import PlanRows, cost_budget, fit_box
from wasserstein_attacks.solvers.lmo import lmo_rows
from wasserstein_attacks.solvers.simplex import project_rows

DT = torch.float64


def test_dispatch_modes(monkeypatch):
    """CPU tensors take the torch path unless forced under the interpreter; the env and context switch."""
    x = torch.zeros(2)
    monkeypatch.setenv("WATTACK_KERNELS", "torch")
    assert _kernels.kernels_mode() == "torch" and not _kernels.use_triton(x)
    monkeypatch.setenv("WATTACK_KERNELS", "auto")
    assert not _kernels.use_triton(x)  # the reference is the CPU path
    with _kernels.kernels("triton"):
        assert _kernels.use_triton(x) == (_kernels.interpreting() and _kernels.triton_available())
        with _kernels.kernels("torch"):
            assert not _kernels.use_triton(x)
    assert _kernels.kernels_mode() == "auto"
    with pytest.raises(ValueError, match="kernel mode"):
        _kernels.set_kernels("cuda")


needs_interpreter = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
    reason="on a CPU Triton runs only in its interpreter: set TRITON_INTERPRET=1 (and install triton)",
)


@pytest.fixture
def triton_mode():
    with _kernels.kernels("triton"):
        yield


def images(b, c, h, w, seed, saturate=True):
    """Sparse images in [0, 1]; example 1 all zero (no rows), some pixels at exactly 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=DT)
    x = torch.where(x < 0.4, torch.zeros_like(x), x)
    if saturate:
        x = torch.where(x > 0.75, torch.ones_like(x), x)
    x[1] = 0.0
    return x


def problem(k, c, seed=0, h=5, w=6):
    x = images(3, c, h, w, seed)
    rows = PlanRows(x, k, 1)
    g = torch.Generator().manual_seed(seed + 1)
    G = torch.randn(rows.index.shape[0], k * k, generator=g, dtype=DT) * rows.validf
    budget = cost_budget(rows, torch.tensor([0.1, 0.2, 0.3], dtype=DT))
    return x, rows, G, budget


def both(fn, *args, **kwargs):
    ref = fn(*args, **kwargs)
    with _kernels.kernels("triton"):
        out = fn(*args, **kwargs)
    return ref, out


def assert_same(ref, out):
    torch.testing.assert_close(out[0], ref[0], atol=1e-9, rtol=1e-9)  # plan rows
    torch.testing.assert_close(out[1], ref[1], atol=1e-9, rtol=1e-7)  # multipliers


def assert_feasible(rows, S, budget):
    assert (S >= -1e-12).all() and (S * (1 - rows.validf)).abs().max() <= 1e-12
    torch.testing.assert_close(S.sum(-1), rows.mass, atol=1e-12, rtol=0)
    assert (rows.transport_cost(S) <= budget * (1 + 1e-12) + 1e-12).all()


@needs_interpreter
@pytest.mark.parametrize(("k", "c"), [(3, 1), (5, 1), (7, 1), (5, 3)])
def test_lmo_kernel_matches_torch(k, c):
    x, rows, G, budget = problem(k, c)
    price = 0.2 * torch.rand(G.shape, dtype=DT, generator=torch.Generator().manual_seed(3)) * rows.validf
    start = torch.tensor([0.0, 0.0, 0.5], dtype=DT)
    ref, out = both(lmo_rows, rows, G, budget, gamma=0.05, solver="newton", steps=8, tol=1e-4, start=start,
                    price=price if c == 3 else None)
    assert_same(ref, out)
    assert_feasible(rows, out[0], budget)
    # The kernel reports the largest per-example evaluation count (the reference counts batch rounds).
    assert 0 < int(out[2]) <= ref[2]


@needs_interpreter
def test_lmo_kernel_bisection_and_small_gamma():
    x, rows, G, budget = problem(5, 1, seed=4)
    assert_same(*both(lmo_rows, rows, G, budget, gamma=0.05, solver="bisection", steps=30, tol=1e-4))
    # gamma = 1e-3 (Wu et al.): cost nearly a step function, the Newton search mixes its bracket's ends.
    ref, out = both(lmo_rows, rows, G, budget, gamma=1e-3, solver="newton", steps=6, tol=1e-4)
    assert_same(ref, out)
    assert_feasible(rows, out[0], budget)


@needs_interpreter
@pytest.mark.parametrize(("k", "c", "solver"), [(3, 1, "newton"), (5, 3, "newton"), (7, 1, "newton"),
                                                (5, 1, "bisection")])
def test_projection_kernel_matches_torch(k, c, solver):
    x, rows, G, budget = problem(k, c, seed=k)
    V = rows.identity() + 0.5 * G
    price = 0.1 * rows.validf if c == 3 else None
    ref, out = both(project_rows, rows, V, budget, solver=solver, steps=12, tol=1e-6, price=price)
    assert_same(ref, out)
    assert_feasible(rows, out[0], budget)


@needs_interpreter
def test_projection_kernel_ties_and_given_upper():
    """Tied entries (a flat row) and an explicit bracket (as ExactProjectionPGD passes)."""
    x, rows, G, budget = problem(3, 1, seed=7)
    V = torch.where(rows.validf > 0, torch.full_like(G, 0.25), G)
    upper = torch.full_like(budget, 5.0)
    ref, out = both(project_rows, rows, V, budget, solver="bisection", steps=25, tol=1e-6, upper=upper)
    assert_same(ref, out)


@needs_interpreter
@pytest.mark.parametrize(("k", "c"), [(3, 1), (5, 3), (7, 1)])
def test_box_repair_kernel_matches_torch(k, c):
    x = images(2, c, 6, 6, seed=k)
    x[1] = torch.where(torch.rand(x[1].shape, dtype=DT, generator=torch.Generator().manual_seed(1)) > 0.3,
                       1.0, 0.0)  # mostly saturated pixels: overflow cascades
    rows = PlanRows(x, k, 2)
    R = torch.rand(rows.index.shape[0], k * k, dtype=DT, generator=torch.Generator().manual_seed(2))
    R = R * rows.validf
    R = R / R.sum(-1, keepdim=True) * rows.mass[:, None]
    assert (rows.columns(R) > 1).any()
    ref, out = both(fit_box, rows, R)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    assert rows.columns(out).max() <= 1 + 1e-12
    cols_ref, cols = both(rows.columns, R)
    torch.testing.assert_close(cols, cols_ref, atol=1e-12, rtol=0)


@needs_interpreter
@pytest.mark.parametrize(("k", "c"), [(3, 1), (5, 3), (7, 1)])
def test_grid_kernels_match_torch(k, c):
    g = torch.Generator().manual_seed(k)
    plan = torch.rand(2, c, 5 * 4, k * k, dtype=DT, generator=g) * T.valid_mask(5, 4, k)
    image = torch.rand(2, c, 5, 4, dtype=DT, generator=g)
    torch.testing.assert_close(*both(T.column_sums, plan, 5, 4), atol=1e-12, rtol=0)
    torch.testing.assert_close(*both(T.gather_neighbours, image, k), atol=0, rtol=0)
    # Tensors that need a gradient stay on the (differentiable) torch path.
    with _kernels.kernels("triton"):
        assert T.column_sums(plan.requires_grad_(), 5, 4).requires_grad


@needs_interpreter
@pytest.mark.parametrize("name", ["frank_wolfe", "frank_wolfe_box", "pgd_box"])
def test_attack_through_kernels_is_certified_and_equal(name):
    """A tiny attack run through the kernels: every output certified, same results as the torch path."""
    from wasserstein_attacks.attacks import get
    from wasserstein_attacks.models import build_model

    x = images(3, 1, 8, 8, seed=11).float()
    x[1, 0, 2:5, 3] = 1.0  # the otherwise empty example gets a stroke of saturated pixels
    y = torch.tensor([0, 1, 2])
    model = build_model("tiny", seed=0).eval()
    threat = WassersteinBall(0.3, p=1, kernel_size=5)
    kwargs = dict(steps=3, stop_on_success=False)
    ref = get(name, **kwargs)(model, x, y, threat=threat, seed=0)
    with _kernels.kernels("triton"):
        out = get(name, **kwargs)(model, x, y, threat=threat, seed=0)
    assert out.certified.all() and ref.certified.all()
    assert torch.equal(out.success, ref.success)
    torch.testing.assert_close(out.cost, ref.cost, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.adversarial, ref.adversarial, atol=1e-4, rtol=1e-4)
