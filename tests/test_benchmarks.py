"""Smoke tests of the benchmark scripts' shared set-up and of the device check on the CPU (tiny sizes).

The benchmarks themselves are long runs whose JSON is committed under ``benchmarks/results/``; these
tests only check that the scripts run end to end and write what they promise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _attack_setup as setup  # noqa: E402


def test_parse_attack_and_device_arg():
    assert setup.parse_attack("frank_wolfe:solver='bisection',steps=3") == (
        "frank_wolfe:solver='bisection',steps=3", "frank_wolfe", {"solver": "bisection", "steps": 3})
    with pytest.raises(ValueError, match="unknown attack"):
        setup.parse_attack("nope")
    with pytest.raises(ValueError, match="key=value"):
        setup.parse_attack("frank_wolfe:steps")
    assert setup.device_arg("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit, match="--device must be"):
        setup.device_arg("meta")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA is not available"):
            setup.device_arg("cuda")


def test_write_json_is_atomic_and_finite(tmp_path):
    path = tmp_path / "r.json"
    setup.write_json(path, {"a": float("inf"), "b": [1.0, float("nan")]})
    assert json.loads(path.read_text()) == {"a": "inf", "b": [1.0, "nan"]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_device_check_on_cpu(tmp_path, shared_dir, monkeypatch):
    monkeypatch.setenv("WATTACK_SHARED_DIR", str(shared_dir))
    import device_check

    report = device_check.main(["--device", "cpu", "--n", "4", "--steps", "2", "--exact", "2",
                                "--attacks", "frank_wolfe", "pgd_box", "--sections", "consistency",
                                "--out-dir", str(tmp_path)])
    rows = report["sections"]["consistency"]["rows"]
    assert [r["attack"] for r in rows] == ["frank_wolfe", "pgd_box"]
    for r in rows:
        assert r["ok"], r
        # The same seed on the same device gives the same numbers.
        assert r["success_agreement"] == 1.0 and r["max_abs_pixel_difference"] == 0.0
        assert r["exact_inside"] == r["exact_checked"]
    saved = json.loads((tmp_path / "device_check.json").read_text())
    assert saved["sections"]["consistency"]["rows"][0]["attack"] == "frank_wolfe"


def test_git_state_ignores_updated_result_files_but_not_code(tmp_path, monkeypatch):
    import subprocess

    import _machine

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "a.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "init")
    monkeypatch.setattr(_machine, "REPO", tmp_path)
    assert _machine.git_state()[1] is False
    # A modified result file is the first porcelain line (" M benchmarks/..."): still clean.
    (tmp_path / "benchmarks" / "results" / "a.json").write_text('{"n": 1}')
    (tmp_path / "benchmarks" / "results" / "b.json").write_text("{}")
    assert _machine.git_state()[1] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert _machine.git_state()[1] is True


def test_defense_curve_accumulates_training_time(tmp_path):
    import defense_curve

    train, ev = tmp_path / "train", tmp_path / "eval"
    train.mkdir()
    ev.mkdir()
    epochs = [{"epoch": k, "seconds": 10.0 * k} for k in (1, 2, 3)]
    (train / "train_log.json").write_text(json.dumps({"config": {"eps": 0.5}, "epochs": epochs}))
    res = {"suite": {"name": "standard", "version": 2}, "n_examples": 5, "clean_accuracy": 1.0,
           "robust_accuracy": {"0.1": 0.8}}
    (ev / "results.json").write_text(json.dumps(res))
    out = defense_curve.curve(train, {2: ev})
    assert out["points"][0]["training_seconds"] == 30.0 and out["points"][0]["suite"] == "standard-v2"
    with pytest.raises(SystemExit, match="has no epoch 7"):
        defense_curve.curve(train, {7: ev})


def test_smoothing_commands_chain_levels_and_reuse_trained_models(tmp_path, monkeypatch):
    import argparse

    import smoothing

    monkeypatch.setattr(smoothing, "RUNS", tmp_path / "runs" / "smoothing")
    (tmp_path / "runs" / "smoothing" / "lap-0.02-smoothadv").mkdir(parents=True)
    (tmp_path / "runs" / "smoothing" / "lap-0.02-smoothadv" / "base_model.pt").write_bytes(b"")

    args = argparse.Namespace(n=100, n0=1000, draws=10000, alpha=0.05, empirical=100, empirical_steps=100,
                              reuse=False)
    cmd = smoothing.command("lap-0.05", args)
    assert "model=mnist_convnet" in cmd and any(c.endswith("lap-0.02/base_model.pt") for c in cmd)
    assert "train.epochs=10" in cmd and "smoothing.sigma=0.05" in cmd
    assert "model=standard_mnist" in smoothing.command("lap-0.01", args)
    assert "train.method=smoothadv" in smoothing.command("lap-0.02-smoothadv", args)
    reuse = smoothing.command("lap-0.02-smoothadv", argparse.Namespace(**{**vars(args), "reuse": True}))
    assert "train.epochs=0" in reuse and not any(c.startswith("train.method") for c in reuse)
    assert any(c.endswith("smoothing/lap-0.02-smoothadv/base_model.pt") for c in reuse)
    assert any("smoothing-n100/lap-0.02-smoothadv" in c for c in reuse)
    # without a training run: the weights committed with the certified entry, else a one-line refusal
    reuse = argparse.Namespace(**{**vars(args), "reuse": True})
    assert any(c.endswith("certified/mnist/W1/WattackSmooth-uni-0.1-cr.pt") for c in
               smoothing.command("uni-0.1-cr", reuse))
    with pytest.raises(SystemExit, match="holds no base model"):
        smoothing.command("lap-0.05", reuse)
    # training from a level whose run is not on this machine starts from that level's committed weights
    fs = smoothing.command("lap-0.02-smoothadv-fs", args)
    assert any(c.endswith("certified/mnist/W1/WattackSmooth-lap-0.01.pt") for c in fs)
    assert "train.epochs=1" in fs and "train.smoothadv.epochs=8" in fs


def test_smoothing_mass_overlap_counts_certified_examples_the_mass_alone_gets_right():
    import smoothing

    results = {"certified_accuracy": {"0.05": 0.5, "0.1": 0.25},
               "examples": {"index": [0, 1, 2, 3], "label": [1, 2, 3, 4], "prediction": [1, 2, 3, -1],
                            "radius": [0.2, 0.07, 0.05, None]}}
    mass_correct = [True, False, True, True]
    out = smoothing.mass_overlap(results, mass_correct)
    # radius strictly above r counts; example 2 (radius exactly 0.05) and the abstention do not
    assert out["0.05"] == {"certified": 2, "mass_only_correct_too": 1}
    assert out["0.1"] == {"certified": 1, "mass_only_correct_too": 1}
    assert out["mass_only_accuracy"] == 0.75


def test_suite_steps_takes_what_the_suite_left_robust():
    import suite_steps

    run = {"cost_tol": 1e-4, "broken_cost": [0.0, 0.1, 0.50004, 0.5001, "inf", 0.7]}
    ablation = {"runs": {"m": {"standard-v3": run}}}
    # clean errors (cost 0) are not robust; a break within the tolerance of 0.5 counts at 0.5
    assert suite_steps.left_robust(ablation, "m", "standard-v3", 0.5) == [3, 4, 5]
    assert suite_steps.left_robust(ablation, "m", "standard-v3", 0.1) == [2, 3, 4, 5]


def test_suite_ablation_merge_joins_parallel_runs_and_refuses_other_grids(tmp_path, monkeypatch):
    import suite_ablation

    def part(name, runs, n=4):
        path = tmp_path / name
        path.write_text(json.dumps({"n": n, "radii": [0.1], "runs": runs, "machine": {}, "provenance": {}}))
        return path

    out = tmp_path / "all.json"
    monkeypatch.setattr(suite_ablation, "OUT", out)
    a = part("a.json", {"m1": {"x": {"seconds": 1}}})
    b = part("b.json", {"m1": {"y": {"seconds": 2}}, "m2": {"x": {"seconds": 3}}})
    report = suite_ablation.merge([a, b])
    assert report["runs"] == {"m1": {"x": {"seconds": 1}, "y": {"seconds": 2}}, "m2": {"x": {"seconds": 3}}}
    assert json.loads(out.read_text())["runs"] == report["runs"]
    with pytest.raises(SystemExit, match="n=5"):
        suite_ablation.merge([part("c.json", {}, n=5)])
    # held-out models name their weights: runs of two files under one name do not mix
    part("d.json", {"m3": {"x": {"seconds": 1, "checkpoint_sha256": "a"}}})
    with pytest.raises(SystemExit, match="other weights"):
        suite_ablation.merge([tmp_path / "d.json", part("e.json", {"m3": {"y": {"checkpoint_sha256": "b"}}})])


def test_suite_ablation_candidates_are_made_of_configs():
    import suite_ablation

    for label, (members, order, *rest) in suite_ablation.CANDIDATES.items():
        assert set(members) <= {*suite_ablation.CONFIGS, *suite_ablation.CANDIDATE_MEMBERS}, label
        suite = suite_ablation._suite(label)
        assert suite.order == order and suite.labels == members
        starts, near_miss, how = (rest + [None, None, None])[:3]
        assert suite.starts == (starts or ["identity"] * len(members)), label
        assert suite.near_miss == (near_miss or [None] * len(members)), label
        assert suite.near_miss_pass == (how or "per_radius"), label


def test_suite_ablation_measures_the_default_suite_against_the_worst_case():
    import suite_ablation

    def run(costs, seconds):
        robust = {"0.1": sum(not float(c) <= 0.1 * (1 + 1e-4) for c in costs) / len(costs)}
        return {"broken_cost": costs, "seconds": seconds, "cost_tol": 1e-4, "robust_accuracy": robust}

    runs = {"standard-v2": run([0.05, "inf", "inf", "inf"], 10.0),
            suite_ablation.DEFAULT: run([0.05, 0.09, "inf", "inf"], 25.0),
            "pgdb-margin": run(["inf", 0.08, 0.1, "inf"], 40.0)}
    table = suite_ablation.analyse({"radii": [0.1], "runs": {"m": runs}}, ["pgdb-margin"])
    row = table["m"]["radii"]["0.1"]
    # the worst case is the union of every run's breaks, per example: only example 3 resists everything
    assert row["worst_case"] == 25.0 and row[suite_ablation.DEFAULT] == 50.0 and row["candidate"] == 50.0
    assert table["m"]["seconds_tried"] == 50.0  # every run but the default suite's
    text = suite_ablation.markdown(table, 4)
    assert "| m | 25.0 |  | 2.50 | 3 | 2.0 |" in text  # no re-run of the default suite: its column is empty
    # the gap is example 2, which one other run (pgdb-margin) breaks and v2 does not
    assert row["rarity"] == [1] and text.splitlines()[-3].endswith("| 2.0 | 1 / 0 / 0 | gap, runs tried |")
    # the default suite re-run in small batches breaks example 2 too: with it, no gap is left
    runs[suite_ablation.RERUN] = run([0.05, 0.09, 0.1, "inf"], 30.0)
    table = suite_ablation.analyse({"radii": [0.1], "runs": {"m": runs}}, ["pgdb-margin"])
    assert table["m"]["radii"]["0.1"]["rerun_union"] == 25.0
    assert "| m | 25.0 | 0.0 | 2.50 | 4 | 3.2 | 0 / 1 / 0 | gap |" in suite_ablation.markdown(table, 4)


def test_near_miss_table_counts_the_other_json_in_the_worst_case():
    import suite_ablation

    def run(costs, seconds, attack_seconds):
        robust = {"0.1": sum(not float(c) <= 0.1 * (1 + 1e-4) for c in costs) / len(costs)}
        return {"broken_cost": costs, "seconds": seconds, "cost_tol": 1e-4, "robust_accuracy": robust,
                "attack_seconds": attack_seconds}

    here = {"radii": [0.1], "n": 4, "runs": {"m": {
        "standard-v2": run([0.05, "inf", "inf", "inf"], 10.0, {"a": 10.0}),
        "cand7c-nearmiss": run([0.05, 0.09, "inf", "inf"], 24.0,
                               {"a": 20.0, "apgdb-margin-mu3-lr3-r2": 4.0})}}}
    other = {"radii": [0.1], "n": 4, "runs": {"m": {"x": run(["inf", "inf", 0.1, "inf"], 5.0, {})},
                                               "unrelated": {"x": run([0.0] * 4, 1.0, {})}}}
    lines = suite_ablation.near_miss_table(here, [other]).splitlines()
    # example 2 falls only to the other JSON's run: the candidate's gap is one example of four
    assert "| m | cand7c-nearmiss | 50.0 | 25.0 | 24 | 2.40 | 20 % |" in lines
    assert "| m | worst case of 3 runs | 25.0 | | | | |" in lines
    assert "| m | worst case of 2 runs | 50.0 | | | | |" in suite_ablation.near_miss_table(here, None)
    # Several other JSONs: each one's runs count, even under the same label.
    third = {"radii": [0.1], "n": 4, "runs": {"m": {"x": run(["inf", 0.08, "inf", 0.02], 5.0, {})}}}
    lines = suite_ablation.near_miss_table(here, [other, third]).splitlines()
    assert "| m | worst case of 4 runs | 0.0 | | | | |" in lines
    with pytest.raises(SystemExit, match="same images and radii"):
        suite_ablation.near_miss_table(here, [{**other, "n": 5}])


def test_suite_ablation_verdict_reads_the_three_bars():
    import suite_ablation

    def table(v5, worst, v5_s, v2_s, tried_s):
        radii = {"0.1": {suite_ablation.DEFAULT: v5, "worst_case": worst}}
        return {"radii": radii, "seconds": {"standard-v2": v2_s, suite_ablation.DEFAULT: v5_s},
                "seconds_tried": tried_s}

    # 30.0 - 29.5 is 0.5000000000000036 in floats: a gap of one example in 200 meets the bar
    bars = suite_ablation.verdict(table(30.0, 29.5, 30.0, 10.0, 90.0))
    assert bars["meets"] == {"gap_points": True, "time_vs_v2": True, "others_vs_default": True}
    bars = suite_ablation.verdict(table(30.0, 29.4, 31.0, 10.0, 89.0))
    assert bars["meets"] == {"gap_points": False, "time_vs_v2": False, "others_vs_default": False}
    assert bars["time_vs_v2"] == pytest.approx(3.1) and bars["others_vs_default"] == pytest.approx(89 / 31)
    assert suite_ablation.verdict({**table(1, 1, 1, 1, 1), "seconds": {"standard-v2": 1.0}}) is None


def test_suite_ablation_takes_held_out_checkpoints(tmp_path):
    """``--checkpoint NAME=PATH``: a weights file of the reference network under a new name; bad forms
    are one-line argument errors."""
    import argparse

    import suite_ablation

    from wasserstein_attacks.models import build_model

    path = tmp_path / "mine.pt"
    torch.save(build_model("mnist_convnet", seed=3).state_dict(), path)
    assert suite_ablation._checkpoint_arg(f"mine={path}") == ("mine", path)
    model = suite_ablation._model("mine", {"mine": path})
    reference = build_model("mnist_convnet", seed=3).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    assert not model.training
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="--checkpoint bad="):
        suite_ablation._model("bad", {"bad": bad})
    for text, message in [("mine", "NAME=PATH"), ("standard=" + str(path), "is a model of --models"),
                          (f"mine={tmp_path / 'missing.pt'}", "is not a file")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            suite_ablation._checkpoint_arg(text)


def test_suite_ablation_rerun_runs_the_default_suite_in_small_batches(monkeypatch):
    """The re-run covers every example once, in order, and weighs each batch's accuracy by its size."""
    import _leaderboard_fixtures as F
    import suite_ablation

    from wasserstein_attacks.attacks import load_suite

    monkeypatch.setattr(suite_ablation, "RERUN_BATCH", 3)  # 7 examples: batches of 3, 3 and 1
    monkeypatch.setattr(suite_ablation, "_suite", lambda label: load_suite("debug-v1"))
    x, y = F.synthetic_data(7)
    model = F.tiny_model()
    calls = []
    run = suite_ablation.Suite.run

    def spy(self, model, images, labels, radii, **kw):
        calls.append(kw["indices"].tolist())
        return run(self, model, images, labels, radii, **kw)

    monkeypatch.setattr(suite_ablation.Suite, "run", spy)
    out = suite_ablation._run(suite_ablation.RERUN, model, x, y)
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    costs = torch.tensor([float(c) for c in out["broken_cost"]])
    assert costs.shape == (7,)
    for r in suite_ablation.RADII:
        # clean mistakes carry cost 0, so "not broken within r" is exactly "robust at r"
        expected = float((~(costs <= r * (1 + out["cost_tol"]))).double().mean())
        assert out["robust_accuracy"][repr(r)] == pytest.approx(expected)
    calls.clear()
    suite_ablation._run("standard-v5", model, x, y)  # any other label: one batch of all examples
    assert calls == [list(range(7))]


def test_defense_summary_keeps_every_evaluation_of_the_trained_weights(tmp_path):
    import defense_summary

    from wasserstein_attacks._util import sha256_file

    train = tmp_path / "train"
    train.mkdir()
    (train / "model_state_dict.pt").write_bytes(b"weights")
    (train / "train_log.json").write_text(json.dumps({"config": {"eps": 0.3}, "epochs": [{"seconds": 2.0}]}))

    def evaluation(name, checkpoint, n):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({
            "suite": {"version": 5}, "n_examples": n, "clean_accuracy": 0.99, "robust_accuracy": {"0.1": 0.9},
            "exact_check": {}, "model": {"checkpoint_sha256": checkpoint}, "git_commit": "abc"}))
        return folder

    own = sha256_file(train / "model_state_dict.pt")
    out = defense_summary.summary(train, evaluation("a", own, 1000), evaluation("b", own, 200))
    assert out["evaluation"]["n_examples"] == 1000 and out["other_evaluations"][0]["n_examples"] == 200
    assert out["training"]["seconds"] == 2.0
    with pytest.raises(SystemExit, match="another checkpoint"):
        defense_summary.summary(train, evaluation("c", "0" * 64, 1000))


def test_defense_front_groups_every_evaluation_by_protocol_and_plots(tmp_path):
    import defense_summary

    def ev(version, n, r2, r5, clean=0.98):
        return {"suite": {"version": version}, "n_examples": n, "clean_accuracy": clean,
                "robust_accuracy": {"0.2": r2, "0.5": r5}}

    results = tmp_path / "results"
    results.mkdir()
    (results / "defense-adv-a.json").write_text(json.dumps({
        "evaluation": ev(5, 1000, 0.79, 0.30),
        "other_evaluations": [ev(2, 200, 0.83, 0.36), ev(5, 200, 0.82, 0.34)]}))
    (results / "defense-adv-b.json").write_text(json.dumps(
        {"evaluation": ev(2, 200, 0.78, 0.42, clean=0.95)}))
    (results / "defense-curve-x.json").write_text("{}")  # curves are not summaries: skipped
    entries = tmp_path / "entries"
    entries.mkdir()
    (entries / "WattackAdvA.json").write_text(json.dumps(
        {"claimed": {"clean_accuracy": 0.975, "robust_accuracy": {"0.2": 0.796, "0.5": 0.297}}}))
    (entries / "WongVanilla.json").write_text(json.dumps({"claimed": {}}))  # not one of ours: skipped

    reports = {p.stem.removeprefix("defense-adv-"): json.loads(p.read_text())
               for p in sorted(results.glob("defense-adv-*.json"))}
    points = defense_summary.front_points(reports)
    assert points[(2, 200)] == [("a", 0.98, 0.83, 0.36), ("b", 0.95, 0.78, 0.42)]
    assert points[(5, 200)] == [("a", 0.98, 0.82, 0.34)] and points[(5, 1000)] == [("a", 0.98, 0.79, 0.30)]
    assert defense_summary.entry_points(entries) == [("WattackAdvA", 0.975, 0.796, 0.297)]
    png = defense_summary.front(results, entries)
    assert png == results / "defense-front.png" and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="no defense"):
        defense_summary.front(tmp_path / "entries", entries)


def test_smoothing_paired_counts_discordant_examples_and_refuses_unpaired_runs():
    import smoothing

    def results(preds, radii, seed=0):
        return {"n0": 100, "n": 1000, "alpha": 0.05, "seed": seed,
                "certified_accuracy": {"0.01": None, "0.05": None},
                "examples": {"index": [0, 1, 2, 3], "label": [1, 2, 3, 4], "prediction": preds,
                             "radius": radii}}

    a = results([1, 2, 3, 0], [0.06, 0.06, 0.02, 0.3])   # the last one is wrong: never counts
    b = results([1, 2, -1, 4], [0.02, 0.06, None, 0.06])  # -1: abstained (radius None)
    out = smoothing.paired(a, b)
    assert out["n_examples"] == 4
    assert out["0.01"] == {"a": 3, "b": 3, "only_a": 1, "only_b": 1, "p_value": 1.0}
    assert (out["0.05"]["a"], out["0.05"]["b"], out["0.05"]["only_a"], out["0.05"]["only_b"]) == (2, 2, 1, 1)
    many_a = results([1] * 4, [0.1] * 4)
    many_a["examples"]["label"] = [1] * 4
    none_b = results([2] * 4, [0.1] * 4)
    none_b["examples"]["label"] = [1] * 4
    assert smoothing.paired(many_a, none_b)["0.05"]["p_value"] == pytest.approx(0.125)  # 4 of 4: 2 / 2**4
    with pytest.raises(ValueError, match="seed"):
        smoothing.paired(a, results([1, 2, 3, 4], [0.1] * 4, seed=1))
    c = results([1, 2, 3, 4], [0.1] * 4)
    c["examples"]["index"] = [0, 1, 2, 5]
    with pytest.raises(ValueError, match="different examples"):
        smoothing.paired(a, c)


def test_every_smoothing_configuration_composes_with_the_certify_config(tmp_path, monkeypatch):
    import argparse

    import smoothing
    from hydra import compose, initialize_config_dir

    from wasserstein_attacks.cli import CONF_DIR

    monkeypatch.setattr(smoothing, "RUNS", tmp_path / "runs" / "smoothing")
    args = argparse.Namespace(n=100, n0=1000, draws=10000, alpha=0.05, empirical=0, empirical_steps=100,
                              reuse=False)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for label, (noise, sigma, _, epochs, _, extra) in smoothing.CONFIGS.items():
            overrides = [o for o in smoothing.command(label, args) if not o.startswith("hydra.")]
            cfg = compose("certify", overrides=overrides)
            assert cfg.smoothing.sigma == sigma and cfg.train.epochs == epochs, label
            assert cfg.smoothing.name == noise, label
            assert (cfg.train.method == "smoothadv") == ("train.method=smoothadv" in extra), label
            if label == "lap-0.02-smoothadv-fs":  # SmoothAdv in place of the noise epochs
                assert cfg.train.smoothadv.epochs == 8 and cfg.train.smoothadv.n == 60000


def test_the_attack_docs_speed_table_is_the_committed_json():
    """docs/attacks/index.md's speed table reads ``attack_speed.json`` (CPU) and the H200 file: a re-run
    of the benchmark that is not copied into the docs fails here."""
    import re

    docs = (BENCH.parent / "docs" / "attacks" / "index.md").read_text()

    def per_iteration(path: str) -> dict[tuple[str, str], tuple[float, float]]:
        data = json.loads((BENCH / "results" / path).read_text())
        return {(a["name"], a["kwargs"].get("solver", "")): (1000 * a["seconds_per_iteration"],
                                                            a["ratio_to_model_pass"])
                for a in data["attacks"]}

    cpu, gpu = per_iteration("attack_speed.json"), per_iteration("attack_speed-nvidia_h200.json")
    number = r" \| ([\d.]+)"
    rows = re.findall(r"^\| `(\w+)`(?:, `solver=\"(\w+)\"`)?[^|]*" + 3 * number + r" \|$", docs, re.M)
    assert len(rows) == len(cpu) == 9
    for name, solver, cpu_ms, passes, gpu_ms in rows:
        ms, ratio = cpu[(name, solver)]
        for shown, measured in [(cpu_ms, ms), (passes, ratio), (gpu_ms, gpu[(name, solver)][0])]:
            digits = len(shown.split(".")[1]) if "." in shown else 0
            assert float(shown) == pytest.approx(measured, abs=0.51 * 10 ** -digits), (name, solver, shown)
    model_pass = json.loads((BENCH / "results" / "attack_speed.json").read_text())["model_forward_backward"]
    assert f"pass takes {1000 * model_pass['min_s']:.1f} ms there" in docs


def test_lowpass_features_see_flow_noise_at_its_predicted_scale():
    """Flow noise has covariance sigma^2 N^2 L: on the cosine modes of x / N it has standard deviation
    sigma sqrt(l_a + l_b), which ``LowModes`` divides out, and none on the mass."""
    import smoothing_lowpass

    from wasserstein_attacks.defenses.smoothing.flows import apply_flow, num_edges
    from wasserstein_attacks.defenses.smoothing.noise import make_noise

    model = smoothing_lowpass.LowModes(4)
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    noise = make_noise("uniform", sigma=0.5)
    draws = noise.sample((4000, 1, num_edges(28, 28)), torch.Generator().manual_seed(1))
    noised = apply_flow(x.expand(4000, -1, -1, -1), draws * x.sum())
    f = model.features(noised)
    assert f.shape == (4000, 4 * 4 - 1 + 1)
    assert torch.allclose(f[:, -1], torch.log(x.sum()).expand(4000), atol=1e-5)  # the mass: no noise
    assert torch.allclose(f[:, :-1].std(0), torch.full((15,), 0.5), rtol=0.06)
    assert smoothing_lowpass.LowModes(0).features(noised).shape == (4000, 1)


def test_lowpass_measure_is_reproducible(monkeypatch):
    """Same seed, same model and counts: the initial weights come from the seed, not torch's default."""
    import argparse

    import smoothing_lowpass

    g = torch.Generator().manual_seed(0)
    data = type("Data", (), {"images": torch.rand(12, 1, 28, 28, generator=g) * 0.3,
                             "labels": torch.arange(12) % 10})
    monkeypatch.setattr(smoothing_lowpass, "load_dataset", lambda *a, **k: data)
    args = argparse.Namespace(epochs=1, consistency=1.0, draws=50, n=12)
    runs = []
    for state in (1, 2):  # another global random state before each run
        torch.manual_seed(state)
        run = smoothing_lowpass.measure("uniform", 0.1, 2, args, seed=3)
        runs.append({k: v for k, v in run.items() if not k.endswith("seconds")})
    assert runs[0] == runs[1] and runs[0]["seed"] == 3


def test_gap_rounding_takes_the_default_suites_misses_and_its_batch(monkeypatch):
    """The gap: examples one configuration breaks within the radius and the default suite does not; the
    companions: what the default suite attacked there (broken by it at a larger radius only)."""
    import _leaderboard_fixtures as F
    import gap_rounding

    from wasserstein_attacks.attacks import load_suite

    default = gap_rounding.DEFAULT
    runs = {default: {"cost_tol": 1e-4, "broken_cost": [0.0, 0.15, 0.4, "inf", 0.3001, 0.3, 0.45]},
            "apgdb-ce": {"cost_tol": 1e-4, "broken_cost": [0.0, 0.1, 0.3, 0.29, "inf", 0.4, 0.30002]}}
    gap, companions = gap_rounding.gap_and_companions(runs, "apgdb-ce", 0.3)
    # 2 and 3 are missed by the default suite; a break within the tolerance of 0.3 counts at 0.3 (6)
    assert gap == [2, 3, 6]
    # 4 (just outside the tolerance) is a companion: the default suite attacked it at 0.3 and failed
    assert companions == [4]
    # the re-attack names dataset positions, and finds what a direct run of the suite finds
    monkeypatch.setattr(gap_rounding, "_suite", lambda label: load_suite("debug-v1"))
    x, y = F.synthetic_data(6)
    model = F.tiny_model()
    idx = [1, 3, 4]
    ball = gap_rounding.WassersteinBall(eps=0.0)
    res = load_suite("debug-v1").run(model, x[idx], y[idx], [0.5], threat=ball, seed=0,
                                     indices=torch.tensor(idx), progress=False)
    within = 0.5 * (1 + res.cost_tol)
    expected = [i for i, c in zip(idx, res.broken_cost.tolist(), strict=True) if c <= within]
    assert gap_rounding.broken("apgdb-ce", model, x, y, idx, 0.5) == expected


def test_a_soup_is_the_reference_network_with_its_members_mean_weights():
    import defense_soup

    a, b = "WattackAdvPGDCE", "WattackAdvPGDCE-eps0.5-0.3"
    for members in defense_soup.SOUPS.values():
        assert all((setup.ENTRY_DIR / f"{m}.pt").is_file() for m in members), members
    wa, wb = (torch.load(setup.ENTRY_DIR / f"{m}.pt", weights_only=True) for m in (a, b))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    one = defense_soup.soup([a]).state_dict()
    assert all(torch.equal(one[k], wa[k]) for k in wa)
    two = defense_soup.soup([a, b]).state_dict()
    assert all(torch.allclose(two[k], (wa[k] + wb[k]) / 2) for k in wa)
