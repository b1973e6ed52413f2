"""Console scripts: ``wattack-bench``, ``wattack-train`` (Hydra apps, packaged conf/), ``wattack-merge``.

``wattack-bench [overrides]`` evaluates a model (see :mod:`wasserstein_attacks.bench`); ``--help`` lists
the config groups. Your own config files (an ``experiment/``, ``model/`` or any group) are found with
``hydra.searchpath=[file:///path/to/your/conf]``.
``wattack-train [overrides]`` trains the project's standard MNIST model.
``wattack-merge FOLDER... [-o OUT]`` combines the shard folders of one run.
A bad config stops with a one-line message naming the field (exit status 2) before any work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import bench
from ._util import write_json
from .bench import ConfigError

__all__ = ["bench_main", "train_main", "merge_main", "CONF_DIR"]

#: The project's Hydra config root, shipped inside the package (a plain folder in site-packages too:
#: Hydra gets it as an absolute path, which works from a checkout, an editable and a wheel install).
CONF_DIR = Path(__file__).resolve().parent / "conf"


def _fail(prog: str, exc: Exception):
    print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
    sys.exit(2)


def _check_group_choices(argv: list[str]) -> None:
    """Name an unknown ``attack=``/``suite=``/... choice in one line, before Hydra's longer report."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        groups = ("attack", "suite", "dataset", "model", "threat", "logger", "experiment")
        if key not in groups or not value or "(" in value:  # sweep functions (choice, glob): Hydra checks
            continue
        values = value.split(",") if "," in value and not value.startswith(("[", "{")) else [value]
        known = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        for v in values:
            v = v.strip()
            if v != "null" and v not in known:
                _fail(
                    "wattack-bench", ConfigError(f"{key}: unknown {key} {v!r}; available: {', '.join(known)}")
                )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _bench_app(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        bench.run(cfg, hc.runtime.output_dir, attack_label=hc.runtime.choices.get("attack"))
    except ConfigError as exc:
        _fail("wattack-bench", exc)


def bench_main() -> None:
    """``wattack-bench``: evaluate a model under the Wasserstein threat model (Hydra overrides)."""
    # Extra search paths (hydra.searchpath=...) can add choices this check does not see.
    if not any(a.startswith("hydra.searchpath") for a in sys.argv[1:]):
        _check_group_choices(sys.argv[1:])
    _bench_app()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _train_app(cfg: DictConfig) -> None:
    from .data import load_dataset
    from .defenses import training as train

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        kwargs = OmegaConf.to_container(cfg.train, resolve=True)
        threat = bench.build_threat(cfg, eps=cfg.report.eps)
        model = train.standard_mnist_model(**kwargs)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        _fail("wattack-train", exc)
    test = load_dataset("mnist", "test", n=cfg.report.test_n)
    acc = train.evaluate(model, test)
    print(f"standard MNIST model: clean accuracy {acc:.4f} on {len(test)} MNIST test images", flush=True)
    report = train.natural_transformation_report(model, test, threat, n=int(cfg.report.natural_n))
    write_json(
        out / "natural_transformations.json", {"clean_accuracy": acc, "test_n": len(test), **report}
    )
    print(train.format_natural_report(report))
    print(f"report written to {out / 'natural_transformations.json'}", flush=True)


def train_main() -> None:
    """``wattack-train``: train (or load from cache) the project's standard MNIST model and report on it."""
    _train_app()


def merge_main(argv: list[str] | None = None) -> None:
    """``wattack-merge FOLDER... [-o OUT]``: combine the shards of one run into one results.json."""
    parser = argparse.ArgumentParser(
        prog="wattack-merge",
        description="Combine the shard folders of one wattack-bench run (shard=0/n ... n-1/n) into one run "
        "folder whose results.json equals an unsharded run's.",
    )
    parser.add_argument("folders", nargs="+", help="shard run folders (each holds state/header.json)")
    parser.add_argument("-o", "--output", help="output folder (default: <parent of the first folder>/merged)")
    args = parser.parse_args(argv)
    out = Path(args.output) if args.output else Path(args.folders[0]).resolve().parent / "merged"
    try:
        bench.merge(args.folders, out)
    except ValueError as exc:
        _fail("wattack-merge", exc)
