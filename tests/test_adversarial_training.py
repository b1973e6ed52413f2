"""Adversarial training: schedules, losses, resume after kill -9, data parallelism, config and CLI.

Tiny sizes throughout (synthetic 8x8 images, the ``tiny`` model, two attack steps), one CPU thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from wasserstein_attacks.attacks import get, load_suite
from wasserstein_attacks.cli import CONF_DIR
from wasserstein_attacks.data import load_dataset
from wasserstein_attacks.defenses import AdversarialTraining, RadiusRamp
from wasserstein_attacks.defenses.distributed import shard_positions
from wasserstein_attacks.defenses.from_config import initial_model
from wasserstein_attacks.models import build_model, load_checkpoint, save_checkpoint
from wasserstein_attacks.threat import WassersteinBall

REPO = Path(__file__).resolve().parent.parent
THREAT = WassersteinBall(eps=0.1, p=1, kernel_size=3)
TINY = dict(
    epochs=2, batch_size=16, lr=0.05, eps=0.1, eps_start=0.02, ramp_epochs=1.0, num_threads=1, progress=False
)


def data(n: int = 40):
    return load_dataset("synthetic", "train", n=n, height=8, width=8)


def model():
    return build_model("tiny", num_classes=4, seed=0)


def trainer(**kw) -> AdversarialTraining:
    return AdversarialTraining(attack=get("pgd_box", steps=2), threat=THREAT, **{**TINY, **kw})


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


# ---------------------------------------------------------------------------------------- units


def test_radius_ramp_grows_to_the_target_then_stays():
    geo = RadiusRamp(0.1, 0.01, 2.0, "geometric")
    assert geo(0) == pytest.approx(0.01) and geo(1) == pytest.approx(0.01 * 10**0.5) and geo(2) == 0.1
    assert geo(7.5) == 0.1
    lin = RadiusRamp(0.1, 0.02, 1.0, "linear")
    assert lin(0.5) == pytest.approx(0.06)
    assert RadiusRamp(0.1, 0.1, 0.0, "none")(0) == 0.1


def test_shards_cover_the_batch_once_and_share_its_clean_head():
    for b in (1, 7, 16, 128):
        parts = [shard_positions(b, r, 3) for r in range(3)]
        assert sorted(torch.cat(parts).tolist()) == list(range(b))
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
        # The first round(0.2 b) positions (the clean ones) are spread over the ranks: equal attack work.
        clean = [int((p < round(0.2 * b)).sum()) for p in parts]
        assert max(clean) - min(clean) <= 1


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"eps": -0.1}, "eps"),
        ({"eps_start": 0.5}, "eps_start"),
        ({"ramp": "cubic"}, "ramp"),
        ({"loss": "kl"}, "loss"),
        ({"clean_fraction": 1.5}, "clean_fraction"),
        ({"epochs": 1.5}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"checkpoint_every": -1}, "checkpoint_every"),
        ({"beta": float("nan")}, "beta"),
        ({"ema": 1.0}, "ema"),
        ({"ema": -0.5}, "ema"),
        ({"eps_fractions": []}, "eps_fractions"),
        ({"eps_fractions": [0.5, 1.5]}, "eps_fractions"),
        ({"eps_fractions": [0.0]}, "eps_fractions"),
        ({"eps_fractions": "0.5"}, "eps_fractions"),
        ({"eps_adapt": 1.0}, "eps_adapt"),
        ({"eps_adapt": "fast"}, "eps_adapt"),
        ({"eps_adapt": 2.0, "eps_adapt_min": 1.5}, "eps_adapt_min"),
        ({"eps_adapt": 2.0, "eps_adapt_min": 0.0}, "eps_adapt_min"),
        ({"eps_adapt": 2.0, "eps_fractions": [0.5, 1.0]}, "eps_adapt and eps_fractions"),
        ({"awp": 1.0}, "awp"),
        ({"awp": -0.01}, "awp"),
    ],
)
def test_bad_values_give_one_line_errors(kwargs, named):
    with pytest.raises(ValueError, match=named) as e:
        trainer(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_attack_and_threat():
    with pytest.raises(ValueError, match="attack"):
        AdversarialTraining(attack="pgd_box", threat=THREAT, eps=0.1)
    with pytest.raises(ValueError, match="threat"):
        AdversarialTraining(attack=get("pgd_box"), threat=None, eps=0.1)


# ---------------------------------------------------------------------------------------- training


def test_mart_objective_follows_its_definition():
    # Wang et al. 2020: BCE(p(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x)), KL on attacked rows only.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)).double()
    x, y = torch.rand(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1, 0])
    x_adv = (x + 0.3 * torch.rand_like(x)).clamp(0, 1)
    adv = torch.tensor([True, False, True, True, False, True])
    total, adv_logits = trainer(loss="mart", beta=3.0)._objective(net, x, x_adv, y, adv)
    with torch.no_grad():
        p_in = torch.softmax(net(torch.where(adv[:, None, None, None], x_adv, x)), 1)
        p_clean = torch.softmax(net(x), 1)
    expected = 0.0
    for i in range(6):
        top_wrong = max(float(p_in[i, k]) for k in range(4) if k != int(y[i]))
        expected += -torch.log(p_in[i, y[i]]) - torch.log(torch.tensor(1 - top_wrong, dtype=torch.float64))
        if adv[i]:
            kl = (p_clean[i] * (p_clean[i].log() - p_in[i].log())).sum()
            expected += 3.0 * kl * (1 - p_clean[i, y[i]])
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(adv_logits, net(x_adv[adv]))
    # Confidently wrong in float32 (1 - max p rounds to 0): the boosted term stays finite and large.
    confident = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    with torch.no_grad():
        confident[1].weight.zero_()
        confident[1].bias.copy_(torch.tensor([0.0, 100.0, 0.0, 0.0]))
    z = torch.zeros(1, 1, 8, 8)
    total, _ = trainer(loss="mart")._objective(confident, z, z, torch.tensor([0]), torch.tensor([False]))
    assert torch.isfinite(total) and float(total.detach()) > 190


@pytest.mark.parametrize("loss", ["trades", "mart"])
def test_kl_losses_with_clean_mixing_write_every_output(tmp_path, loss):
    log = trainer(loss=loss, beta=2.0, clean_fraction=0.25)(model(), data(), tmp_path, meta={"m": "tiny"})
    rows = log["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["eps"] == pytest.approx(0.1)
    assert rows[0]["eps"] < rows[1]["eps"]  # the ramp
    # 40 examples in batches 16, 16, 8: the first 4, 4 and 2 positions stay clean.
    assert all(r["attacked"] == 30 for r in rows)
    for r in rows:
        assert 0 <= r["clean_accuracy"] <= 1 and 0 <= r["adversarial_accuracy"] <= 1 and r["loss"] > 0
    saved = json.loads((tmp_path / "train_log.json").read_text())
    assert saved["epochs"] == json.loads(json.dumps(rows)) and saved["config"]["loss"] == loss
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    plain, net = weights(tmp_path / "model_state_dict.pt"), model()
    net.load_state_dict(plain)
    assert load_checkpoint(model(), tmp_path / "checkpoint.pt")["epoch"] == 2
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, plain[k], rtol=0, atol=0)


def test_weight_average_follows_its_definition():
    from wasserstein_attacks.defenses.train_state import TrainRun

    net = torch.nn.Linear(1, 1, bias=False)
    info = type("Info", (), {"device": torch.device("cpu"), "world": 1})()
    run = TrainRun.start(trainer(ema=0.5), net, info, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
    run.ema["weight"].fill_(0.0)
    expected = 0.0
    for t, w in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            net.weight.fill_(w)
        run.update_ema()
        d = min(0.5, (1 + t) / (10 + t))  # warm-up: the start fades fast
        expected = d * expected + (1 - d) * w
        assert run.ema["weight"].item() == pytest.approx(expected)
    assert run.final_state()["weight"].item() == pytest.approx(expected) != net.weight.item()


def test_weight_average_is_the_model_delivered(tmp_path):
    plain_net, ema_net = model(), model()
    trainer(epochs=1)(plain_net, data(), tmp_path / "plain")
    log = trainer(epochs=1, ema=0.9)(ema_net, data(), tmp_path / "ema")
    assert log["config"]["ema"] == 0.9 and "ema" not in trainer().describe()  # old configs unchanged
    exported = weights(tmp_path / "ema" / "model_state_dict.pt")
    from_ckpt = model()
    load_checkpoint(from_ckpt, tmp_path / "ema" / "checkpoint.pt")
    for k, v in ema_net.state_dict().items():
        assert torch.equal(v, exported[k]) and torch.equal(v, from_ckpt.state_dict()[k]), k
    # the same steps were taken (the attacks see the live weights): only the delivered weights differ
    plain = json.loads((tmp_path / "plain" / "train_log.json").read_text())["epochs"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(plain) == strip(log["epochs"])
    assert any(not torch.equal(v, plain_net.state_dict()[k]) for k, v in exported.items())


class _Recorder:
    """Wraps an attack: records the radius of every example it is asked to attack."""

    def __init__(self, attack):
        self.attack, self.radii, self.name = attack, [], attack.name

    def __call__(self, model, x, y, *, threat, **kw):
        self.radii.append(threat.eps_for(x.shape[0]).clone())
        return self.attack(model, x, y, threat=threat, **kw)


def test_a_mix_of_training_radii(tmp_path):
    t = trainer(epochs=2, eps_fractions=[0.5, 1.0], ramp="none")
    rec = _Recorder(t.attack)
    t.attack = rec  # the check on the attack's type is done: record what each call is given
    log = t(model(), data(), tmp_path / "mix")
    seen = torch.cat(rec.radii)
    assert sorted(set(seen.tolist())) == pytest.approx([0.05, 0.1])  # eps 0.1 times each fraction
    assert 0.25 < float((seen < 0.075).double().mean()) < 0.75  # both drawn, about evenly
    assert log["config"]["eps_fractions"] == [0.5, 1.0] and t.describe()["eps_fractions"] == [0.5, 1.0]
    # Per example and epoch, from the seed and the dataset index: the same whatever the batch holds.
    idx = torch.tensor([3, 17, 5, 30])
    assert torch.equal(t._radii(idx, 0.1, 7), t._radii(idx.flip(0), 0.1, 7).flip(0))
    assert not torch.equal(t._radii(torch.arange(40), 0.1, 7), t._radii(torch.arange(40), 0.1, 8))
    # Without fractions every example is attacked at the ramp's radius, and the config does not name them.
    assert trainer()._radii(idx, 0.1, 7) == 0.1 and "eps_fractions" not in trainer().describe()
    with pytest.raises(ValueError, match="eps_fractions needs an attack"):
        AdversarialTraining(attack=load_suite("debug-v1"), threat=THREAT, eps=0.1, eps_fractions=[0.5])


class _Outcomes(_Recorder):
    """Records each call's dataset indices, radii and which examples the attack broke."""

    def __call__(self, model, x, y, *, threat, indices, **kw):
        res = self.attack(model, x, y, threat=threat, indices=indices, **kw)
        self.radii.append((indices.clone(), threat.eps_for(x.shape[0]).clone(), res.success.clone()))
        return res


def test_instance_adaptive_radii_follow_each_attack_outcome(tmp_path):
    t = trainer(epochs=3, eps_adapt=2.0, eps_adapt_min=0.3, ramp="none", clean_fraction=0.25)
    rec = _Outcomes(t.attack)
    t.attack = rec
    log = t(model(), data(), tmp_path / "adapt")
    steps = 3  # 40 examples in batches of 16
    assert len(rec.radii) == 3 * steps
    fraction = torch.ones(40, dtype=torch.float64)
    for idx, radius, broken in rec.radii:
        torch.testing.assert_close(radius, 0.1 * fraction[idx])  # the radius this example has earned
        fraction[idx] = (fraction[idx] * torch.where(broken, 0.5, 2.0).double()).clamp(0.3, 1.0)
    seen = torch.cat([r for _, r, _ in rec.radii])
    assert {round(v, 6) for v in seen.tolist()} >= {0.1, 0.05}  # examples moved both ways
    assert float(seen.min()) >= 0.03 - 1e-12
    assert log["epochs"][-1]["eps_adapt_mean"] == pytest.approx(0.1 * float(fraction.mean()))
    assert log["config"]["eps_adapt"] == 2.0 and log["config"]["eps_adapt_min"] == 0.3
    assert "eps_adapt" not in trainer().describe()
    with pytest.raises(ValueError, match="eps_adapt needs an attack"):
        AdversarialTraining(attack=load_suite("debug-v1"), threat=THREAT, eps=0.1, eps_adapt=2.0)


def test_weight_perturbation_follows_its_definition(tmp_path):
    # One step over the whole set, clean images only (no attack), plain SGD: w' = w - lr * grad L(w + v),
    # v = awp * ||w|| * grad L(w) / ||grad L(w)|| for the kernels and matrices, 0 for the biases.
    kw = dict(epochs=1, batch_size=40, clean_fraction=1.0, momentum=0.0, weight_decay=0.0)
    kw["schedule"] = "constant"
    x, y = data().images, data().labels
    net, ref = model(), model()
    log = trainer(awp=0.05, **kw)(net, data(), tmp_path / "awp")
    loss = lambda m: torch.nn.functional.cross_entropy(m(x), y)  # noqa: E731
    grads = torch.autograd.grad(loss(ref), list(ref.parameters()))
    with torch.no_grad():
        moves = [0.05 * p.norm() * g / g.norm() if p.dim() > 1 else torch.zeros_like(p)
                 for p, g in zip(ref.parameters(), grads, strict=True)]
        assert any(m.abs().sum() > 0 for m in moves)
        for p, m in zip(ref.parameters(), moves, strict=True):
            p.add_(m)
        assert float(loss(ref)) > float(log["epochs"][0]["loss"])  # uphill
    grads = torch.autograd.grad(loss(ref), list(ref.parameters()))
    with torch.no_grad():
        for p, m, g in zip(ref.parameters(), moves, grads, strict=True):
            p.sub_(m).sub_(0.05 * g)
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    # The log reports the loss at the weights themselves, as without the perturbation.
    plain = trainer(**kw)(model(), data(), tmp_path / "plain")
    assert log["epochs"][0]["loss"] == plain["epochs"][0]["loss"]
    assert log["config"]["awp"] == 0.05 and "awp" not in plain["config"]


def test_a_suite_as_inner_maximisation(tmp_path):
    suite = load_suite("debug-v1")
    suite.attacks[0].steps = 2
    t = AdversarialTraining(attack=suite, threat=THREAT, **{**TINY, "epochs": 1})
    rows = t(model(), data(24), tmp_path)["epochs"]
    assert rows[0]["attacked"] == 24 and t.describe()["inner"]["suite"] == "debug"


def test_resume_refuses_another_configuration(tmp_path):
    trainer(epochs=1)(model(), data(16), tmp_path)
    with pytest.raises(ValueError, match="another config"):
        trainer(epochs=1, lr=0.01)(model(), data(16), tmp_path)


_KILLED_RUN = """
import sys, time, torch
sys.path.insert(0, {tests!r})
import test_adversarial_training as t
net = t.model()
net.register_forward_pre_hook(lambda m, i: time.sleep(0.05))  # slow enough to be killed mid-run
t.trainer(epochs=3, checkpoint_every=1, **{kw!r})(net, t.data(), {out!r})
"""


@pytest.mark.parametrize("kw", [{}, {"ema": 0.9}, {"eps_adapt": 2.0}])
def test_kill_9_then_rerun_gives_the_same_weights(tmp_path, kw):
    ref = trainer(epochs=3, checkpoint_every=1, **kw)
    ref(model(), data(), tmp_path / "ref")
    out = tmp_path / "killed"
    code = _KILLED_RUN.format(tests=str(Path(__file__).parent), out=str(out), kw=kw)
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "train_state.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) < (3, 0) and not (out / "model_state_dict.pt").exists()
    trainer(epochs=3, checkpoint_every=1, **kw)(model(), data(), out)
    a, b = weights(tmp_path / "ref" / "model_state_dict.pt"), weights(out / "model_state_dict.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = json.loads((tmp_path / "ref" / "train_log.json").read_text())["epochs"]
    log_b = json.loads((out / "train_log.json").read_text())["epochs"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(log_a) == strip(log_b)


def _ddp_worker(rank: int, store: str, out: str, kw: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        net = model()
        trainer(epochs=2, **kw)(net, data(), out, device="cpu")
        torch.save(net.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kw", [{}, {"eps_adapt": 2.0, "clean_fraction": 0.25}, {"awp": 0.01}])
def test_two_processes_match_one_at_the_same_global_batch(tmp_path, kw):
    trainer(epochs=2, **kw)(model(), data(), tmp_path / "one", device="cpu")
    (tmp_path / "two").mkdir()
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path / "two"), kw), nprocs=2, join=True)
    one = weights(tmp_path / "one" / "model_state_dict.pt")
    two, other = weights(tmp_path / "two" / "model_state_dict.pt"), weights(tmp_path / "two" / "rank1.pt")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(two[k], other[k]), k  # the ranks agree exactly
    rows = [json.loads((tmp_path / d / "train_log.json").read_text())["epochs"] for d in ("one", "two")]
    assert [r["attacked"] for r in rows[0]] == [r["attacked"] for r in rows[1]]
    assert [r["adversarial_accuracy"] for r in rows[0]] == [r["adversarial_accuracy"] for r in rows[1]]
    if "eps_adapt" in kw:  # each rank updated every example's radius, its own slice's and the other's
        assert [r["eps_adapt_mean"] for r in rows[0]] == [r["eps_adapt_mean"] for r in rows[1]]


def test_fine_tuning_starts_from_a_checkpoint(tmp_path):
    src = model()
    with torch.no_grad():
        src[0].weight.fill_(0.25)
    save_checkpoint(src, tmp_path / "start.pt")
    net = initial_model({"name": "tiny", "num_classes": 4, "seed": 1}, str(tmp_path / "start.pt"))
    assert torch.equal(net[0].weight, src[0].weight)
    with pytest.raises(FileNotFoundError, match="defense.init"):
        initial_model({"name": "tiny"}, str(tmp_path / "absent.pt"))


# ---------------------------------------------------------------------------------------- config, CLI


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_config_composes_and_binds():
    import inspect

    cfg = compose_train("defense=adversarial")
    assert cfg.defense.kind == "adversarial" and cfg.dataset.split == "train" and cfg.dataset.n is None
    assert cfg.attack._target_.endswith("FrankWolfeBox") and cfg.logger.kind == "wandb"
    assert cfg.defense.model.name == "mnist_convnet"
    kwargs = OmegaConf.to_container(cfg.defense.training)
    inspect.signature(AdversarialTraining).bind(attack=None, threat=None, **kwargs)
    AdversarialTraining(attack=get("pgd_box"), threat=THREAT, **kwargs)
    mart = compose_train("defense=adversarial", "defense.training.loss=mart", "defense.training.beta=6")
    assert AdversarialTraining(attack=get("pgd_box"), threat=THREAT,
                               **OmegaConf.to_container(mart.defense.training)).loss == "mart"
    suite = compose_train("defense=adversarial", "~attack", "suite=debug-v1")
    assert suite.get("attack") is None and suite.suite.name == "debug"
    standard = compose_train()
    assert standard.defense.kind == "standard" and standard.get("attack") is None
    assert standard.get("dataset") is None and standard.get("logger") is None


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    code = "import sys; sys.argv[0] = 'wattack-train'; import wasserstein_attacks.cli as c; c.train_main()"
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_cli_smoke_run_and_bad_value(tmp_path):
    tiny = [
        "defense=adversarial",
        "attack=pgd_box",
        "threat.kernel_size=3",
        "dataset=synthetic",
        "dataset.n=24",
        "dataset.height=8",
        "dataset.width=8",
        "defense.model.name=tiny",
        "defense.model.num_classes=4",
        "defense.attack_steps=2",
        "defense.training.epochs=1",
        "defense.training.batch_size=12",
        "defense.training.progress=false",
    ]
    p = _cli(tmp_path, *tiny, f"hydra.run.dir={tmp_path / 'run'}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "adversarial training done" in p.stdout
    run = tmp_path / "run"
    assert {"checkpoint.pt", "model_state_dict.pt", "train_log.json", "curves.png"} <= set(os.listdir(run))
    cfg = json.loads((run / "train_log.json").read_text())["config"]
    assert cfg["inner"]["attack"] == "pgd_box" and cfg["inner"]["steps"] == 2
    bad = _cli(tmp_path, *tiny, "defense.training.ramp=cubic", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert bad.stderr.startswith("wattack-train: error: ramp must be one of")
