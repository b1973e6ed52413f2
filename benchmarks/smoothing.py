"""Flow-space randomized smoothing on MNIST: certified accuracy per noise, level and training method.

Every configuration is one ``wattack-certify`` run (the command is recorded beside its numbers, so each
result is reproduced by that command alone): the base model is the project's standard MNIST model,
trained under the noise (Adam, cosine), for larger noise levels starting from the model of the next
smaller level (a curriculum: training from the standard model at large noise collapses to chance),
optionally followed by SmoothAdv; then CERTIFY on the first ``--n`` test images and, where asked, the
empirical attack through the expectation judged by PREDICT.

    python benchmarks/smoothing.py                 # all configurations, resumable (runs/smoothing/<label>)
    python benchmarks/smoothing.py --only lap-0.02 --n 100
    python benchmarks/smoothing.py --summary       # tables from the JSON only
    python benchmarks/smoothing.py --mass-only     # the mass-only classifier, exactly, on all test images
    python benchmarks/smoothing.py --reuse --n 1000 --empirical 0 --only uni-0.01   # certify the trained
                                                   # base model again on more images (smoothing-n1000.json)
    python benchmarks/smoothing.py --reuse --n 1000 --paired lap-0.02-smoothadv:lap-0.02   # paired test

Writes ``benchmarks/results/smoothing.json`` after each configuration (machine, commit, per label: the
command, the certification parameters, certified accuracy per radius, abstentions, the empirical robust
accuracy, the base model's training time and sha256).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attack_setup import REPO, RESULTS, machine, provenance, write_json  # noqa: E402

OUT = RESULTS / "smoothing.json"
RUNS = REPO / "runs" / "smoothing"
CERTIFIED = REPO / "leaderboard" / "certified" / "mnist" / "W1"
#: Consistency regularization (Jeong & Shin 2020): two copies per image, lambda 10, eta 0.5.
CR = ["train.m=2", "train.consistency=10", "train.entropy=0.5"]


def smoothadv(eps: float, *, n: int = 60000, epochs: int | None = None, steps: int = 10, m: int = 4,
              lr: str = "3e-4") -> list[str]:
    """The ``wattack-certify`` overrides of SmoothAdv after the noise epochs: attack radius ``eps``, the
    first ``n`` training images, ``epochs`` (the config's default when None), attack ``steps``, ``m`` draws
    per step, learning rate ``lr`` (as written in the recorded commands)."""
    return ["train.method=smoothadv", f"train.smoothadv.eps={eps}", f"train.smoothadv.n={n}",
            *([] if epochs is None else [f"train.smoothadv.epochs={epochs}"]),
            f"train.smoothadv.steps={steps}", f"train.smoothadv.m={m}", f"train.smoothadv.lr={lr}"]


#: SmoothAdv for two epochs on the whole training set at eps 0.02, a 10x larger step than lap-0.02-smoothadv.
SMOOTHADV_E2 = smoothadv(0.02, epochs=2, lr="1e-3")
#: SmoothAdv in place of most of the noise training: eight epochs at eps 0.05 (2.5 sigma), 2 draws, 4 steps.
SMOOTHADV_FS = smoothadv(0.05, epochs=8, steps=4, m=2, lr="1e-3")
#: label -> (noise, sigma, init label or None for the standard model, noise epochs, lr, extra overrides).
CONFIGS = {
    "lap-0.01": ("laplace", 0.01, None, 10, 1e-3, []),
    "lap-0.02": ("laplace", 0.02, "lap-0.01", 10, 1e-3, []),
    "lap-0.05": ("laplace", 0.05, "lap-0.02", 10, 1e-3, []),
    "lap-0.1": ("laplace", 0.1, "lap-0.05", 10, 1e-3, []),
    "uni-0.01": ("uniform", 0.01, None, 10, 1e-3, []),
    "uni-0.02": ("uniform", 0.02, "uni-0.01", 10, 1e-3, []),
    "uni-0.05": ("uniform", 0.05, "uni-0.02", 10, 1e-3, []),
    "uni-0.1": ("uniform", 0.1, "uni-0.05", 10, 1e-3, []),
    # Longer noise training for the large radii, each level starting from the one below (40 epochs each).
    "lap-0.03-e40": ("laplace", 0.03, "lap-0.02", 40, 1e-3, []),
    "lap-0.05-e40": ("laplace", 0.05, "lap-0.03-e40", 40, 1e-3, []),
    "lap-0.07-e40": ("laplace", 0.07, "lap-0.05-e40", 40, 1e-3, []),
    # SmoothAdv (Salman et al. 2019) at the level of lap-0.02: the same start and noise epochs as lap-0.02,
    # then one SmoothAdv epoch on half the training set.
    "lap-0.02-smoothadv": ("laplace", 0.02, "lap-0.01", 10, 1e-3, smoothadv(0.05, n=30000, lr="1e-4")),
    # ... and at the level of lap-0.05, against the larger radius, on the whole training set.
    "lap-0.05-smoothadv": ("laplace", 0.05, "lap-0.02", 10, 1e-3, smoothadv(0.1)),
    # The same with uniform noise (attacked at eps 0.05, inside uniform's ceiling 1.22 sigma = 0.061), and one
    # level up for both noises (Laplace attacked at 2 sigma as above, uniform at sigma).
    "uni-0.05-smoothadv": ("uniform", 0.05, "uni-0.02", 10, 1e-3, smoothadv(0.05)),
    "uni-0.1-smoothadv": ("uniform", 0.1, "uni-0.05", 10, 1e-3, smoothadv(0.1)),
    "lap-0.1-smoothadv": ("laplace", 0.1, "lap-0.05", 10, 1e-3, smoothadv(0.2)),
    # Longer SmoothAdv at the radius it is certified for, after the noise training of lap-0.02 / uni-0.02.
    "lap-0.02-smoothadv-e2": ("laplace", 0.02, "lap-0.01", 10, 1e-3, SMOOTHADV_E2),
    "uni-0.02-smoothadv-e2": ("uniform", 0.02, "uni-0.01", 10, 1e-3, SMOOTHADV_E2),
    # SmoothAdv from the start, as Salman et al. train: the same start as lap-0.02 / uni-0.02, one epoch of
    # noise, then eight SmoothAdv epochs on the whole training set in place of the other nine noise epochs.
    "lap-0.02-smoothadv-fs": ("laplace", 0.02, "lap-0.01", 1, 1e-3, SMOOTHADV_FS),
    "uni-0.02-smoothadv-fs": ("uniform", 0.02, "uni-0.01", 1, 1e-3, SMOOTHADV_FS),
    # The trivial baseline: the class most frequent at the image's total mass, which neither flow noise nor
    # any change of the threat model moves (all draws agree: certified up to the n-draws ceiling, 0.74 at
    # sigma 0.2, beyond every grid radius).
    "mass-only": ("laplace", 0.2, None, 0, 1e-3, ["train.mass_prior=only"]),
    # The network plus that prior (models.MassPrior), trained under the noise from the standard model.
    "lapm-0.02": ("laplace", 0.02, None, 10, 1e-3, ["train.mass_prior=true"]),
    "lapm-0.05": ("laplace", 0.05, None, 10, 1e-3, ["train.mass_prior=true"]),
    "lapm-0.1": ("laplace", 0.1, None, 10, 1e-3, ["train.mass_prior=true"]),
    "unim-0.05": ("uniform", 0.05, None, 10, 1e-3, ["train.mass_prior=true"]),
    "unim-0.07": ("uniform", 0.07, None, 10, 1e-3, ["train.mass_prior=true"]),
    "unim-0.1": ("uniform", 0.1, None, 10, 1e-3, ["train.mass_prior=true"]),
    # Jeong & Shin (2020)'s consistency regularization (2 noised copies per image, lambda 10, eta 0.5),
    # each level starting from the noise-trained model below it; "m": with the mass prior.
    "lap-0.02-cr": ("laplace", 0.02, "lap-0.01", 10, 1e-3, CR),
    "uni-0.02-cr": ("uniform", 0.02, "uni-0.01", 10, 1e-3, CR),
    "lap-0.05-cr": ("laplace", 0.05, "lap-0.02", 10, 1e-3, CR),
    "uni-0.07-cr": ("uniform", 0.07, "uni-0.05", 10, 1e-3, CR),
    "unim-0.07-cr": ("uniform", 0.07, "uni-0.05", 10, 1e-3, [*CR, "train.mass_prior=true"]),
    # ... one level up, from the consistency models; and a twice larger lambda.
    "lap-0.1-cr": ("laplace", 0.1, "lap-0.05-cr", 10, 1e-3, CR),
    "uni-0.1-cr": ("uniform", 0.1, "uni-0.07-cr", 10, 1e-3, CR),
    "uni-0.07-cr20": ("uniform", 0.07, "uni-0.05", 10, 1e-3, ["train.m=2", "train.consistency=20",
                                                            "train.entropy=0.5"]),
    # Three times longer, and a level between 0.07 and 0.1.
    "uni-0.07-cr-e30": ("uniform", 0.07, "uni-0.05", 30, 1e-3, CR),
    "uni-0.085-cr": ("uniform", 0.085, "uni-0.07-cr", 10, 1e-3, CR),
}


def _mass_prior(label: str) -> bool:
    """Whether the base model of ``label`` carries a mass prior (``models.MassPrior``)."""
    return any(e.startswith("train.mass_prior=") and e != "train.mass_prior=false" for e in CONFIGS[label][5])


def _runs(args) -> Path:
    """Run folders: ``runs/smoothing`` (training runs) or ``runs/smoothing-n<N>`` (``--reuse``)."""
    return RUNS.with_name(f"smoothing-n{args.n}") if args.reuse else RUNS


def base_model(label: str) -> Path | None:
    """The trained base model of ``label``: its training run's, else the one committed with its certified
    leaderboard entry (the same weights: ``make_entries.sh`` copies them), else None."""
    for path in (RUNS / label / "base_model.pt", CERTIFIED / f"WattackSmooth-{label}.pt"):
        if path.is_file():
            return path
    return None


def command(label: str, args) -> list[str]:
    """The ``wattack-certify`` overrides of one configuration (run folder ``<runs>/<label>``)."""
    noise, sigma, init, epochs, lr, extra = CONFIGS[label]
    if args.reuse:  # certify the base model trained by the training run, without training again
        arch = "mnist_convnet_massprior" if _mass_prior(label) else "mnist_convnet"
        path = base_model(label)
        if path is None:
            raise SystemExit(f"--reuse: {RUNS / label} holds no base model; run without --reuse first")
        model = [f"model={arch}", f"model.checkpoint={path}"]
        epochs, extra = 0, [e for e in extra if not e.startswith("train.")]
    else:
        if init is not None and _mass_prior(init):
            raise ValueError(f"{label}: an init with a mass prior is not supported (start from standard)")
        model = ["model=standard_mnist"] if init is None else [
            "model=mnist_convnet", f"model.checkpoint={base_model(init) or RUNS / init / 'base_model.pt'}"]
    return [
        f"smoothing={noise}", f"smoothing.sigma={sigma}", *model, f"train.epochs={epochs}", f"train.lr={lr}",
        "train.n=60000", f"dataset.n={args.n}", f"n0={args.n0}", f"n={args.draws}", f"alpha={args.alpha}",
        f"empirical.n={args.empirical}", f"empirical.steps={args.empirical_steps}", *extra,
        f"hydra.run.dir={_runs(args) / label}",
    ]


def run(label: str, args) -> dict:
    """Run one configuration (its init first, if missing) and return its JSON summary."""
    init = None if args.reuse else CONFIGS[label][2]
    if init is not None and base_model(init) is None:  # neither trained here nor committed: train it first
        run(init, args)
    overrides = command(label, args)
    done = _runs(args) / label / "results.json"
    if not done.is_file():
        shutil.rmtree(_runs(args) / label, ignore_errors=True)  # a half-finished run starts over
        exe = Path(sys.executable).with_name("wattack-certify")
        subprocess.run([str(exe), *overrides], check=True)
    res = json.loads(done.read_text())
    training = res.get("base_training") or {}
    return {
        "command": "wattack-certify " + " ".join(o.replace(str(REPO) + "/", "") for o in overrides),
        "noise": res["noise"], "n0": res["n0"], "n": res["n"], "alpha": res["alpha"],
        "n_examples": res["n_examples"], "certified_accuracy": res["certified_accuracy"],
        "smoothed_accuracy": res["smoothed_accuracy"], "abstention_rate": res["abstention_rate"],
        "max_certifiable_radius": res["max_certifiable_radius"], "certify_seconds": res["seconds"],
        "train_seconds": training.get("seconds"), "smoothadv": training.get("smoothadv_history"),
        "weights_sha256": res["model"].get("weights_sha256"), "empirical": _empirical(res),
    }


def _empirical(res: dict) -> dict | None:
    e = res.get("empirical")
    if not e:
        return None
    return {k: e[k] for k in ("robust_accuracy", "clean_accuracy", "n_examples", "settings", "seconds")}


def mass_only_exact(mass_tol: float = 1e-5) -> dict:
    """The mass-only classifier (``models.MassPrior`` fitted on all training images, as ``mass-only``)
    on the whole MNIST test set, exactly: accuracy on the first 100 / 1000 / 10,000 images, and how many
    of its correct examples lie within the threat model's mass tolerance of a bin edge (only those could
    an attack move to another bin)."""
    prior, test, correct, n_train = _mass_only()
    mass = test.images.sum((1, 2, 3))
    near = ((mass[:, None] - prior.edges[None]).abs() <= mass_tol * mass[:, None]).any(1)
    return {
        "accuracy": {str(n): float(correct[:n].float().mean()) for n in (100, 1000, len(correct))},
        "bins": int(prior.log_prior.shape[0]), "train_images": n_train, "mass_tol": mass_tol,
        "correct_within_mass_tol_of_an_edge": int((correct & near).sum()),
    }


def certified_correct(examples: dict, radius: float) -> list[bool]:
    """Per example of a results.json's ``examples``: certified with the right class beyond ``radius``."""
    rows = zip(examples["label"], examples["prediction"], examples["radius"], strict=True)
    return [p == y and rad is not None and rad > radius for y, p, rad in rows]


def recorded_run(args, report: dict, label: str) -> dict | None:
    """The results.json of ``label``'s run folder if it is the run the JSON records (same weights)."""
    path = _runs(args) / label / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else None
    if results and results["model"].get("weights_sha256") == report["runs"][label]["weights_sha256"]:
        return results
    return None


def mass_overlap(results: dict, mass_correct) -> dict:
    """How much of a smoothed classifier's certified accuracy the mass-only classifier has too.

    ``results``: a ``wattack-certify`` results.json; ``mass_correct``: bool tensor [N] over the test set
    (the mass-only classifier right on image i). Per radius r: the examples certified correct beyond r,
    and how many of them the mass-only classifier gets right (its prediction never changes, so it
    certifies them all). Far above the mass-only accuracy, the share says the base model reads the mass.
    """
    ex = results["examples"]
    out = {}
    for r in results["certified_accuracy"]:
        cert = [i for i, ok in zip(ex["index"], certified_correct(ex, float(r)), strict=True) if ok]
        both = sum(bool(mass_correct[i]) for i in cert)
        out[r] = {"certified": len(cert), "mass_only_correct_too": int(both)}
    indices = ex["index"]
    out["mass_only_accuracy"] = float(sum(bool(mass_correct[i]) for i in indices) / len(indices))
    return out


def paired(results_a: dict, results_b: dict) -> dict:
    """Paired comparison of two ``wattack-certify`` results.json on the same examples (same indices, and
    with the same seed the same noise draws per example): per radius of the grid, how many examples each
    certifies correct beyond it, how many only one of them does, and the exact two-sided McNemar test
    (a sign test on those discordant examples) of "equally good"."""
    from scipy.stats import binomtest

    ex_a, ex_b = results_a["examples"], results_b["examples"]
    if ex_a["index"] != ex_b["index"] or ex_a["label"] != ex_b["label"]:
        raise ValueError("paired: the two runs certified different examples")
    for key in ("n0", "n", "alpha", "seed"):
        if results_a.get(key) != results_b.get(key):
            raise ValueError(f"paired: the two runs differ in {key} ({results_a.get(key)} against "
                             f"{results_b.get(key)})")

    out = {"n_examples": len(ex_a["index"])}
    for r in results_a["certified_accuracy"]:
        ca, cb = certified_correct(ex_a, float(r)), certified_correct(ex_b, float(r))
        only_a = sum(a and not b for a, b in zip(ca, cb, strict=True))
        only_b = sum(b and not a for a, b in zip(ca, cb, strict=True))
        p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        out[r] = {"a": sum(ca), "b": sum(cb), "only_a": only_a, "only_b": only_b, "p_value": float(p)}
    return out


def _mass_only():
    """The mass-only classifier (``models.MassPrior`` fitted on all training images, as ``mass-only``), the
    MNIST test set, a bool tensor [10000] (the classifier right on each test image), and the number of
    training images."""
    import torch

    from wasserstein_attacks.data import load_dataset
    from wasserstein_attacks.models import MassPrior

    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    prior = MassPrior(torch.nn.Identity()).fit(train.images, train.labels)
    return prior, test, prior.log_prior[prior.bin(test.images)].argmax(1) == test.labels, len(train)


def table(report: dict) -> str:
    """Markdown: certified (and empirical) accuracy per radius for each configuration."""
    radii = ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5"]
    head = "| config | noise | sigma | smoothed acc. | " + " | ".join(radii) + " | empirical at 0.02 / 0.1 |"
    lines = [head,
             "|" + "---|" * (len(radii) + 5)]
    n = {r["n_examples"] for r in report["runs"].values()}
    d = 0 if max(n) <= 100 else 1  # a tenth of a point is one example of 1000
    for label, r in report["runs"].items():
        cells = " | ".join(f"{100 * r['certified_accuracy'][k]:.{d}f}" for k in radii)
        emp = r.get("empirical")
        e = "" if not emp else " / ".join(f"{100 * emp['robust_accuracy'][k]:.0f}" for k in ("0.02", "0.1"))
        lines.append(f"| {label} | {r['noise']['name']} | {r['noise']['sigma']} | "
                     f"{100 * r['smoothed_accuracy']:.{d}f} | {cells} | {e} |")
    first = " / ".join(map(str, sorted(n)))
    return "\n".join(lines) + f"\n\n(certified accuracy %, first {first} MNIST test images)"


def plot(labels: list[str], path: Path) -> Path:
    """Certified accuracy against radius for ``labels`` (from their run folders), Laplace solid, uniform
    dashed, one colour per sigma, consistency training (``-cr``) thick, the mass-only classifier black
    and dotted; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wasserstein_attacks._util import save_png

    fig, ax = plt.subplots(figsize=(7, 4.2))
    sigmas = sorted({CONFIGS[k][1] for k in labels})
    for label in labels:
        res = json.loads((RUNS / label / "results.json").read_text())
        ex = res["examples"]
        rows = zip(ex["radius"], ex["prediction"], ex["label"], strict=True)
        radii = sorted(r for r, p, y in rows if p == y)
        total = len(ex["label"])
        xs = [0.0, *radii]
        ys = [len(radii) / total, *[(len(radii) - i - 1) / total for i in range(len(radii))]]
        colour = plt.cm.viridis(sigmas.index(CONFIGS[label][1]) / max(len(sigmas) - 1, 1))
        style = {"color": colour, "ls": "-" if res["noise"]["name"] == "laplace" else "--",
                 "lw": 2.4 if "-cr" in label else 1.1}
        if label == "mass-only":
            style = {"color": "black", "ls": ":", "lw": 2.0}
        ax.step(xs, [100 * y for y in ys], where="post", label=label, **style)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 0.5)
    ax.set_xlabel("radius eps (W1, p = 1)")
    ax.set_ylabel(f"certified accuracy (%), first {total} test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_png(fig, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="these configurations only")
    parser.add_argument("--n", type=int, default=100, help="first n MNIST test images to certify")
    parser.add_argument("--n0", type=int, default=1000, help="selection draws (Levine & Feizi: 1000)")
    parser.add_argument("--draws", type=int, default=10000, help="estimation draws")
    parser.add_argument("--alpha", type=float, default=0.05, help="failure probability (Levine & Feizi's)")
    parser.add_argument("--empirical", type=int, default=100, help="examples attacked through the noise")
    parser.add_argument("--empirical-steps", type=int, default=100, help="steps of that attack")
    parser.add_argument("--reuse", action="store_true",
                        help="certify the base models of the training runs again (e.g. on more images)")
    parser.add_argument("--summary", action="store_true", help="print the table from the JSON only")
    parser.add_argument("--mass-only", action="store_true",
                        help="the mass-only classifier's exact accuracy on all test images, into the JSON")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run on uncommitted code (leaderboard/make_entries.sh, which rewrites entries)")
    parser.add_argument("--overlap", action="store_true",
                        help="for each run folder of the JSON: how many certified examples the mass-only "
                             "classifier gets right too (into the JSON; no new runs)")
    parser.add_argument("--paired", nargs="+", metavar="A:B", default=[],
                        help="paired comparison of the run folders of A and B (same examples), per radius "
                             "(into the JSON under 'paired'; no new runs)")
    parser.add_argument("--plot", action="store_true",
                        help="benchmarks/results/smoothing.png from the run folders (no new runs)")
    args = parser.parse_args()
    if args.reuse:
        globals()["OUT"] = RESULTS / f"smoothing-n{args.n}.json"
    if args.summary:
        print(table(json.loads(OUT.read_text())))
        return
    if args.plot:
        # Not drawn: SmoothAdv, the longer schedule, and the mass-prior runs (all on the mass-only curve).
        labels = [k for k in CONFIGS if (RUNS / k / "results.json").is_file()
                  and not any(s in k for s in ("smoothadv", "-e40", "lapm-", "unim-"))]
        print(f"wrote {plot(labels, RESULTS / 'smoothing.png')}")
        return
    if args.overlap:
        report, correct = json.loads(OUT.read_text()), _mass_only()[2]
        for label, rec in report["runs"].items():
            results = recorded_run(args, report, label)
            if results:
                rec["mass_overlap"] = mass_overlap(results, correct)
                print(label, json.dumps(rec["mass_overlap"]))
        write_json(OUT, report)
        return
    if args.paired:
        report = json.loads(OUT.read_text())
        for pair in args.paired:
            a, sep, b = pair.partition(":")
            if not sep or a not in report["runs"] or b not in report["runs"]:
                raise SystemExit(f"--paired: expected A:B with both labels in {OUT.name}, got {pair!r}")
            res = [recorded_run(args, report, label) for label in (a, b)]
            for label, results in zip((a, b), res, strict=True):
                if results is None:
                    raise SystemExit(f"--paired: {_runs(args) / label} holds no run of the weights recorded "
                                     f"for {label} (certify it with these flags first)")
            origin = provenance()
            report.setdefault("paired", {})[f"{a} vs {b}"] = {
                **paired(*res), "git_commit": origin["git_commit"], "git_dirty": origin["git_dirty"]}
            print(f"{a} vs {b}: " + json.dumps(report["paired"][f"{a} vs {b}"]))
        write_json(OUT, report)
        return
    if args.mass_only:
        report = json.loads(OUT.read_text())
        origin = provenance()
        report["mass_only_exact"] = {**mass_only_exact(), "git_commit": origin["git_commit"],
                                     "git_dirty": origin["git_dirty"]}
        write_json(OUT, report)
        print(json.dumps(report["mass_only_exact"]))
        return
    if provenance()["git_dirty"] is not False and not args.allow_dirty:
        raise SystemExit("the checkout has uncommitted changes: commit first (the JSON names the commit), "
                         "or pass --allow-dirty (the JSON then says git_dirty: true)")
    report = json.loads(OUT.read_text()) if OUT.is_file() else {"runs": {}}
    for label in args.only or CONFIGS:
        origin = provenance()
        report["runs"][label] = {**run(label, args), "git_commit": origin["git_commit"],
                                 "git_dirty": origin["git_dirty"]}
        report.update(machine=machine(), provenance=provenance())
        write_json(OUT, report)
        print(f"{label}: " + json.dumps(report["runs"][label]["certified_accuracy"]), flush=True)
    print(table(report))


if __name__ == "__main__":
    main()
