"""WassersteinBall: the plan certificate, containment, input validation and degenerate images."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from wasserstein_attacks import Certificate, WassersteinBall
from wasserstein_attacks import transport as T
from wasserstein_attacks.threat import ball as threat_module

FIELDS = (
    "feasible",
    "cost",
    "negative",
    "row_error",
    "column_error",
    "outside_mass",
    "box_violation",
    "mass_error",
)


def flat(value=0.5, h=5, w=5, c=1):
    return torch.full((1, c, h, w), value, dtype=torch.float64)


def entry(h, w, k, pixel, offset):
    """(row, offset index) of the plan entry moving pixel ``(h, w)`` by ``offset``."""
    r = k // 2
    return pixel[0] * w + pixel[1], (offset[0] + r) * k + offset[1] + r


def random_feasible(b, c, h, w, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=torch.float64) * 0.5
    plan = torch.rand(b, c, h * w, k * k, generator=g, dtype=torch.float64) * T.valid_mask(h, w, k)
    plan = plan / plan.sum(-1, keepdim=True) * x.reshape(b, c, h * w, 1)
    return x, plan, T.column_sums(plan, h, w)


def assert_same_certificate(a: Certificate, b: Certificate):
    for name in FIELDS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------- known plans


def test_identity_plan_is_certified_at_radius_zero():
    x = flat()
    cert = WassersteinBall(0.0).certify(x, x, T.identity_plan(x, 5))
    assert cert.feasible.tolist() == [True]
    for name in FIELDS[1:]:
        assert getattr(cert, name).tolist() == [0.0], name
        assert getattr(cert, name).dtype == torch.float64


def test_one_pixel_shift_plan_costs_one():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 0.7
    plan = torch.zeros(1, 1, 25, 25, dtype=torch.float64)
    plan[0, 0, 12, entry(5, 5, 5, (2, 2), (0, 1))[1]] = 0.7
    y = T.column_sums(plan, 5, 5)
    assert y[0, 0, 2, 3] == 0.7
    assert WassersteinBall(1.0).certify(x, y, plan).cost.item() == 1.0
    assert WassersteinBall(1.0).certify(x, y, plan).feasible.item()
    assert not WassersteinBall(0.99).certify(x, y, plan).feasible.item()
    # cost_tol: relative slack on the radius, recorded in describe().
    assert WassersteinBall(0.99995).certify(x, y, plan).feasible.item()
    assert not WassersteinBall(0.99995, cost_tol=0.0).certify(x, y, plan).feasible.item()
    # p = 2: same move, same cost; a diagonal move costs 2.
    assert WassersteinBall(1.0, p=2).certify(x, y, plan).cost.item() == 1.0
    plan2 = torch.zeros_like(plan)
    plan2[0, 0, 12, entry(5, 5, 5, (2, 2), (1, 1))[1]] = 0.7
    y2 = T.column_sums(plan2, 5, 5)
    assert WassersteinBall(2.0, p=2).certify(x, y2, plan2).cost.item() == 2.0
    assert WassersteinBall(2.0, p=1).certify(x, y2, plan2).cost.item() == pytest.approx(
        math.sqrt(2), rel=1e-15
    )


def test_batched_certificate_matches_direct_sums_and_per_example_calls(monkeypatch):
    x, plan, y = random_feasible(9, 1, 28, 28, 5, seed=0)
    ball = WassersteinBall(0.5, box=None)
    whole = ball.certify(x, y, plan)
    # Chunks of 2 examples (the last one short) give the same certificate as one chunk.
    monkeypatch.setattr(threat_module, "_CERTIFY_CHUNK", 2 * 784 * 25)
    cert = ball.certify(x, y, plan)
    assert_same_certificate(cert, whole)
    torch.testing.assert_close(cert.cost, T.plan_cost(plan, 1), rtol=1e-12, atol=0)
    assert (cert.row_error <= 1e-15).all() and (cert.column_error <= 1e-15).all()
    for i in (0, 4, 8):
        one = ball.certify(x[i : i + 1], y[i : i + 1], plan[i : i + 1])
        for name in FIELDS:
            torch.testing.assert_close(getattr(one, name)[0], getattr(cert, name)[i], msg=name)
    # float32 plans are certified in float64.
    c32 = ball.certify(x.float(), y.float(), plan.float())
    assert c32.cost.dtype == torch.float64
    torch.testing.assert_close(
        c32.cost, T.plan_cost(plan.float().double(), 1, mass=x.float().double().sum((1, 2, 3)))
    )


# ---------------------------------------------------------------- failure modes


C_MAX_5 = 2 * math.sqrt(2)  # dearest move of the 5x5 window, p = 1


def test_negative_entry_is_detected():
    x = flat()
    plan = T.identity_plan(x, 5)
    i, left = entry(5, 5, 5, (2, 2), (0, -1))
    _, right = entry(5, 5, 5, (2, 2), (0, 1))
    plan[0, 0, i, left] = -0.1  # row sum unchanged, raw cost 0: the sign check and the clamp catch it
    plan[0, 0, i, right] = 0.1
    y = T.column_sums(plan, 5, 5)
    cert = WassersteinBall(1.0).certify(x, y, plan)
    assert not cert.feasible.item()
    n = x.sum().item()
    assert cert.negative.item() == pytest.approx(-0.1 / n, rel=1e-12)
    # The clamped plan sends 0.1 too much from the row and 0.1 too little to the left pixel; both are
    # charged at the dearest move, on top of the clamped plan's own cost (0.1 moved one pixel).
    assert cert.row_error.item() == pytest.approx(0.1 / n, rel=1e-12)
    assert cert.column_error.item() == pytest.approx(0.1 / n, rel=1e-12)
    assert cert.cost.item() == pytest.approx((0.1 + C_MAX_5 * 0.2) / n, rel=1e-12)
    assert cert.outside_mass.item() == 0


def test_wrong_row_sums_are_detected():
    x = flat()
    other = x.clone()
    other[0, 0, 2, 2], other[0, 0, 2, 3] = 0.3, 0.7  # same mass, different source image
    cert = WassersteinBall(1.0).certify(x, other, T.identity_plan(other, 5))
    assert not cert.feasible.item()
    # Total L1 over pixels: 0.2 too little at one pixel, 0.2 too much at the next.
    assert cert.row_error.item() == pytest.approx(0.4 / x.sum().item(), rel=1e-12)
    assert cert.column_error.item() == 0 and cert.mass_error.item() == pytest.approx(0, abs=1e-15)


def test_wrong_column_sums_are_detected_and_charged():
    x = flat()
    claimed = x.clone()
    claimed[0, 0, 2, 2], claimed[0, 0, 2, 3] = 0.3, 0.7
    n = x.sum().item()
    cert = WassersteinBall(1.0).certify(x, claimed, T.identity_plan(x, 5))
    assert not cert.feasible.item()
    assert cert.column_error.item() == pytest.approx(0.4 / n, rel=1e-12)
    assert cert.row_error.item() == 0
    assert cert.cost.item() == pytest.approx(C_MAX_5 * 0.4 / n, rel=1e-12)
    # Within the mass tolerance the mismatch is accepted, but charged in the cost.
    small = x.clone()
    small[0, 0, 2, 2] -= 1e-6 * n
    small[0, 0, 2, 3] += 1e-6 * n
    cert = WassersteinBall(1.0).certify(x, small, T.identity_plan(x, 5))
    assert cert.feasible.item()
    assert cert.cost.item() == pytest.approx(C_MAX_5 * 2e-6, rel=1e-9)
    assert (
        not WassersteinBall(C_MAX_5 * 2e-6 * 0.99, cost_tol=0)
        .certify(x, small, T.identity_plan(x, 5))
        .feasible
    )


def test_mass_on_out_of_image_entries_is_detected():
    x = flat()
    plan = T.identity_plan(x, 5)
    i, up = entry(5, 5, 5, (0, 0), (-1, 0))  # from the corner, up: outside the image
    assert not T.valid_mask(5, 5, 5)[i, up]
    plan[0, 0, i, T.stay_index(5)] = 0.4
    plan[0, 0, i, up] = 0.1
    n = x.sum().item()
    cert = WassersteinBall(10.0, box=None).certify(x, T.column_sums(plan, 5, 5), plan)
    assert not cert.feasible.item()
    assert cert.outside_mass.item() == pytest.approx(0.1 / n, rel=1e-12)
    assert cert.row_error.item() == 0
    # A negative out-of-image entry cannot cancel a positive one: it is clamped to 0, and the row it
    # leaves short shows up as a row error instead.
    i2, left = entry(5, 5, 5, (4, 0), (0, -1))
    plan[0, 0, i2, left] = -0.1
    plan[0, 0, i2, T.stay_index(5)] = 0.6
    cert = WassersteinBall(10.0, box=None).certify(x, T.column_sums(plan, 5, 5), plan)
    assert cert.outside_mass.item() == pytest.approx(0.1 / n, rel=1e-12)
    assert cert.row_error.item() == pytest.approx(0.1 / n, rel=1e-12)
    assert cert.negative.item() == pytest.approx(-0.1 / n, rel=1e-12)


def test_box_violation_is_detected_and_ignored_without_a_box():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = x[0, 0, 2, 3] = 0.8
    plan = T.identity_plan(x, 5)
    i, left = entry(5, 5, 5, (2, 3), (0, -1))
    plan[0, 0, i, T.stay_index(5)] = 0.4
    plan[0, 0, i, left] = 0.4
    y = T.column_sums(plan, 5, 5)
    assert y.max().item() == pytest.approx(1.2)
    boxed = WassersteinBall(1.0).certify(x, y, plan)
    assert not boxed.feasible.item()
    assert boxed.box_violation.item() == pytest.approx(0.2, rel=1e-12)
    free = WassersteinBall(1.0, box=None).certify(x, y, plan)
    assert free.feasible.item() and free.box_violation.item() == 0
    assert free.cost.item() == pytest.approx(0.4 / 1.6, rel=1e-12)
    assert not WassersteinBall(1.0).contains(x, y).item()
    assert WassersteinBall(1.0, box=None).contains(x, y).item()


def test_cost_over_eps_is_detected():
    x, plan, y = random_feasible(1, 1, 6, 6, 3, seed=1)
    cost = T.plan_cost(plan, 1).item()
    assert WassersteinBall(cost, kernel_size=3, box=None).certify(x, y, plan).feasible.item()
    over = WassersteinBall(cost * 0.99, kernel_size=3, box=None).certify(x, y, plan)
    assert not over.feasible.item()
    assert over.cost.item() == pytest.approx(cost, rel=1e-14)


def test_channel_mass_change_is_detected():
    x = flat(c=2)
    y = x.clone()
    y[0, 0] *= 1.1
    y[0, 1] *= 0.9  # same total, different channel masses: no plan can produce it
    cert = WassersteinBall(1.0).certify(x, y, T.identity_plan(x, 5))
    assert not cert.feasible.item()
    assert cert.mass_error.item() == pytest.approx(0.05, rel=1e-12)


def test_non_finite_plan_entries_are_detected():
    x, plan, y = random_feasible(3, 1, 5, 5, 3, seed=2)
    bad = plan.clone()
    bad[1, 0, 4, 4] = math.nan
    bad[2, 0, 0, 4] = math.inf
    cert = WassersteinBall(10.0, kernel_size=3, box=None).certify(x, y, bad)
    assert cert.feasible.tolist() == [True, False, False]
    assert torch.isfinite(cert.negative).all() and torch.isfinite(cert.row_error).all()


def test_per_example_eps_equals_scalar_eps():
    x, plan, y = random_feasible(3, 1, 6, 6, 5, seed=3)
    costs = T.plan_cost(plan, 1)
    eps = costs.max().item()
    scalar = WassersteinBall(eps, box=None).certify(x, y, plan)
    tensor = WassersteinBall(torch.full((3,), eps), box=None).certify(x, y, plan)
    assert_same_certificate(scalar, tensor)
    assert scalar.feasible.all()
    # Per-example radii decide per example.
    mixed = WassersteinBall(torch.stack([costs[0] * 2, costs[1] * 0.5, costs[2]]), box=None).certify(
        x, y, plan
    )
    assert mixed.feasible.tolist() == [True, False, True]
    torch.testing.assert_close(mixed.cost, scalar.cost, rtol=0, atol=0)


# ---------------------------------------------------------------- bad input


def _ball_calls(ball, x, y, plan):
    return [lambda: ball.certify(x, y, plan), lambda: ball.distance(x, y), lambda: ball.contains(x, y)]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda x: x + 0.6, r"x must lie in \[0.0, 1.0\]"),
        (lambda x: x - 0.5, r"x must lie in"),
        (lambda x: x.masked_fill(x > 0.3, math.nan), "x contains NaN"),
        (lambda x: x[0], r"x must have shape \[B, C, H, W\]"),
        (lambda x: (x * 255).to(torch.uint8), "x must be a floating-point tensor"),
        (lambda x: x.numpy(), "x must be a torch.Tensor"),
    ],
)
def test_bad_x_is_rejected_by_name(make, match):
    x, plan, y = random_feasible(2, 1, 5, 5, 5, seed=4)
    for call in _ball_calls(WassersteinBall(0.1), make(x), y, plan):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda y: y.masked_fill(y > 0.2, math.nan), "x_adv contains NaN"),
        (lambda y: y[:, :, :4], "x_adv must have the shape of x"),
        (lambda y: y[None], r"x_adv must have shape \[B, C, H, W\]"),
        (lambda y: -y, "x_adv must be non-negative"),
    ],
)
def test_bad_x_adv_is_rejected_by_name(make, match):
    x, plan, y = random_feasible(2, 1, 5, 5, 5, seed=4)
    for call in _ball_calls(WassersteinBall(0.1), x, make(y), plan):
        with pytest.raises(ValueError, match=match):
            call()


def test_bad_plan_is_rejected_by_name():
    x, plan, y = random_feasible(2, 1, 5, 5, 5, seed=4)
    for bad in (plan[..., :9], plan[:1], plan.numpy()):
        with pytest.raises(ValueError, match="plan must have shape"):
            WassersteinBall(0.1).certify(x, y, bad)
    with pytest.raises(ValueError, match="certify needs local plans"):
        WassersteinBall(0.1, kernel_size=None).certify(x, y, plan)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": -0.1}, "eps must be finite and >= 0"),
        ({"eps": math.nan}, "eps must be finite"),
        ({"eps": math.inf}, "eps must be finite"),
        ({"eps": torch.tensor([0.1, -0.2])}, "eps must be finite and >= 0"),
        ({"eps": torch.zeros(2, 2)}, r"eps must be a scalar or a per-example tensor \[B\]"),
        ({"eps": "0.1"}, "eps must be a non-negative float"),
        ({"eps": True}, "eps must be a non-negative float"),
        ({"eps": 0.1, "p": 3}, "p must be 1 or 2"),
        ({"eps": 0.1, "p": True}, "p must be 1 or 2"),
        ({"eps": 0.1, "kernel_size": 4}, "kernel_size must be an odd integer"),
        ({"eps": 0.1, "kernel_size": 1}, "kernel_size must be an odd integer"),
        ({"eps": 0.1, "kernel_size": 5.0}, "kernel_size must be an odd integer"),
        ({"eps": 0.1, "box": (0.0, 255.0)}, "box must be"),
        ({"eps": 0.1, "box": 1}, "box must be"),
        ({"eps": 0.1, "mass_tol": -1e-5}, "mass_tol"),
        ({"eps": 0.1, "cost_tol": math.nan}, "cost_tol"),
    ],
)
def test_bad_ball_parameters_are_rejected_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WassersteinBall(**kwargs)


def test_eps_tensor_must_match_the_batch():
    x, plan, y = random_feasible(2, 1, 5, 5, 5, seed=4)
    ball = WassersteinBall(torch.tensor([0.1, 0.2, 0.3]))
    for call in _ball_calls(ball, x, y, plan):
        with pytest.raises(ValueError, match="eps has 3 entries but the batch has 2"):
            call()
    torch.testing.assert_close(WassersteinBall(0.25).eps_for(3), torch.full((3,), 0.25, dtype=torch.float64))


# ---------------------------------------------------------------- degenerate images


def test_all_black_image_has_a_ball_of_one_point():
    black = torch.zeros(2, 1, 5, 5)
    other = black.clone()
    other[1, 0, 2, 2] = 0.5
    ball = WassersteinBall(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero warnings anywhere
        d = ball.distance(black, other)
        cert = ball.certify(black, black, T.identity_plan(black, 5))
        cert_other = ball.certify(black, other, torch.zeros(2, 1, 25, 25))
        inside = ball.contains(black, other)
        dense = WassersteinBall(0.1, kernel_size=None, p=2).distance(black, other)
    assert d.tolist() == [0.0, math.inf] and dense.tolist() == [0.0, math.inf]
    assert cert.feasible.tolist() == [True, True]
    assert cert.cost.tolist() == [0.0, 0.0]
    for name in FIELDS[1:]:
        assert torch.isfinite(getattr(cert, name)).all(), name
    assert cert_other.feasible.tolist() == [True, False]
    assert cert_other.cost.tolist() == [0.0, math.inf]
    assert inside.tolist() == [True, False]
    # A black image next to a normal one in the same batch changes nothing for the other.
    x, plan, y = random_feasible(1, 1, 5, 5, 5, seed=5)
    mixed = ball.with_eps(10.0).certify(
        torch.cat([black[:1], x.float()]),
        torch.cat([black[:1], y.float()]),
        torch.cat([torch.zeros(1, 1, 25, 25), plan.float()]),
    )
    assert mixed.feasible.tolist() == [True, True]


# ---------------------------------------------------------------- contains / describe


def test_contains_uses_the_exact_distance():
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 0] = 1.0
    y = torch.zeros_like(x)
    y[0, 0, 3, 3] = 1.0
    assert not WassersteinBall(10.0).contains(x, y).item()  # 3 px: outside the 5x5 window
    assert WassersteinBall(3.0, kernel_size=7).contains(x, y).item()
    assert not WassersteinBall(2.9, kernel_size=7).contains(x, y).item()
    assert WassersteinBall(2.9, kernel_size=7).contains(x, y, tol=0.05).item()
    assert WassersteinBall(9.0, kernel_size=None, p=2).contains(x, y).item()


def test_describe_records_the_threat_model():
    ball = WassersteinBall(0.1)
    d = ball.describe()
    json.dumps(d)
    assert d["p"] == 1 and d["kernel_size"] == 5 and d["box"] == [0.0, 1.0] and d["eps"] == 0.1
    assert d["name"] == "W1, local 5x5, box [0,1]"
    assert d["tolerances"] == {"mass_rel": 1e-5, "cost_rel": 1e-4, "box_abs": 1e-6}
    dense = WassersteinBall(torch.tensor([0.1, 0.2]), p=2, kernel_size=None, box=None).describe()
    assert dense["name"] == "W2, dense, box none" and dense["eps"] == pytest.approx([0.1, 0.2])
    assert ball.with_eps(0.3).describe()["eps"] == 0.3 and ball.with_eps(0.3).p == 1
    assert WassersteinBall.from_hu_units(78.4, 784).eps == pytest.approx(0.1)


def test_labels_must_be_class_indices_of_the_model():
    from wasserstein_attacks.threat import check_labels

    # -100 (an "ignore" label) used to pass; out-of-range labels gave a raw IndexError deep in an attack.
    with pytest.raises(ValueError, match=r"labels must be class indices in >= 0, got -100"):
        check_labels(torch.tensor([0, -100]), 2)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 9\], got 10"):
        check_labels(torch.tensor([3, 10]), 2, num_classes=10)
    check_labels(torch.tensor([0, 9]), 2, num_classes=10)


def test_a_window_larger_than_the_image_is_refused_before_any_allocation():
    # k = 10001 on 8x8 images used to try to allocate 51 GB for the plan.
    ball = WassersteinBall(eps=0.1, kernel_size=10001)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"kernel_size must be <= 2 \* max\(H, W\) \+ 5 = 21 for 8x8 images"):
        ball.distance(x, x)
    WassersteinBall(eps=0.1, kernel_size=21).check_window(8, 8)
    WassersteinBall(eps=0.1, kernel_size=5).check_window(1, 1)  # the usual windows on tiny images
