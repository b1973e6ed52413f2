"""The attack contract (``../shared/STYLE.md``), for EVERY registered attack.

Parametrised over ``wasserstein_attacks.attacks.available()``: an attack registered by any module is
tested here as soon as it lands. On small two-channel images with a weak model:

- shape, dtype and device kept; the input is not mutated;
- the output is in the box and keeps each channel's mass;
- every output is certified by its plan, and every successful example is inside the ball by the exact
  LP (``WassersteinBall.distance``), the independent referee;
- success rate > 0, and success means the model really misclassifies the returned image;
- a batch gives the same result as its examples one by one (fixed seed, float64);
- a per-example eps tensor gives the same result as the scalar eps, and each example is certified at
  its own radius when they differ;
- a model in train mode is attacked in eval mode, with a warning, and its mode restored.

Each attack runs with tiny settings (``FAST``) so the whole file stays fast; unknown attacks get
``steps=5``.
"""

from __future__ import annotations

import pytest
import torch

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks.attacks import available, get

#: Tiny, fast settings per registered attack (a few steps); unknown names get DEFAULT.
FAST = {
    "pgd_wu": dict(steps=10),
    "frank_wolfe": dict(steps=10),
    "frank_wolfe_box": dict(steps=10),
    "pgd_box": dict(steps=10),
    "sinkhorn_wong": dict(steps=10, sinkhorn_maxiters=50),
    "sinkhorn_hu": dict(steps=10, sinkhorn_maxiters=50),
    "sinkhorn_penalty": dict(steps=10, binary_search_steps=2),
}
DEFAULT = dict(steps=5)
EPS = 0.4
C, H, W, CLASSES = 2, 8, 8, 3
# The package's attacks: test doubles registered by other test modules (``test_*``) have their own tests.
ATTACKS = [name for name in available() if not name.startswith("test_")]


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name):
    return get(name, **FAST.get(name, DEFAULT))


def weak_model(seed=0, dtype=torch.float32):
    """A random linear classifier (with a dropout layer, so train/eval mode matters)."""
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(C * H * W, CLASSES)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), linear)
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(CLASSES, C * H * W, generator=g) * 3)
        model[2].bias.zero_()
    return model.to(dtype).eval()


def small_images(b=6, seed=1, dtype=torch.float32):
    """Sparse images in [0, 1] with saturated pixels (as MNIST strokes) and a few grey ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, C, H, W, generator=g, dtype=torch.float64)
    x = torch.where(x < 0.55, torch.zeros_like(x), x)
    x = torch.where(x > 0.8, torch.ones_like(x), x)
    return x.to(dtype)


def setting(dtype=torch.float32, b=6):
    model = weak_model(dtype=dtype)
    x = small_images(b, dtype=dtype)
    with torch.no_grad():
        labels = model(x).argmax(1)  # clean accuracy 100 %: every success is a real flip
    return model, x, labels


@pytest.fixture(scope="module")
def float32_results():
    """One float32 run per attack, shared by the checks below."""
    model, x, labels = setting()
    threat = WassersteinBall(EPS)
    out = {}
    for name in ATTACKS:
        before = x.clone()
        res = make(name)(model, x, labels, threat=threat)
        torch.testing.assert_close(x, before, rtol=0, atol=0)  # input not mutated
        out[name] = res
    return model, x, labels, threat, out


@pytest.mark.parametrize("name", ATTACKS)
def test_shapes_dtype_device_box_and_mass(name, float32_results):
    model, x, labels, threat, results = float32_results
    res = results[name]
    b = x.shape[0]
    assert res.adversarial.shape == x.shape and res.adversarial.dtype == x.dtype
    assert res.adversarial.device == x.device
    assert res.plan.shape == (b, C, H * W, threat.kernel_size**2)
    for t, dt in ((res.success, torch.bool), (res.certified, torch.bool), (res.iterations, torch.long)):
        assert t.shape == (b,) and t.dtype == dt
    assert res.cost.shape == (b,) and res.repair.shape == (b,)
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    mass = x.double().sum((2, 3))
    err = (res.adversarial.double().sum((2, 3)) - mass).abs().amax(1) / x.double().sum((1, 2, 3))
    assert (err <= threat.mass_tol).all(), err
    assert res.attack == name


@pytest.mark.parametrize("name", ATTACKS)
def test_every_output_certified_and_every_success_inside_by_the_exact_lp(name, float32_results):
    model, x, labels, threat, results = float32_results
    res = results[name]
    cert = threat.certify(x, res.adversarial, res.plan)
    assert cert.feasible.all() and res.certified.all()
    assert (cert.cost <= EPS * (1 + threat.cost_tol)).all()
    torch.testing.assert_close(res.cost.cpu(), cert.cost, rtol=1e-6, atol=1e-9)
    ok = res.success
    assert ok.any(), f"{name} broke no example of a weak model at eps {EPS}"
    exact = threat.distance(x[ok], res.adversarial[ok])
    assert (exact <= EPS * (1 + threat.cost_tol)).all(), exact
    # The exact distance never exceeds what the plan certifies.
    assert (exact <= res.cost[ok].cpu() * (1 + 1e-6) + 1e-9).all()
    with torch.no_grad():
        pred = model(res.adversarial).argmax(1)
    assert ((pred != labels) == res.success).all(), "success is the model's verdict on the returned image"


@pytest.mark.parametrize("name", ATTACKS)
def test_batch_equals_its_examples_one_by_one(name):
    model, x, labels = setting(torch.float64, b=4)
    threat = WassersteinBall(EPS)
    batch = make(name)(model, x, labels, threat=threat, seed=3)
    for i in range(x.shape[0]):
        sl = slice(i, i + 1)
        one = make(name)(model, x[sl], labels[sl], threat=threat, seed=3, indices=torch.tensor([i]))
        assert bool(one.success[0]) == bool(batch.success[i]), f"example {i}"
        torch.testing.assert_close(one.adversarial[0], batch.adversarial[i], atol=1e-6, rtol=0)
        assert int(one.iterations[0]) == int(batch.iterations[i])


@pytest.mark.parametrize("name", ATTACKS)
def test_eps_tensor_equals_scalar_and_per_example_radii(name, float32_results):
    model, x, labels, threat, results = float32_results
    b = x.shape[0]
    res = make(name)(model, x, labels, threat=WassersteinBall(torch.full((b,), EPS)))
    # Equal up to float32 rounding (a tensor eps may take another dtype path than a Python float).
    torch.testing.assert_close(res.adversarial, results[name].adversarial, rtol=0, atol=1e-6)
    assert (res.success == results[name].success).all()
    radii = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.4, 0.8])[:b]
    mixed = WassersteinBall(radii)
    res = make(name)(model, x, labels, threat=mixed)
    cert = mixed.certify(x, res.adversarial, res.plan)
    assert cert.feasible.all()
    assert (cert.cost <= radii.double() * (1 + mixed.cost_tol)).all()
    # Radius 0: nothing may move.
    torch.testing.assert_close(res.adversarial[0], x[0], rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ATTACKS)
def test_train_mode_is_restored_with_a_warning(name):
    model, x, labels = setting(b=2)
    model.train()
    with pytest.warns(UserWarning, match="train mode"):
        res = make(name)(model, x, labels, threat=WassersteinBall(EPS))
    assert model.training and all(m.training for m in model.modules())
    assert res.certified.all()


def test_the_contract_covers_the_project_attacks():
    # The plan attacks are registered by importing the package; others join as they land.
    assert {"pgd_wu", "frank_wolfe", "frank_wolfe_box", "pgd_box"} <= set(ATTACKS)


def test_out_of_range_labels_and_huge_windows_are_one_line_errors():
    from wasserstein_attacks.models import build_model

    model = build_model("tiny", num_classes=4, seed=0).eval()
    x = torch.rand(2, 1, 8, 8)
    attack = get("pgd_box", steps=1)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\], got 7"):
        attack(model, x, torch.tensor([0, 7]), threat=WassersteinBall(eps=0.1))
    with pytest.raises(ValueError, match=r"labels must be class indices in >= 0"):
        attack(model, x, torch.tensor([0, -100]), threat=WassersteinBall(eps=0.1))
    with pytest.raises(ValueError, match="kernel_size must be <="):
        attack(model, x, torch.tensor([0, 1]), threat=WassersteinBall(eps=0.1, kernel_size=10001))
