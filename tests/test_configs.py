"""Every Hydra config in the package's conf/ composes, its targets instantiate; presets run at tiny size.

Also: users' own config folders (``hydra.searchpath``) extend the packaged groups.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_method
from omegaconf import OmegaConf

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(TESTS))

from conftest import zoo_available  # noqa: E402

from wasserstein_attacks import WassersteinBall, bench, leaderboard  # noqa: E402
from wasserstein_attacks.attacks.base import Attack  # noqa: E402
from wasserstein_attacks.attacks.suite import Suite, load_suite, suite_from_config  # noqa: E402
from wasserstein_attacks.bench import spec  # noqa: E402
from wasserstein_attacks.cli import CONF_DIR as CONF  # noqa: E402


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides: str, config: str = "config", hydra_node: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=list(overrides), return_hydra_config=hydra_node)


def bind(node) -> None:
    """The ``_target_`` exists and accepts the config's keyword arguments (without calling it)."""
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=False).items() if k != "_target_"}
    inspect.signature(get_method(node._target_)).bind(**kwargs)


def test_the_groups_exist():
    for group in ("dataset", "model", "threat", "suite", "logger", "experiment", "hydra/launcher"):
        assert options(group), f"conf/{group}/ is empty"
    assert {"quick_mnist", "reference", "debug"} <= set(options("experiment"))
    assert {"standard-v1", "standard-v2"} <= set(options("suite"))
    assert {"none", "wandb"} <= set(options("logger"))


def test_default_config_composes_to_the_quick_mnist_run():
    cfg = compose_cfg()
    assert cfg.name == "quick-mnist" and cfg.dataset.name == "mnist" and cfg.dataset.n == 500
    assert list(cfg.radii) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    assert cfg.model.name == "standard_mnist" and cfg.suite.name == "standard" and cfg.get("attack") is None
    assert cfg.threat.p == 1 and cfg.threat.kernel_size == 5
    bind(cfg.model.build)
    bind(cfg.dataset)


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_configs(name):
    cfg = compose_cfg(f"dataset={name}")
    if OmegaConf.is_missing(cfg.dataset, "root"):
        # A user-provided folder (CIFAR-10): the config must say so rather than guess a path.
        bind(OmegaConf.merge(cfg.dataset, {"root": "/data"}))
        return
    bind(cfg.dataset)
    if name == "synthetic":
        images, labels, info = spec.load_data(cfg)
        assert images.shape == (cfg.dataset.n, 1, 12, 12) and labels.shape == (cfg.dataset.n,)
        assert info["name"] == "synthetic" and "root" not in info


@pytest.mark.parametrize("name", options("model"))
def test_model_configs(name):
    cfg = compose_cfg(f"model={name}")
    assert set(cfg.model) == {"name", "build", "checkpoint"}
    bind(cfg.model.build)
    if OmegaConf.is_missing(cfg.model, "checkpoint"):  # the user names the weights (model=mnist_convnet)
        with pytest.raises(spec.ConfigError, match="model.checkpoint"):
            spec.build_model(cfg)
        return
    if cfg.model.checkpoint is not None and not Path(cfg.model.checkpoint).is_file():
        pytest.skip(
            f"checkpoint {cfg.model.checkpoint} absent (reference models live in ../shared for developers)"
        )
    if name == "standard_mnist":
        pytest.skip("instantiating trains the standard model: covered by the slow preset test")
    zoo_name = cfg.model.build.get("name") if "load_model" in cfg.model.build._target_ else None
    if zoo_name is not None and not zoo_available(zoo_name):
        pytest.skip(f"zoo model {zoo_name} has no local copy (set $WATTACK_ZOO_DIR; tests never download)")
    model, info = spec.build_model(cfg)
    assert isinstance(model, torch.nn.Module) and info["name"] == cfg.model.name
    if cfg.model.checkpoint is not None:
        assert len(info["checkpoint_sha256"]) == 64


@pytest.mark.parametrize("name", options("threat"))
def test_threat_configs(name):
    cfg = compose_cfg(f"threat={name}")
    ball = bench.build_threat(cfg, eps=0.1)
    assert isinstance(ball, WassersteinBall) and ball.box == (0.0, 1.0) and float(ball.eps_for(1)) == 0.1
    assert "eps" not in cfg.threat  # the radius comes from `radii`


@pytest.mark.parametrize("name", options("suite"))
def test_suite_configs(name):
    cfg = compose_cfg(f"suite={name}")
    assert isinstance(cfg.suite.version, int) and cfg.suite.version >= 1
    assert name.endswith(f"-v{cfg.suite.version}"), "a suite file is named <name>-v<version>"
    suite = suite_from_config(cfg.suite)
    assert isinstance(suite, Suite) and all(isinstance(a, Attack) for a in suite.attacks)
    loaded = load_suite(name)
    assert (loaded.name, loaded.version, loaded.labels) == (suite.name, suite.version, suite.labels)
    assert loaded.order == suite.order == cfg.suite.get("order", "ascending")
    if name == "standard-v2":
        # Same attacks and settings as v1, only the walk over the radii differs.
        v1 = compose_cfg("suite=standard-v1").suite
        assert suite.order == "descending" and cfg.suite.attacks == v1.attacks
    if name == "standard-v4":
        # v3's attacks with v3's settings and targeted runs, plus a fast-price margin PGD run.
        v3 = compose_cfg("suite=standard-v3").suite
        assert {k: cfg.suite.attacks[k] for k in v3.attacks} == v3.attacks and cfg.suite.targets == v3.targets
        assert cfg.suite.attacks.pgdb_margin_fastprice.dual_lr == 3.0 and suite.order == v3.order
    if name == "standard-v5":
        # Box-aware PGD only, every run with APGD's schedule; margin both with slow and fast prices.
        assert {a.schedule for a in suite.attacks} == {"apgd"} and suite.order == "descending"
        assert sorted((a.loss, a.dual_lr) for a in suite.attacks) == [
            ("ce", 0.1), ("dlr", 3.0), ("margin", 0.1), ("margin", 3.0)]
    if name == "standard-v3":
        # v2's two attacks with v2's settings, among others, walked the same way: never weaker than v2.
        v2 = compose_cfg("suite=standard-v2").suite
        targets = cfg.suite.get("targets", {})
        assert suite.order == "descending" and targets.get("fwb_ce", 0) == targets.get("pgdb_ce", 0) == 0
        assert cfg.suite.attacks.fwb_ce == v2.attacks.frank_wolfe_box
        assert cfg.suite.attacks.pgdb_ce == v2.attacks.pgd_box


#: sha256 (first 16 hex digits) of each frozen suite's resolved config: every attack setting, the walk and
#: the targeted runs. Published numbers name a suite version; a change to any of these means a new version.
FROZEN_SUITES = {
    "standard-v1": "8f8bd5d525a0d752",
    "standard-v2": "e8a46984c389961c",
    "standard-v3": "e01d9b44fdf6f978",
    "standard-v4": "60fc8636ccd6ec5f",
    "standard-v5": "ecf2155cc4437454",
}


#: Attack settings added after a suite was frozen, at the value that keeps the earlier behaviour: left out
#: of the fingerprint (any other value changes it).
NEUTRAL_SETTINGS = {"schedule": "fixed"}


@pytest.mark.parametrize("name", sorted(FROZEN_SUITES))
def test_frozen_suites_do_not_change(name):
    resolved = OmegaConf.to_container(compose_cfg(f"suite={name}").suite, resolve=True)
    for attack in resolved["attacks"].values():
        for key, value in NEUTRAL_SETTINGS.items():
            if attack.get(key) == value:
                del attack[key]
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]
    assert digest == FROZEN_SUITES[name], (
        f"{name} is frozen: its attacks or their settings (conf/attack/*.yaml defaults included) changed; "
        "add a new version instead")


@pytest.mark.parametrize("name", options("attack"))
def test_attack_configs_are_exactly_the_constructor_arguments(name):
    cfg = compose_cfg(f"attack={name}")
    cls = get_method(cfg.attack._target_)
    params = {
        k
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and k != "self"
    }
    assert set(cfg.attack) - {"_target_"} == params
    suite, desc = spec.build_suite(cfg, name)
    assert isinstance(suite.attacks[0], Attack) and desc["name"] == f"single-{name}"


@pytest.mark.parametrize("name", options("logger"))
def test_logger_configs(name):
    cfg = compose_cfg(f"logger={name}")
    assert cfg.logger.kind == name


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_presets_compose(name):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.name and list(cfg.radii) and cfg.dataset.n >= 1
    bench.build_threat(cfg)
    bind(cfg.model.build)


def test_launchers_compose():
    cfg = compose_cfg("hydra/launcher=parallel", hydra_node=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    cfg = compose_cfg("hydra/launcher=basic", hydra_node=True)
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher is not installed (pip install -e '.[slurm]')",
)
def test_slurm_launcher_composes():
    cfg = compose_cfg("hydra/launcher=slurm", hydra_node=True)
    assert "submitit" in cfg.hydra.launcher._target_.lower()


def test_train_config_composes():
    cfg = compose_cfg(config="train")
    from wasserstein_attacks.defenses import training as train

    inspect.signature(train.standard_mnist_model).bind(**OmegaConf.to_container(cfg.train))
    assert float(bench.build_threat(cfg, eps=cfg.report.eps).eps_for(1)) == cfg.report.eps


def test_run_folder_is_deterministic_and_shard_safe():
    cfg = compose_cfg("experiment=debug", hydra_node=True)
    run = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert run["run"]["dir"] == "runs/${name}/${wattack_dirname:${hydra:job.override_dirname}}"
    assert run["sweep"]["subdir"] == "${wattack_dirname:${hydra:job.override_dirname}}"
    assert {"name", "logger", "progress", "experiment"} <= set(
        cfg.hydra.job.config.override_dirname.exclude_keys
    )
    name = OmegaConf.create({"a": "${wattack_dirname:'seed=3,shard=1/4'}", "b": "${wattack_dirname:''}"})
    assert (name.a, name.b) == ("seed=3,shard=1-of-4", "default")


def test_user_config_folders_extend_the_packaged_groups(tmp_path):
    mine = tmp_path / "my_conf"
    (mine / "experiment").mkdir(parents=True)
    (mine / "model").mkdir()
    (mine / "model" / "my_tiny.yaml").write_text(
        "name: my_tiny\nbuild:\n  _target_: wasserstein_attacks.models.build_model\n  name: tiny\n"
        "  num_classes: 4\n  seed: 3\ncheckpoint: null\n"
    )
    (mine / "experiment" / "my_debug.yaml").write_text(
        "# @package _global_\ndefaults:\n  - debug\n  - override /model: my_tiny\n"
        "name: my-debug\nradii: [0.3]\n"
    )
    code = "import sys; sys.argv[0] = 'wattack-bench'; import wasserstein_attacks.cli as c; c.bench_main()"
    args = [f"hydra.searchpath=[file://{mine}]", "experiment=my_debug", "--cfg", "job"]
    env = dict(os.environ, WANDB_MODE="disabled")
    p = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=99
    )
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = OmegaConf.create(p.stdout)
    assert (cfg.name, cfg.model.name, cfg.model.build.seed) == ("my-debug", "my_tiny", 3)
    assert list(cfg.radii) == [0.3]
    assert cfg.dataset.name == "synthetic" and cfg.suite.name == "debug"  # the packaged preset underneath


def test_debug_preset_runs(tmp_path):
    results = bench.run(compose_cfg("experiment=debug", "progress=false"), tmp_path / "debug")
    assert results["n_examples"] == 32 and results["dataset"]["name"] == "synthetic"
    assert results["exact_check"]["within_counted_radius"] == results["exact_check"]["checked"]


@pytest.mark.slow
def test_quick_mnist_preset_runs_at_tiny_size(tmp_path):
    cfg = compose_cfg(
        "experiment=quick_mnist",
        "dataset.n=4",
        "radii=[0.1]",
        "batch_size=4",
        "progress=false",
        "+model.build.train_size=256",
        "+model.build.epochs=1",
        f"+model.build.cache_dir={tmp_path}",
        "+model.build.progress=false",
    )
    results = bench.run(cfg, tmp_path / "quick")
    assert results["n_examples"] == 4 and results["suite"]["name"] == "standard"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "reference_models").is_dir(), reason="../shared/reference_models is absent")
def test_reference_preset_runs_at_tiny_size(tmp_path):
    cfg = compose_cfg("experiment=reference", "dataset.n=4", "radii=[0.1]", "batch_size=4", "progress=false")
    results = bench.run(cfg, tmp_path / "ref")
    assert results["model"]["checkpoint_sha256"] == (
        "cb1b02fecc0fa07a0b86a22ef87187c1e849ebaa24cd8f8004f039a0f9871f32"
    )


@pytest.mark.slow
def test_train_app_runs_at_tiny_size(tmp_path):
    code = "import sys; sys.argv[0] = 'wattack-train'; import wasserstein_attacks.cli as c; c.train_main()"
    args = [
        "+train.train_size=256",
        "+train.epochs=1",
        f"train.cache_dir={tmp_path}",
        "train.progress=false",
        "report.test_n=200",
        "report.natural_n=5",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    p = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "clean accuracy" in p.stdout
    report = json.loads((tmp_path / "run" / "natural_transformations.json").read_text())
    assert 0 <= report["clean_accuracy"] <= 1 and report["test_n"] == 200
    # With p = 1 a one-pixel shift that loses no mass is at distance exactly 1.
    # 1 up to the referee's unmatched-mass allowance (mass_tol * N moved at most across the image).
    assert report["transformations"]["shift"]["distance"]["median"] == pytest.approx(1.0, rel=3e-4)


def test_a_suite_with_near_miss_runs_is_described_and_the_description_validates():
    import jsonschema
    from omegaconf import open_dict

    cfg = compose_cfg("suite=standard-v5")
    with open_dict(cfg):
        cfg.suite.attacks.again = cfg.suite.attacks.apgdb_margin_fastprice
        cfg.suite.near_miss = {"again": -0.15}
    suite, desc = spec.build_suite(cfg)
    assert suite.near_miss == [None] * 4 + [-0.15]
    assert [a.get("near_miss") for a in desc["attacks"]] == [None] * 4 + [-0.15]
    schema = json.loads((Path(bench.__file__).parent / "results_schema.json").read_text())
    jsonschema.validate(desc, schema["properties"]["suite"])
    assert "near_miss_pass" not in desc  # the default: v1-v5's descriptions do not change
    with open_dict(cfg):
        cfg.suite.near_miss_pass = "pooled"
    suite, desc = spec.build_suite(cfg)
    assert suite.near_miss_pass == desc["near_miss_pass"] == "pooled"
    jsonschema.validate(desc, schema["properties"]["suite"])
    entry_schema = json.loads((Path(leaderboard.__file__).parent / "entry_schema.json").read_text())
    jsonschema.validate(desc, {"$defs": entry_schema["$defs"], **entry_schema["properties"]["suite"]})
