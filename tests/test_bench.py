"""The benchmark pipeline: verified results, determinism, resume after kill -9, shards, multirun, bad configs.

Runs use test doubles (tests/bench_doubles.py, tests/conf/): synthetic blobs, a centre-of-mass model and
a toy attack, so the whole file takes seconds of compute; subprocesses exercise the console entry point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

from bench_doubles import CentreOfMass  # noqa: E402

from wasserstein_attacks import WassersteinBall, bench  # noqa: E402
from wasserstein_attacks.bench import ConfigError  # noqa: E402
from wasserstein_attacks.cli import CONF_DIR, bench_main, merge_main  # noqa: E402

TOY = [
    f"hydra.searchpath=[file://{TESTS / 'conf'}]",
    "experiment=debug",
    "model=toy_com",
    "suite=toy-v1",
    "dataset.n=24",
    "batch_size=6",
    "radii=[0.05,0.2,0.6]",
    "exact_fraction=0.5",
    "progress=false",
]


def toy_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*TOY, *overrides])


def cli(*args: str, kind: str = "bench") -> list[str]:
    main = {"bench": "bench_main", "merge": "merge_main"}[kind]
    code = f"import sys; sys.argv[0] = 'wattack-{kind}'; from wasserstein_attacks.cli import {main}; {main}()"
    return [sys.executable, "-c", code, *args]


def env() -> dict:
    e = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def assert_same_bytes(a: Path, b: Path) -> None:
    """``results.json`` files equal byte for byte (the git commit aside if HEAD moved during the test)."""
    ra, rb = a.read_bytes(), b.read_bytes()
    ja, jb = json.loads(ra), json.loads(rb)
    if ja["git_commit"] != jb["git_commit"]:
        # Developers commit while tests run; CI does not. Everything else must still match byte for byte.
        jb["git_commit"] = ja["git_commit"]
        rb = (json.dumps(jb, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()
    assert ra == rb


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    results = bench.run(toy_cfg(), out)
    return out, results


def test_run_writes_verified_results(base_run):
    out, results = base_run
    for name in ("results.json", "examples.npz", "timings.json", "curve.png", "examples.png"):
        assert (out / name).is_file(), name
    for png in ("curve.png", "examples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = bench.load_results(out)
    assert loaded == json.loads(json.dumps(results))
    assert set(loaded["robust_accuracy"]) == {"0.05", "0.2", "0.6"}
    assert (
        loaded["threat"]["p"] == 1
        and loaded["threat"]["kernel_size"] == 5
        and loaded["threat"]["box"] == [0, 1]
    )
    assert loaded["threat"]["tolerances"]["cost_rel"] == 1e-4 and "eps" not in loaded["threat"]
    assert loaded["suite"]["name"] == "toy" and [a["name"] for a in loaded["suite"]["attacks"]] == [
        "shift_a",
        "shift_b",
    ]
    assert "seconds" not in json.dumps(loaded) and "total_seconds" in json.loads(
        (out / "timings.json").read_text()
    )

    ex = loaded["examples"]
    n = loaded["n_examples"]
    assert n == 24 and ex["index"] == list(range(24))
    correct = np.array(ex["clean_correct"])
    assert loaded["clean_accuracy"] == correct.mean()
    cost = np.array([np.inf if c is None else c for c in ex["broken_cost"]])
    for key, acc in loaded["robust_accuracy"].items():
        assert acc == (correct & ~(cost <= float(key) * (1 + 1e-4))).mean()
    assert list(loaded["per_attack_robust_accuracy"]["shift_b"].values()) == list(
        loaded["robust_accuracy"].values()
    )
    broken = np.array([b is not None for b in ex["broken_by"]])
    assert broken.any() and (correct & ~broken).any() and (~correct).any()

    # Anyone can re-check the adversarial examples: misclassified and inside the ball by the exact LP.
    with np.load(out / "examples.npz", allow_pickle=False) as z:
        clean, adv = torch.from_numpy(z["clean"]), torch.from_numpy(z["adversarial"])
        np.testing.assert_array_equal(z["index"], np.arange(24))
        np.testing.assert_array_equal(z["broken_cost"], cost)
    radius = torch.tensor([r if r is not None else np.inf for r in ex["broken_radius"]], dtype=torch.float64)
    b = torch.from_numpy(broken)
    d = WassersteinBall(eps=0.0).distance(clean[b], adv[b])
    assert (d <= radius[b] * (1 + 1e-4)).all()
    with torch.no_grad():
        assert (CentreOfMass()(adv[b]).argmax(1) != torch.tensor(ex["label"])[b]).all()
    torch.testing.assert_close(adv[~b], clean[~b])
    # The exact LP sample is chosen by index and checked against the radius.
    checked = [e is not None for e in ex["exact_distance"]]
    assert loaded["exact_check"]["checked"] == sum(checked) > 0
    assert loaded["exact_check"]["within_counted_radius"] == sum(checked)
    assert all(c <= bb for c, bb in zip(checked, broken, strict=True))


def test_same_config_same_bytes_resume_and_other_config(base_run, tmp_path):
    out, _ = base_run
    again = tmp_path / "again"
    bench.run(toy_cfg(), again)
    assert_same_bytes(again / "results.json", out / "results.json")
    # Resume: a lost batch and lost outputs are redone from the saved state, to the same bytes.
    (again / "state" / "batch-000002.npz").unlink()
    (again / "results.json").unlink()
    bench.run(toy_cfg(), again)
    assert_same_bytes(again / "results.json", out / "results.json")
    with pytest.raises(ConfigError, match="another config"):
        bench.run(toy_cfg("seed=1"), again)


def test_shards_merge_to_the_unsharded_bytes(base_run, tmp_path):
    out, _ = base_run
    folders = []
    for i in range(3):
        folders.append(tmp_path / f"s{i}")
        r = bench.run(toy_cfg(f"shard={i}/3"), folders[-1])
        assert r["shard"]["index"] == i and r["n_examples"] < 24
    merge_main([str(f) for f in folders[::-1]] + ["-o", str(tmp_path / "merged")])
    assert_same_bytes(tmp_path / "merged" / "results.json", out / "results.json")
    with pytest.raises(ValueError, match="shards must be 0/n"):
        bench.merge(folders[:2], tmp_path / "bad")
    with pytest.raises(ValueError, match="given twice"):
        bench.merge([folders[0], folders[0], folders[2]], tmp_path / "bad")
    with pytest.raises(ValueError, match="not a shard"):
        bench.merge([out], tmp_path / "bad")
    with pytest.raises(SystemExit) as exc:
        merge_main([str(tmp_path / "nothing")])
    assert exc.value.code == 2


def test_worker_processes_give_the_sequential_results(base_run, tmp_path):
    out, results = base_run
    par = bench.run(toy_cfg("workers=2"), tmp_path / "par")
    for key in ("clean_accuracy", "robust_accuracy", "n_examples"):
        assert par[key] == results[key]
    with np.load(out / "examples.npz") as a, np.load(tmp_path / "par" / "examples.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            if np.issubdtype(a[name].dtype, np.floating):
                # Worker processes run with fewer torch threads: sums may round differently in the last bits.
                np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(a[name], b[name])
    # Resuming the parallel run sequentially reuses every batch it saved.
    again = bench.run(toy_cfg(), tmp_path / "par")
    assert again["robust_accuracy"] == par["robust_accuracy"]


def test_kill_and_resume_gives_identical_bytes(tmp_path):
    slow = ["suite.attacks.shift_a.delay=0.25", "batch_size=3", "radii=[0.6]"]
    ref = tmp_path / "ref"
    bench.run(toy_cfg(*slow), ref)
    run_dir = tmp_path / "killed"
    cmd = cli(*TOY, *slow, f"hydra.run.dir={run_dir}")
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while (
        len(list((run_dir / "state").glob("batch-*.npz"))) < 2
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((run_dir / "state").glob("batch-*.npz")))
    assert 2 <= done < 8 and not (run_dir / "results.json").exists()
    subprocess.run(cmd, cwd=tmp_path, env=env(), check=True, capture_output=True, timeout=300)
    assert_same_bytes(run_dir / "results.json", ref / "results.json")


def _descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (from /proc: no psutil needed)."""
    parent = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_workers_die_with_a_killed_parent(tmp_path):
    run_dir, busy = tmp_path / "killed", tmp_path / "busy"
    # Each batch sleeps a minute: a worker that outlives its parent is still in that batch when checked.
    slow = ["suite.attacks.shift_a.delay=60", f"+suite.attacks.shift_a.started={busy}", "workers=2"]
    proc = subprocess.Popen(
        cli(*TOY, *slow, f"hydra.run.dir={run_dir}"),
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not busy.exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no worker started a batch in time"
        time.sleep(0.05)
    children = _descendants(proc.pid)
    assert proc.poll() is None and len(children) >= 2, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [c for c in children if _alive(c)]
    for c in left:  # do not leave them running under the rest of the suite
        os.kill(c, signal.SIGKILL)
    assert not left, f"processes {left} outlived their killed parent"


def test_corrupt_state_is_recomputed_or_reported_in_one_line(tmp_path, capsys):
    small = ["dataset.n=12", "radii=[0.6]"]
    ref = tmp_path / "ref"
    bench.run(toy_cfg(*small), ref)
    folder = tmp_path / "corrupt"
    bench.run(toy_cfg(*small), folder)
    state = folder / "state"
    data = (state / "batch-000000.npz").read_bytes()
    (state / "batch-000000.npz").write_bytes(data[: len(data) // 2])  # truncated zip
    (state / "batch-000001.npz").write_bytes(b"not an npz file")
    (folder / "results.json").unlink()
    capsys.readouterr()
    bench.run(toy_cfg(*small), folder)
    err = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert len(err) == 2 and all(line.endswith("computing that batch again") for line in err), err
    assert_same_bytes(folder / "results.json", ref / "results.json")

    (state / "header.json").write_text('{"config_hash": ')
    with pytest.raises(ConfigError) as exc:
        bench.run(toy_cfg(*small), folder)
    assert "header.json is unreadable" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ValueError, match=r"^folders: .*header.json is unreadable") as exc:
        bench.merge([folder], tmp_path / "merged")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_multirun_over_attacks(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *TOY,
        "radii=[0.6]",
        "dataset.n=4",
        "batch_size=4",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep}",
        "attack=toy_a,toy_b",
    ]
    if launcher == "parallel":
        args.append("hydra.launcher.n_jobs=2")
    p = subprocess.run(cli(*args), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    found = sorted(sweep.glob("*/results.json"))
    assert len(found) == 2
    names = sorted(json.loads(f.read_text())["suite"]["name"] for f in found)
    assert names == ["single-toy_a", "single-toy_b"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("radii=[0.1,-1]", "radii"),
        ("radii=[]", "radii"),
        ("+threat.eps=-0.5", "threat.eps"),
        ("threat.kernel_size=4", "threat"),
        ("shard=3/3", "shard"),
        ("shard=one", "shard"),
        ("shard=0/9", "shard"),
        ("batch_size=0", "batch_size"),
        ("workers=0", "workers"),
        ("workers=many", "workers"),
        ("exact_fraction=2", "exact_fraction"),
        ("device=tpu", "device"),
        ("suite.attacks.shift_a._target_=bench_doubles.Nope", "suite.attacks.shift_a"),
        ("+suite.attacks.shift_b.bogus=1", "suite.attacks.shift_b"),
        ("model.checkpoint=/nonexistent/weights.pth", "model.checkpoint"),
        ("dataset.n=0", "dataset.n"),
    ],
)
def test_bad_configs_fail_fast_naming_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError) as exc:
        bench.run(toy_cfg(override), tmp_path / "run")
    msg = str(exc.value)
    assert msg.startswith(field) and "\n" not in msg, msg
    assert not (tmp_path / "run").exists()  # nothing was started


def test_checkpoint_that_does_not_match_the_model(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: .*does not match model 'toy_com'"):
        bench.run(toy_cfg(f"model.checkpoint={path}"), tmp_path / "run")
    good = tmp_path / "good.pth"
    torch.save(CentreOfMass().state_dict(), good)
    results = bench.run(toy_cfg(f"model.checkpoint={good}", "dataset.n=6", "radii=[0.2]"), tmp_path / "ok")
    assert results["model"]["checkpoint"] == "good.pth" and len(results["model"]["checkpoint_sha256"]) == 64


def test_cli_reports_bad_configs_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["wattack-bench", "attack=nope"])
    with pytest.raises(SystemExit) as exc:
        bench_main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(
        "wattack-bench: error: attack: unknown attack 'nope'; available:"
    )
    p = subprocess.run(
        cli(*TOY, "radii=[0.1,-1]", f"hydra.run.dir={tmp_path / 'r'}"),
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert (
        p.stderr.strip().splitlines()[-1] == "wattack-bench: error: radii must be finite and >= 0, got -1.0"
    )
    assert not (tmp_path / "r" / "state").exists()


def test_model_checks_are_reported_and_printed(tmp_path, capsys):
    results = bench.run(toy_cfg("+model.build.softmax=true", "dataset.n=6", "radii=[0.6]"), tmp_path / "p")
    checks = results["model_checks"]
    assert checks["probabilities"] is True and checks["warnings"]
    err = capsys.readouterr().err
    assert all(f"model check warning: {w}" in err for w in checks["warnings"])


def test_wandb_logger_runs_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = bench.run(toy_cfg("logger=wandb", "dataset.n=6", "radii=[0.6]"), tmp_path / "w")
    assert results["n_examples"] == 6
    assert "logger" not in results["config"]  # trackers do not change the numbers or the hash


@pytest.mark.slow
def test_wandb_logger_offline_writes_a_run(tmp_path):
    cmd = cli(*TOY, "logger=wandb", "dataset.n=6", "radii=[0.6]", f"hydra.run.dir={tmp_path / 'w'}")
    p = subprocess.run(
        cmd, cwd=tmp_path, env={**env(), "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert list((tmp_path / "w" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_exact_check_tests_the_counted_radius_not_the_call_radius():
    from wasserstein_attacks.attacks.suite import SuiteResult
    from wasserstein_attacks.bench.results import build_results

    # Broken by the call at 0.5 with certified cost 0.015 (so counted from 0.02), exact distance 0.03: inside
    # the call's ball but outside the ball it is counted in. The old check (call radius) passed it.
    res = SuiteResult(
        radii=(0.01, 0.02, 0.5), attacks=("a",), indices=torch.arange(1),
        labels=torch.zeros(1, dtype=torch.long), clean_correct=torch.tensor([True]),
        broken_cost=torch.tensor([0.015]).double(), broken_attack=torch.tensor([0]),
        broken_radius=torch.tensor([0.5]).double(),
        adversarial=torch.zeros(1, 1, 2, 2), exact_distance=torch.tensor([0.03]).double(), cost_tol=1e-4,
    )
    header = {"exact_check": {"fraction": 1.0, "tolerance": 1e-4}}
    out = build_results(header, res, None)
    assert out["exact_check"]["checked"] == 1 and out["exact_check"]["within_counted_radius"] == 0


def test_a_nan_model_is_an_error_not_class_zero(tmp_path):
    # It used to be scored as predicting class 0 (clean = robust = share of label 0).
    with pytest.raises(ConfigError, match="model: .*NaN or infinite"):
        bench.run(toy_cfg("+model.build.nan=true"), tmp_path / "nan")


def test_results_record_each_attacks_targeted_runs():
    spec = bench.RunSpec.from_config(toy_cfg("suite=standard-v3"))
    targets = {a["name"]: a.get("targets", 0) for a in spec.suite_info["attacks"]}
    assert targets == {"pgdb_margin": 0, "pgdb_dlr": 0, "fwb_ce": 0, "pgdb_ce": 0, "fwb_margin_top3": 3}
    assert spec.model_checks["losses"] == ["margin", "dlr", "ce"]


def test_model_checks_use_the_suites_losses():
    # standard-v2 attacks with cross-entropy: the checks must test that loss's gradient, not the margin's.
    spec = bench.RunSpec.from_config(toy_cfg("suite=standard-v2"))
    assert spec.model_checks["losses"] == ["ce"]
    assert len(spec.model_checks["zero_gradient_fractions"]) == 1
