"""Do weight averages leave the front? Uniform soups of the adversarially trained leaderboard models.

Every model trained here lies on one front between robustness at eps 0.2 and at 0.5 (README,
"Defenses"). All of them are fine-tuned from the standard model (some from one another), so their
weights may be linearly connected; a soup (the element-wise mean of the state dicts of the reference
network, Wortsman et al. 2022; for robustness, Croce et al. 2023) is a model of the same architecture
that no training run produced. This benchmark builds each soup of ``SOUPS`` from the committed entry
weights (read with ``weights_only=True``), measures its clean accuracy on the first ``--n-clean`` test
images and its robust accuracy under ``standard-v2`` (the published models' protocol) and
``standard-v5`` on the first ``--n`` test images, with the members' own v2 / v5 numbers from the same
runs of the ablation (``suite_ablation.json`` when it holds them).

    python benchmarks/defense_soup.py                      # every soup, v2 and v5, first 200 images
    python benchmarks/defense_soup.py --table              # the README table, from the JSON only

Writes ``benchmarks/results/defense_soup.json`` after each run (resumable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attack_setup import ENTRY_DIR, RESULTS, machine, provenance, write_json  # noqa: E402
from suite_ablation import _load, _run  # noqa: E402

from wasserstein_attacks._util import sha256_file  # noqa: E402
from wasserstein_attacks.data import load_dataset  # noqa: E402
from wasserstein_attacks.models import build_model  # noqa: E402

OUT = RESULTS / "defense_soup.json"
#: soup -> its members (leaderboard entries, equal weights).
SOUPS = {
    # a model and the one fine-tuned from it (4 epochs at eps 0.3 after 6 at 0.5)
    "ce+ce-0.5-0.3": ["WattackAdvPGDCE", "WattackAdvPGDCE-eps0.5-0.3"],
    "ce40+ce-0.5-0.3": ["WattackAdvPGDCE40", "WattackAdvPGDCE-eps0.5-0.3"],
    # siblings: both fine-tuned from the standard model, at eps 0.5 and at 0.3
    "ce+ce-0.3": ["WattackAdvPGDCE", "WattackAdvPGDCE-eps0.3"],
    "trades+ce-0.3": ["WattackAdvTRADES", "WattackAdvPGDCE-eps0.3"],
    # every cross-entropy-trained model
    "ce-all6": ["WattackAdvPGDCE", "WattackAdvPGDCE40", "WattackAdvTRADES", "WattackAdvPGDCE-eps0.3",
                "WattackAdvPGDCE-eps0.3-0.4", "WattackAdvPGDCE-eps0.5-0.3"],
}
SUITES = ("standard-v2", "standard-v5")


def soup(members: list[str]) -> torch.nn.Module:
    """The reference network whose every parameter is the mean of the members' (entries' weights)."""
    states = [torch.load(ENTRY_DIR / f"{m}.pt", map_location="cpu", weights_only=True) for m in members]
    mean = {k: sum(s[k] for s in states) / len(states) for k in states[0]}
    model = build_model("mnist_convnet", num_classes=10)
    model.load_state_dict(mean)
    return model.eval()


def measure(args) -> dict:
    """Run every (soup, suite) not in the JSON yet; rewrite the JSON after each."""
    torch.set_num_threads(args.threads)
    origin = provenance()
    if origin["git_dirty"] is not False:
        raise SystemExit("the checkout has uncommitted changes: commit first")
    report = _load(OUT) or {"n": args.n, "n_clean": args.n_clean, "soups": {}}
    if (report["n"], report["n_clean"]) != (args.n, args.n_clean):
        raise SystemExit(f"--n {args.n} --n-clean {args.n_clean}: {OUT} holds n={report['n']} "
                         f"n_clean={report['n_clean']}; move it away to start over")
    data = load_dataset("mnist", "test", n=max(args.n, args.n_clean))
    for name in args.soups:
        members = SOUPS[name]
        model = soup(members)
        entry = report["soups"].setdefault(name, {"members": members, "runs": {}})
        entry["members_sha256"] = {m: sha256_file(ENTRY_DIR / f"{m}.pt") for m in members}
        with torch.no_grad():
            pred = model(data.images[: args.n_clean]).argmax(1)
        entry["clean_accuracy"] = float((pred == data.labels[: args.n_clean]).double().mean())
        for label in args.suites:
            if label in entry["runs"]:
                continue
            run = _run(label, model, data.images[: args.n], data.labels[: args.n])
            entry["runs"][label] = {k: run[k] for k in ("seconds", "clean_accuracy", "robust_accuracy")}
            entry["runs"][label]["git_commit"] = origin["git_commit"]
            print(f"{name:18s} {label} {run['seconds']:6.0f} s  "
                  + " ".join(f"{v:.3f}" for v in run["robust_accuracy"].values()), flush=True)
            report.update(machine=machine(), provenance=provenance())
            write_json(OUT, report)
    return report


def table(report: dict) -> str:
    """README table: each soup's clean accuracy and robust accuracy (%) under each suite, then its members'
    from the ablation on the same images (``suite_ablation.json``, where it has them)."""
    import json

    ablation = RESULTS / "suite_ablation.json"
    member_runs = json.loads(ablation.read_text())["runs"] if ablation.is_file() else {}
    radii = None
    lines, members = [], []
    for name, entry in report["soups"].items():
        for label, run in entry["runs"].items():
            radii = radii or list(run["robust_accuracy"])
            cells = " | ".join(f"{100 * v:.1f}" for v in run["robust_accuracy"].values())
            lines.append(f"| soup {name} | {label} | {100 * entry['clean_accuracy']:.1f} | {cells} |")
        members += [m for m in entry["members"] if m not in members]
    for m in members:  # each member once, after the soups
        for label in SUITES:
            run = member_runs.get(m, {}).get(label)
            if run is not None and radii:
                cells = " | ".join(f"{100 * run['robust_accuracy'][r]:.1f}" for r in radii)
                lines.append(f"| `{m}` | {label} | | {cells} |")
    head = [f"| model | suite | clean (first {report['n_clean']}) | " + " | ".join(radii or []) + " |",
            "|" + "---|" * (3 + len(radii or []))]
    return "\n".join(head + lines) + f"\n\n(robust accuracy on the first {report['n']} MNIST test images)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="first n test images for the suites")
    parser.add_argument("--n-clean", type=int, default=1000, help="first n test images for clean accuracy")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--soups", nargs="+", default=list(SOUPS), choices=list(SOUPS))
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--table", action="store_true", help="only print the README table from the JSON")
    args = parser.parse_args()
    if args.n < 1 or args.n_clean < 1:
        raise SystemExit("--n and --n-clean must be positive integers")
    report = _load(OUT) if args.table else measure(args)
    if report is None:
        raise SystemExit(f"{OUT} does not exist yet: run without --table first")
    print(table(report))


if __name__ == "__main__":
    main()
