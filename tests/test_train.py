import json
import math

import pytest
import torch

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks.data import load_dataset, synthetic_dataset
from wasserstein_attacks.defenses import training as train_module
from wasserstein_attacks.defenses.training import (
    deterministic,
    evaluate,
    format_natural_report,
    natural_transformation_report,
    standard_mnist_model,
    train_model,
)
from wasserstein_attacks.models import build_model


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _tiny_run(seed, data_seed=0, lr=1e-2, num_threads=1, **kw):
    # One thread: on a busy 2-core machine two threads mostly wait on each other.
    data = synthetic_dataset(256, seed=data_seed)
    model = build_model("tiny", num_classes=data.num_classes, seed=seed)
    log = train_model(
        model, data, epochs=3, lr=lr, batch_size=32, seed=seed, progress=False, num_threads=num_threads, **kw
    )
    return model, log


def test_training_is_deterministic_and_learns():
    a, log_a = _tiny_run(seed=1)
    b, log_b = _tiny_run(seed=1)
    for (k, va), vb in zip(_weights(a).items(), _weights(b).values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    assert log_a["epoch_loss"] == log_b["epoch_loss"] and log_a["steps"] == 3 * 8
    c, _ = _tiny_run(seed=2)
    assert not torch.equal(a[0].weight, c[0].weight)
    assert not a.training  # left in eval mode
    test = synthetic_dataset(200, seed=0, split="test")
    acc = evaluate(a, test)
    assert acc >= 0.9, f"tiny model reached only {acc:.3f} on 4 classes (chance 0.25)"
    assert log_a["epoch_loss"][-1] < log_a["epoch_loss"][0]


def test_sgd_and_thread_setting_are_restored():
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    state = torch.random.get_rng_state()
    other = 1 if threads != 1 else 2
    model, log = _tiny_run(seed=0, optimizer="sgd", lr=0.2, num_threads=other)
    assert log["threads"] == other
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det
    assert torch.equal(torch.random.get_rng_state(), state)
    assert evaluate(model, synthetic_dataset(200, seed=0, split="test")) > 0.5


def test_deterministic_context_restores_setting():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_train_model_bad_arguments():
    data = synthetic_dataset(8)
    model = build_model("tiny", num_classes=4)
    for kwargs, name in (
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
        ({"num_threads": 0}, "num_threads"),
    ):
        with pytest.raises(ValueError, match=name):
            train_model(model, data, progress=False, **kwargs)


def test_evaluate_restores_mode():
    model = build_model("tiny", num_classes=4, seed=0)
    model.train()
    model[0].eval()
    data = synthetic_dataset(40, seed=3)
    acc = evaluate(model, data, batch_size=7)
    assert 0.0 <= acc <= 1.0
    assert model.training and not model[0].training and model[2].training
    with torch.no_grad():
        model.eval()
        expected = (model(data.images).argmax(1) == data.labels).double().mean().item()
    assert acc == expected


# ---------------------------------------------------------------------------- the standard model's cache


def test_standard_model_is_cached_and_reloaded(tmp_path, monkeypatch):
    kw = {"epochs": 2, "train_size": 1024, "batch_size": 32, "seed": 3, "progress": False}
    first = standard_mnist_model(tmp_path, **kw)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    meta = first.checkpoint_meta
    assert meta["config"]["train_size"] == 1024 and meta["config"]["epochs"] == 2
    assert 0.6 < meta["test_accuracy"] <= 1.0  # 1024 images, two epochs: learns (83 % measured)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model should have been loaded")

    monkeypatch.setattr(train_module, "train_model", no_training)
    again = standard_mnist_model(tmp_path, **kw)
    for (k, va), vb in zip(_weights(first).items(), _weights(again).values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    assert again.checkpoint_meta == meta
    with pytest.raises(AssertionError, match="cached"):
        standard_mnist_model(tmp_path, **dict(kw, seed=4))  # another configuration: not in the cache
    monkeypatch.undo()

    # Default folder from $WATTACK_CACHE; a corrupt cached file is retrained with a warning.
    monkeypatch.setenv("WATTACK_CACHE", str(tmp_path))
    files[0].write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        retrained = standard_mnist_model(**kw)
    torch.testing.assert_close(retrained[0].weight, first[0].weight, rtol=0, atol=0)  # deterministic recipe
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.slow
def test_standard_mnist_model_full_training(tmp_path):
    model = standard_mnist_model(tmp_path, progress=False, retrain=True)
    acc = evaluate(model, load_dataset("mnist", "test"))
    assert acc >= 0.985, f"standard MNIST model: test accuracy {acc:.4f} < 0.985"
    assert acc == pytest.approx(model.checkpoint_meta["test_accuracy"])


# ---------------------------------------------------------------------------- natural changes in W


@pytest.mark.parametrize("p", [1, 2])
def test_natural_report_shift_is_exactly_one(p):
    model = build_model("mnist_convnet", seed=0)
    data = load_dataset("mnist", "test", n=12)
    threat = WassersteinBall(eps=1.0, p=p, kernel_size=5)
    report = natural_transformation_report(model, data, threat, n=4, degrees=8.0)
    json.dumps(report, allow_nan=False)  # JSON-ready
    assert report["n"] == 4 and report["threat"]["p"] == p
    sh = report["transformations"]["shift"]
    # A one-pixel shift costs exactly 1 for p = 1 (Kantorovich potential f(h, w) = w) and for p = 2 with
    # dense plans. The windowed referee may leave up to mass_tol * N unmatched at the window's dearest move
    # (the threat model's mass tolerance): that can only lower it, by at most mass_tol * (28 - c_max).
    for stat in ("min", "max"):
        assert math.isclose(sh["distance_dense"][stat], 1.0, rel_tol=1e-6), (stat, sh["distance_dense"])
        assert 1.0 - threat.mass_tol * 28 <= sh["distance"][stat] <= 1.0 + 1e-6, (stat, sh["distance"])
    for key in ("distance", "distance_dense"):
        assert sh[key]["fraction_infinite"] == 0.0
    assert sh["distance"]["fraction_inside_ball"] == 1.0
    rot = report["transformations"]["rotation"]
    assert "mass rescaled per channel" in rot["description"]
    # Dense plans can only be cheaper than windowed ones, up to what the windowed referee's unmatched mass
    # saves (mass_tol * N moved at most across the 28-pixel image). A small rotation is a positive move.
    assert rot["distance_dense"]["max"] is not None and rot["distance_dense"]["min"] > 0
    if rot["distance"]["mean"] is not None:
        assert rot["distance_dense"]["min"] <= rot["distance"]["min"] + threat.mass_tol * 28 * 2 ** (p / 2)
    for entry in (sh, rot):
        assert 0.0 <= entry["accuracy"] <= 1.0
    text = format_natural_report(report)
    assert "mass rescaled per channel" in text and "shift" in text


def test_natural_report_skips_images_that_lose_mass():
    data = load_dataset("mnist", "test", n=3)
    images = data.images.clone()
    images[0, 0, 5, -1] = 0.5  # mass in the last column: a shift right would lose it
    data = type(data)(images, data.labels, data.name, data.num_classes)
    report = natural_transformation_report(build_model("mnist_convnet"), data, WassersteinBall(0.5), n=2)
    assert report["n"] == 2 and report["skipped"] == 1
    with pytest.raises(ValueError, match="n must"):
        natural_transformation_report(build_model("mnist_convnet"), data, WassersteinBall(0.5), n=0)
