"""Console scripts: ``wattack-bench``, ``wattack-train`` (Hydra apps, packaged conf/), ``wattack-merge``.

``wattack-bench [overrides]`` evaluates a model (see ``wasserstein_attacks.bench``); ``--help`` lists
the config groups. Your own config files (an ``experiment/``, ``model/`` or any group) are found with
``hydra.searchpath=[file:///path/to/your/conf]``.
``wattack-train [overrides]`` trains the project's standard MNIST model, or adversarially with
``defense=adversarial`` (any attack or suite inside; resumable; ``torchrun`` for data parallelism).
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

__all__ = ["bench_main", "train_main", "merge_main", "certify_main", "CONF_DIR"]

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
    if cfg.defense.kind == "adversarial":
        _adversarial_train(cfg, out, HydraConfig.get().runtime.choices.get("attack"))
        return
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


def _adversarial_train(cfg: DictConfig, out: Path, attack_label: str | None) -> None:
    """``defense=adversarial``: build the inner attack (or suite) and the ball, then train (conf/defense)."""
    from hydra.utils import instantiate

    from .bench.spec import build_suite
    from .defenses.from_config import run_adversarial_training

    if cfg.get("attack") is not None and cfg.get("suite") is not None:
        _fail("wattack-train", ConfigError("give attack=<name> or suite=<name> (with ~attack), not both"))
    steps = cfg.defense.get("attack_steps")
    try:
        if steps is not None:  # attack steps per batch, for the attack or every attack of the suite
            for node in [cfg.attack] if cfg.get("attack") is not None else cfg.suite.attacks.values():
                node.steps = steps
        threat = bench.build_threat(cfg)  # its radius is unused: the trainer's ramp sets it per step
        suite, _ = build_suite(cfg, attack_label)
        try:
            dataset = instantiate(cfg.dataset, _convert_="all")
        except Exception as exc:  # noqa: BLE001 - Hydra wraps the loader's ValueError
            raise ConfigError(f"dataset: {str(exc.__cause__ or exc).splitlines()[0]}") from exc
        run_adversarial_training(
            OmegaConf.to_container(cfg.defense, resolve=True),
            dataset=dataset,
            inner=suite.attacks[0] if cfg.get("attack") is not None else suite,
            threat=threat,
            out_dir=out,
            logger=OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else None,
            standard=OmegaConf.to_container(cfg.train, resolve=True),
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        _fail("wattack-train", exc)


def train_main() -> None:
    """``wattack-train``: train the standard MNIST model, or adversarially (``defense=adversarial``)."""
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


# --------------------------------------------------------------------------- wattack-certify (issue 12)


def _certify_device(value):
    """``auto`` (cuda if available), ``cpu``, ``cuda`` or ``cuda:<i>`` as a ``torch.device``."""
    import torch

    dev = str(value)
    if dev == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(dev)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<i>, got {dev!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {dev!r} but CUDA is not available (use device=auto or cpu)")
    return device


def _certify_mass_prior(cfg: DictConfig, model):
    """``train.mass_prior``: wrap ``model`` in a ``MassPrior`` fitted on the first ``train.n`` train images.

    ``true``: the network's logits plus the prior; ``only``: the network's last linear layer zeroed, so the
    classifier reads the mass alone (the trivial baseline every certified defense must beat); ``false``:
    ``model`` unchanged. Returns the model and a JSON record (``None`` when unchanged).
    """
    import torch
    from hydra.utils import instantiate

    from .models import MassPrior

    mode = cfg.train.get("mass_prior", False)
    mode = {False: None, True: "add", "only": "only"}.get(
        mode if isinstance(mode, bool) else str(mode), "bad")
    if mode == "bad":
        raise ValueError(f"train.mass_prior must be false, true or only, got {cfg.train.mass_prior!r}")
    if mode is None:
        return model, None
    if isinstance(model, MassPrior):
        raise ValueError("train.mass_prior: the model already has a mass prior (a -massprior model config)")
    data = instantiate(cfg.dataset, split="train", n=int(cfg.train.n))
    device = next(model.parameters()).device
    with torch.no_grad():
        num_classes = int(model(data.images[:1].to(device)).shape[1])
    if mode == "only":
        linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linear:
            raise ValueError("train.mass_prior=only needs a model that ends in a linear layer")
        with torch.no_grad():
            linear[-1].weight.zero_()
            if linear[-1].bias is not None:
                linear[-1].bias.zero_()
    wrapped = MassPrior(model, num_classes).to(device).eval()
    wrapped.fit(data.images, data.labels)
    return wrapped, {"mode": mode, "bins": int(wrapped.log_prior.shape[0]), "n": len(data)}


def _certify_train(cfg: DictConfig, model, noise, out: Path, prior: dict | None) -> dict | None:
    """Train the base model when ``train.epochs > 0`` (noise augmentation, then SmoothAdv if asked).

    The weights go to ``out/base_model.pt`` when they changed (trained, or given a mass prior).
    """
    from hydra.utils import instantiate

    from .defenses.smoothing import train_under_noise
    from .models import save_checkpoint

    t = cfg.train
    method = str(t.get("method", "noise"))
    if method not in ("noise", "smoothadv"):
        raise ValueError(f"train.method must be 'noise' or 'smoothadv', got {method!r}")
    settings = OmegaConf.to_container(t, resolve=True)
    if int(t.epochs) == 0:
        if method == "smoothadv":
            raise ValueError("train.method=smoothadv needs train.epochs >= 1 (noise training comes first)")
        if prior is None:
            return None
        record = {"mass_prior": prior, "epochs": 0}
    else:
        if prior is not None and prior["mode"] == "only":
            raise ValueError(
                "train.mass_prior=only reads the mass alone: there is nothing to train (epochs=0)")
        train_set = instantiate(cfg.dataset, split="train", n=int(t.n))
        hist = train_under_noise(
            model, train_set, noise, epochs=int(t.epochs), lr=float(t.lr), batch_size=int(t.batch_size),
            seed=int(t.seed), progress=False, m=int(t.get("m", 1)),
            consistency=float(t.get("consistency", 0)), entropy=float(t.get("entropy", 0.5)),
        )
        record = {**settings, "n": len(train_set), "epoch_loss": hist["epoch_loss"],
                  "seconds": hist["seconds"], "mass_prior": prior}
        if method == "smoothadv":
            record["smoothadv_history"] = _smoothadv(cfg, model, noise)
        else:
            record.pop("smoothadv", None)  # settings of a step that did not run
    save_checkpoint(model, out / "base_model.pt", meta={"noise": noise.describe(), "train": settings})
    return record


def _smoothadv(cfg: DictConfig, model, noise) -> dict:
    """Run SmoothAdv on the noise-trained ``model`` (``train.smoothadv``); returns its history."""
    from hydra.utils import instantiate

    from .attacks import get as get_attack
    from .defenses.smoothing import smoothadv_train

    s = cfg.train.smoothadv
    data = instantiate(cfg.dataset, split="train", n=int(s.n))
    attack = get_attack(str(s.attack), steps=int(s.steps), loss=str(s.loss))
    return smoothadv_train(
        model, data, noise, attack=attack, eps=float(s.eps), kernel_size=int(s.kernel_size), m=int(s.m),
        epochs=int(s.epochs), lr=float(s.lr), batch_size=int(s.batch_size), seed=int(cfg.train.seed),
    )


def _certify_empirical(cfg: DictConfig, smoothed, images, labels, indices) -> dict | None:
    """``empirical.n > 0``: the attack through the expectation at every radius, judged by PREDICT."""
    from .attacks import get as get_attack
    from .defenses.smoothing import empirical_robustness

    e = cfg.get("empirical")
    if e is None or int(e.n) == 0:
        return None
    k = min(int(e.n), images.shape[0])
    attack = get_attack(str(e.attack), steps=int(e.steps), loss=str(e.loss))
    out = empirical_robustness(
        smoothed, attack, images[:k], labels[:k], list(cfg.radii), kernel_size=int(e.kernel_size),
        m=int(e.m), n=int(e.predict_n), alpha=float(e.predict_alpha), seed=int(cfg.seed), indices=indices[:k],
    )
    return {**out, "n_examples": k}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="certify")
def _certify_app(cfg: DictConfig) -> None:
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from ._util import first_line
    from .bench.spec import build_model, load_data
    from .defenses import smoothing as sm

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        noise = instantiate(cfg.smoothing)
        if not isinstance(noise, sm.FlowNoise):
            raise ValueError(f"smoothing must build a FlowNoise, got {type(noise).__name__}")
        images, labels, data_info = load_data(cfg)
        model, model_info = build_model(cfg)
        device = _certify_device(cfg.device)
        model, prior = _certify_mass_prior(cfg, model.to(device).eval())
        trained = _certify_train(cfg, model, noise, out, prior)
        if trained is not None:  # the certified model is the trained one: record its weights
            from ._util import weights_sha256

            model_info = {**model_info, "weights_sha256": weights_sha256(model)}
            model_info["checkpoint"] = "base_model.pt"
        with torch.no_grad():
            num_classes = int(model(images[:1].to(device)).shape[1])
        smoothed = sm.SmoothedClassifier(model, noise, num_classes=num_classes, batch_size=cfg.batch_size)
        indices = torch.arange(images.shape[0])
        result = smoothed.certify(images, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, seed=cfg.seed, indices=indices)
        empirical = _certify_empirical(cfg, smoothed, images, labels, indices)
        results = sm.certification_results(
            result, labels, radii=list(cfg.radii), noise=noise, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha,
            seed=cfg.seed, indices=indices,
            extra={"dataset": data_info, "model": model_info, "base_training": trained,
                   "device": str(device), **({"empirical": empirical} if empirical else {})},
        )
    except (ValueError, TypeError, InstantiationException) as exc:
        _fail("wattack-certify", first_line(exc.__cause__ or exc))
    paths = sm.write_certification(results, out)
    acc = ", ".join(f"{k}: {v:.3f}" for k, v in results["certified_accuracy"].items())
    n_ex, n_abs = len(labels), results["abstentions"]
    print(f"certified accuracy ({n_ex} examples, {n_abs} abstentions): {acc}", flush=True)
    if "empirical" in results:
        emp = ", ".join(f"{k}: {v:.3f}" for k, v in results["empirical"]["robust_accuracy"].items())
        print(f"empirical robust accuracy ({results['empirical']['n_examples']} examples): {emp}", flush=True)
    print(f"results written to {paths['results']} and {paths['plot']}", flush=True)


def certify_main() -> None:
    """``wattack-certify``: certified W1 accuracy of a flow-smoothed classifier (Hydra overrides)."""
    _certify_app()
