"""The local plan layout [B, C, H*W, k*k] and its kernels, against brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch

from wasserstein_attacks import transport as T
from wasserstein_attacks.transport import grid


def brute_column_sums(plan: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, c, hw, kk = plan.shape
    k = math.isqrt(kk)
    r = k // 2
    out = torch.zeros(b, c, height, width, dtype=plan.dtype)
    for i in range(hw):
        h, w = divmod(i, width)
        for o in range(kk):
            dh, dw = o // k - r, o % k - r
            if 0 <= h + dh < height and 0 <= w + dw < width:
                out[:, :, h + dh, w + dw] += plan[:, :, i, o]
    return out


def random_plan(b, c, h, w, k, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h * w, k * k, generator=g, dtype=dtype)


def test_offsets_are_row_major_with_stay_in_the_centre():
    off = T.window_offsets(5)
    assert off.shape == (25, 2)
    for o in range(25):
        assert tuple(off[o].tolist()) == (o // 5 - 2, o % 5 - 2)
    assert T.stay_index(5) == 12
    assert tuple(off[T.stay_index(5)].tolist()) == (0, 0)
    assert T.stay_index(3) == 4


@pytest.mark.parametrize("bad", [1, 2, 4, 0, -3, 3.0, True, "5", None])
def test_bad_kernel_size_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="kernel_size"):
        T.check_kernel_size(bad)
    with pytest.raises(ValueError, match="kernel_size"):
        T.window_offsets(bad)


def test_offset_costs_known_values():
    s2 = math.sqrt(2.0)
    torch.testing.assert_close(
        T.offset_costs(3, 1),
        torch.tensor([s2, 1, s2, 1, 0, 1, s2, 1, s2], dtype=torch.float64),
        rtol=0,
        atol=0,
    )
    # p = 2: squared distances are integers and must come out exactly (sqrt(2) ** 2 != 2 in floats).
    c2 = T.offset_costs(5, 2)
    assert c2.dtype == torch.float64
    expected = torch.tensor(
        [float(dh * dh + dw * dw) for dh in range(-2, 3) for dw in range(-2, 3)], dtype=torch.float64
    )
    assert torch.equal(c2, expected)
    assert T.offset_costs(5, 1)[0].item() == math.sqrt(8.0)
    assert T.offset_costs(3, 1, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("bad", [0, 3, 1.5, True, "1"])
def test_bad_p_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        T.offset_costs(3, bad)


@pytest.mark.parametrize("h,w,k", [(3, 4, 5), (1, 1, 3), (6, 2, 3), (4, 4, 7)])
def test_valid_mask_and_targets_against_brute_force(h, w, k):
    valid = T.valid_mask(h, w, k)
    targets = T.window_targets(h, w, k)
    assert valid.shape == targets.shape == (h * w, k * k)
    r = k // 2
    for i in range(h * w):
        hh, ww = divmod(i, w)
        for o in range(k * k):
            th, tw = hh + o // k - r, ww + o % k - r
            inside = 0 <= th < h and 0 <= tw < w
            assert bool(valid[i, o]) == inside
            assert int(targets[i, o]) == (th * w + tw if inside else -1)


def test_cached_tables_cannot_be_corrupted_by_callers():
    m = T.valid_mask(3, 3, 3)
    m.fill_(False)
    assert T.valid_mask(3, 3, 3).sum() > 0
    t = T.window_targets(3, 3, 3)
    t.fill_(7)
    assert int(T.window_targets(3, 3, 3)[0, 0]) == -1


def test_identity_plan_moves_nothing():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 4, 5, generator=g)
    plan = T.identity_plan(x, 5)
    assert plan.shape == (2, 3, 20, 25) and plan.dtype == x.dtype
    torch.testing.assert_close(T.row_sums(plan, 4, 5), x, rtol=0, atol=0)
    torch.testing.assert_close(T.column_sums(plan, 4, 5), x, rtol=0, atol=0)
    torch.testing.assert_close(T.plan_cost(plan, 1), torch.zeros(2), rtol=0, atol=0)
    # All mass is on the stay entry.
    assert torch.equal(plan.sum(-1), plan[..., T.stay_index(5)])


@pytest.mark.parametrize("b,c,h,w,k", [(2, 1, 5, 5, 3), (1, 3, 4, 6, 5), (3, 2, 2, 7, 7), (1, 1, 1, 1, 3)])
def test_column_sums_match_brute_force_and_drop_off_image_mass(b, c, h, w, k):
    plan = random_plan(b, c, h, w, k, seed=b * 100 + k)  # mass on every entry, off-image ones included
    expected = brute_column_sums(plan, h, w)
    torch.testing.assert_close(T.column_sums(plan, h, w), expected)
    torch.testing.assert_close(grid._column_sums_fold(plan, h, w), expected)
    torch.testing.assert_close(T.row_sums(plan, h, w), plan.sum(-1).reshape(b, c, h, w), rtol=0, atol=0)
    # A non-contiguous plan gives the same answer.
    nc = plan.transpose(0, 1).contiguous().transpose(0, 1)
    assert not nc.is_contiguous() or b == 1 or c == 1
    torch.testing.assert_close(T.column_sums(nc, h, w), expected)


def test_column_sums_float32_and_shape_errors():
    plan = random_plan(2, 1, 4, 4, 3, dtype=torch.float32)
    out = T.column_sums(plan, 4, 4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, brute_column_sums(plan, 4, 4))
    with pytest.raises(ValueError, match="plan must have shape"):
        T.column_sums(plan, 4, 5)
    with pytest.raises(ValueError, match="plan must have shape"):
        T.column_sums(torch.zeros(1, 1, 16, 8), 4, 4)


def test_gather_neighbours_is_the_adjoint_of_column_sums():
    b, c, h, w, k = 2, 2, 5, 4, 5
    plan = random_plan(b, c, h, w, k, seed=3)
    g = torch.Generator().manual_seed(4)
    img = torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    lhs = (T.column_sums(plan, h, w) * img).sum()
    gathered = T.gather_neighbours(img, k)
    assert gathered.shape == plan.shape
    rhs = (plan * gathered).sum()
    torch.testing.assert_close(lhs, rhs)
    # Off-image entries read zero.
    assert torch.all(gathered[..., ~T.valid_mask(h, w, k)] == 0)
    # And autograd through column_sums agrees.
    p = plan.clone().requires_grad_(True)
    (T.column_sums(p, h, w) * img).sum().backward()
    torch.testing.assert_close(p.grad, gathered * T.valid_mask(h, w, k))


def delta_plan(h, w, k, src, offset, mass=1.0):
    """A plan moving ``mass`` from pixel ``src = (h, w)`` by ``offset = (dh, dw)``."""
    r = k // 2
    plan = torch.zeros(1, 1, h * w, k * k, dtype=torch.float64)
    plan[0, 0, src[0] * w + src[1], (offset[0] + r) * k + offset[1] + r] = mass
    return plan


def test_plan_cost_known_answers():
    assert T.plan_cost(delta_plan(5, 5, 5, (2, 2), (0, 1)), 1).item() == 1.0
    assert T.plan_cost(delta_plan(5, 5, 5, (2, 2), (1, 1), mass=0.3), 1).item() == pytest.approx(
        math.sqrt(2), rel=1e-15
    )
    assert T.plan_cost(delta_plan(5, 5, 5, (2, 2), (1, 1), mass=0.5), 2).item() == 2.0
    assert T.plan_cost(delta_plan(5, 5, 5, (2, 2), (2, -2)), 2).item() == 8.0
    # Normalised by the given mass N, not the plan's own.
    plan = delta_plan(5, 5, 5, (2, 2), (0, 1), mass=0.5)
    torch.testing.assert_close(
        T.plan_cost(plan, 1, mass=torch.tensor([2.0])), torch.tensor([0.25], dtype=torch.float64)
    )
    # Zero mass: cost 0, no NaN.
    zero = torch.zeros(2, 1, 9, 9, dtype=torch.float64)
    assert torch.equal(T.plan_cost(zero, 1), torch.zeros(2, dtype=torch.float64))


def test_plan_cost_gradient_is_offset_cost_over_mass():
    plan = random_plan(2, 1, 3, 3, 3, seed=7).requires_grad_(True)
    mass = torch.tensor([2.0, 4.0], dtype=torch.float64)
    T.plan_cost(plan, 1, mass=mass).sum().backward()
    expected = T.offset_costs(3, 1).expand(2, 1, 9, 9) / mass[:, None, None, None]
    torch.testing.assert_close(plan.grad, expected)
