"""Gradient-masking checks (check_model) and the straight-through (BPDA) helper."""

import json
import warnings

import pytest
import torch
from torch import nn

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks.attacks import (
    ModelChecks,
    StraightThrough,
    available,
    check_model,
    get,
    straight_through,
)

H = W = 8


def _images(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, 1, H, W)
    x[:, :, 2:6, 1:4] = 0.3 + 0.6 * torch.rand(b, 1, 4, 3, generator=g)
    return x


def _linear(seed=0, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(H * W, classes))


def _labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


class Threshold(nn.Module):
    """Binarisation at 0.5 whose autograd derivative is zero (torch.sign's), like a binarize defense."""

    def forward(self, x):
        return (torch.sign(x - 0.5) + 1) / 2


class Noisy(nn.Module):
    """Adds Gaussian noise in every forward pass, in eval mode too (a randomised defense)."""

    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


def _no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_plain_model_passes_without_warnings():
    model = _linear().eval()
    x = _images()
    checks = _no_warnings(lambda: check_model(model, x, _labels(model, x)))
    assert isinstance(checks, ModelChecks)
    assert checks.ok and checks.warnings == []
    assert not (checks.was_training or checks.stochastic or checks.probabilities or checks.nonfinite)
    assert checks.zero_gradient_fraction == 0.0
    assert checks.max_output_difference == 0.0
    d = checks.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["ok"] is True and d["n_examples"] == 4


def test_train_mode_is_flagged_evaluated_in_eval_and_restored():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(H * W, 3))
    model.train()
    x = _images()
    with pytest.warns(UserWarning, match="train mode"):
        checks = check_model(model, x, torch.zeros(4, dtype=torch.long))
    assert checks.was_training
    # Dropout is off during the checks (eval mode), so the two passes agree.
    assert not checks.stochastic
    assert any("train mode" in w for w in checks.warnings)
    assert model.training and all(m.training for m in model.modules())


def test_submodule_left_in_train_mode_is_flagged():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(H * W, 3)).eval()
    model[1].train()
    with pytest.warns(UserWarning, match="submodule"):
        checks = check_model(model, _images(), torch.zeros(4, dtype=torch.long))
    assert checks.was_training and not checks.stochastic
    assert model[1].training and not model.training


def test_stochastic_model_is_flagged_and_caller_rng_untouched():
    model = nn.Sequential(Noisy(), _linear()).eval()
    x = _images()
    state = torch.get_rng_state()
    with pytest.warns(UserWarning, match="random"):
        checks = check_model(model, x, torch.zeros(4, dtype=torch.long), seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert checks.stochastic and checks.max_output_difference > 1e-3
    with pytest.warns(UserWarning, match="random"):
        again = check_model(model, x, torch.zeros(4, dtype=torch.long), seed=3)
    assert again.max_output_difference == checks.max_output_difference


@pytest.mark.parametrize("head", [nn.Softmax(dim=1), nn.Sigmoid()])
def test_probability_outputs_are_flagged(head):
    model = nn.Sequential(_linear(), head).eval()
    with pytest.warns(UserWarning, match="probabilities"):
        checks = check_model(model, _images(), torch.zeros(4, dtype=torch.long))
    assert checks.probabilities and not checks.ok


def test_threshold_model_has_zero_gradients_and_its_straight_through_version_not():
    net = _linear()
    model = nn.Sequential(Threshold(), net).eval()
    x = _images()
    y = _labels(model, x)
    with pytest.warns(UserWarning, match="vanishes"):
        checks = check_model(model, x, y)
    assert checks.zero_gradient_fraction == 1.0
    bpda = nn.Sequential(StraightThrough(Threshold()), net).eval()
    fixed = _no_warnings(lambda: check_model(bpda, x, y))
    assert fixed.zero_gradient_fraction == 0.0 and fixed.ok


def test_graph_cut_counts_as_zero_gradient():
    net = _linear()
    for p in net.parameters():
        p.requires_grad_(False)

    class Cut(nn.Module):
        def forward(self, x):
            return net((x > 0.5).float())

    with pytest.warns(UserWarning, match="vanishes"):
        checks = check_model(Cut().eval(), _images(), torch.zeros(4, dtype=torch.long))
    assert checks.zero_gradient_fraction == 1.0


class _NaNModel(nn.Module):
    def forward(self, x):
        out = 4 * x.flatten(1)[:, :3] - 1  # logits-like range, so only the NaN is wrong
        out[0, 0] = float("nan")
        return out


def test_nonfinite_outputs_are_an_error():
    # A NaN model used to be scored as predicting class 0 (argmax of NaN): an error, not a warning.
    with pytest.raises(ValueError, match="NaN or infinite on 1 of 4 examples"):
        check_model(_NaNModel().eval(), _images(), torch.zeros(4, dtype=torch.long))


def test_predict_refuses_nonfinite_logits():
    from wasserstein_attacks.attacks.base import predict

    with pytest.raises(ValueError, match="NaN or infinite"):
        predict(_NaNModel().eval(), _images())


def test_saturated_cross_entropy_is_reported_per_loss():
    # A very confident float32 model: the softmax saturates, the cross-entropy gradient underflows to 0,
    # while the margin and DLR losses keep a gradient. The check must test the losses the attacks use.
    class Confident(nn.Module):
        def forward(self, x):
            s = x.flatten(1).sum(1, keepdim=True)
            return torch.cat([200 * s + 1000, s, -s], 1)

    x = _images()
    y = torch.zeros(4, dtype=torch.long)
    with pytest.warns(UserWarning, match="ce loss vanishes"):
        checks = check_model(Confident().eval(), x, y, loss=["margin", "ce", "dlr"])
    assert checks.losses == ["margin", "ce", "dlr"]
    assert checks.zero_gradient_fractions == [0.0, 1.0, 0.0]
    assert checks.zero_gradient_fraction == 1.0
    assert checks.as_dict()["zero_gradient_fractions"] == [0.0, 1.0, 0.0]
    assert _no_warnings(lambda: check_model(Confident().eval(), x, y, loss="margin")).ok
    with pytest.raises(ValueError, match="loss must be one of"):
        check_model(Confident().eval(), x, y, loss=["hinge"])


def test_max_examples_limits_the_batch():
    model = _linear().eval()
    x = _images(b=6)
    assert check_model(model, x, _labels(model, x), max_examples=2).n_examples == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(images=torch.zeros(4, H, W)), "images"),
        (dict(labels=torch.zeros(3, dtype=torch.long)), "labels"),
        (dict(labels=torch.full((4,), 7)), "labels"),
        (dict(max_examples=0), "max_examples"),
        (dict(loss="l2"), "loss"),
        (dict(tiny=-1.0), "tiny"),
        (dict(model=lambda x: x), "model"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = dict(model=_linear().eval(), images=_images(), labels=torch.zeros(4, dtype=torch.long))
    args.update(kwargs)
    model = args.pop("model")
    with pytest.raises(ValueError, match=match):
        check_model(model, args.pop("images"), args.pop("labels"), **args)


def test_model_must_return_logits_matrix():
    with pytest.raises(ValueError, match="logits"):
        check_model(nn.Flatten(0).eval(), _images(), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_straight_through_forward_is_the_transform_and_backward_the_identity(dtype):
    x = _images().to(dtype).requires_grad_(True)
    out = StraightThrough(Threshold())(x)
    assert out.dtype == dtype
    assert torch.equal(out, Threshold()(x.detach()))
    weights = torch.randn_like(x)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    torch.testing.assert_close(grad, weights)
    # Functional form, any callable.
    f = straight_through(lambda t: torch.round(t * 4) / 4)
    (grad2,) = torch.autograd.grad(f(x).sum(), x)
    torch.testing.assert_close(grad2, torch.ones_like(x))


def test_straight_through_rejects_shape_changes_and_non_callables():
    with pytest.raises(ValueError, match="shape"):
        StraightThrough(lambda t: t.flatten(1))(_images())
    with pytest.raises(ValueError, match="transform"):
        straight_through(3)


def _threshold_problem():
    """Two classes; class 1 wins once a pixel of column W/2 is above 0.5 after binarisation.

    The clean images have a bright blob left of that column, which is just below the threshold:
    moving a little mass one pixel to the right breaks them, but the threshold's gradient is zero,
    so only a straight-through gradient shows where to move it.
    """
    x = torch.zeros(3, 1, H, W)
    x[:, 0, 2:6, 2:4] = 0.9
    x[:, 0, 2:6, W // 2] = torch.tensor([0.45, 0.42, 0.4])[:, None]
    lin = nn.Linear(H * W, 2)
    with torch.no_grad():
        lin.weight.zero_()
        column = torch.zeros(H, W)
        column[:, W // 2] = 1.0
        lin.weight[1] = column.reshape(-1)
        lin.bias.copy_(torch.tensor([0.5, 0.0]))
    net = nn.Sequential(nn.Flatten(), lin)
    model = nn.Sequential(Threshold(), net).eval()
    bpda = nn.Sequential(StraightThrough(Threshold()), net).eval()
    labels = torch.zeros(3, dtype=torch.long)
    return model, bpda, x, labels


def _attack(name):
    if name not in available():
        pytest.skip(f"attack {name!r} is not registered in this checkout")
    if name == "sinkhorn_penalty":
        return get(name, steps=25, binary_search_steps=2, lr=0.5)
    return get(name, steps=20)


@pytest.mark.parametrize("name", ["sinkhorn_penalty", "frank_wolfe"])
def test_bpda_gradient_model_breaks_a_threshold_model(name):
    model, bpda, x, labels = _threshold_problem()
    assert torch.equal(_labels(model, x), labels)
    threat = WassersteinBall(eps=0.1)
    attack = _attack(name)
    plain = attack(model, x, labels, threat=threat)
    assert not bool(plain.success.any())  # zero gradients: nothing to follow
    broken = attack(model, x, labels, threat=threat, gradient_model=bpda)
    assert bool(broken.success.all())
    with torch.no_grad():
        assert bool((model(broken.adversarial).argmax(1) != labels).all())  # judged on the real model
    d = threat.distance(x, broken.adversarial)
    assert bool((d <= 0.1 * (1 + 1e-4)).all())


def test_reference_binarize_model_is_flagged_and_its_bpda_version_not(zoo_models):
    from wasserstein_attacks import data, models

    ds = data.load_dataset("mnist", "test", n=8)
    robust = models.load_model("mnist_adv_training")
    assert _no_warnings(lambda: check_model(robust, ds.images, ds.labels)).ok
    binarize = models.load_model("mnist_binarize")
    with pytest.warns(UserWarning, match="vanishes"):
        flagged = check_model(binarize, ds.images, ds.labels)
    assert flagged.zero_gradient_fraction == 1.0
    # The same network behind our generic straight-through threshold has useful gradients.
    bpda = nn.Sequential(StraightThrough(lambda t: (t > 0.5).to(t.dtype)), binarize.model).eval()
    assert _no_warnings(lambda: check_model(bpda, ds.images, ds.labels)).zero_gradient_fraction == 0.0
    with torch.no_grad():
        torch.testing.assert_close(bpda(ds.images), binarize(ds.images))
