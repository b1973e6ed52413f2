"""``wattack-leaderboard {validate,add,add-certified,verify,render,compare}``: the leaderboard's command line.

Argparse rather than Hydra: the commands act on files named on the command line, not on a config.
Every expected failure (invalid entry, bad argument, missing file) is one ``error: ...`` line on
stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .._util import first_line
from .add import add_entry
from .certified import CERTIFIED_DIR, METHODS, THREAT_FOLDER, certified_paths, validate_certified_all
from .certified_add import add_certified
from .certified_verify import verify_certified
from .compare import compare, entries_with_id, is_certified, load_side
from .io import entry_paths, validate_all
from .render import write_rendered
from .schema import TOOL, EntryError
from .verify import verify_entry

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, default=Path("leaderboard"),
                        help="leaderboard folder (default: ./leaderboard)")
    parser = argparse.ArgumentParser(
        prog=TOOL, description="The leaderboard: benchmark runs as validated data, re-checkable exactly, "
                               "rendered to static pages.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", parents=[common],
                   help="validate every entry (schema, tolerances, npz, numbers, committed examples by "
                        "exact LP, verification binding) and every certified entry (numbers from counts, "
                        "checkpoint hashes, binding)")
    a = sub.add_parser("add", parents=[common], help="turn a benchmark run (results.json) into an entry")
    a.add_argument("results", type=Path, help="results.json written by wattack-bench")
    a.add_argument("--id", dest="entry_id", help="entry file stem (default: the results' model name)")
    a.add_argument("--name", help="display name (default: the id)")
    a.add_argument("--authors", required=True)
    a.add_argument("--source", required=True, help="http(s) link to the paper or code")
    a.add_argument("--training", required=True, help="training method, e.g. 'standard'")
    a.add_argument("--architecture", help="models.build_model name (default: the results' model name)")
    a.add_argument("--paper", help="citation")
    a.add_argument("--note")
    a.add_argument("--headline-radius", type=float, help="ranking radius (default: 0.1 for MNIST)")
    a.add_argument("--examples", type=Path, help="examples.npz of the run (default: beside results.json)")
    a.add_argument("--selection-seed", type=int, help="seed choosing the committed examples (default: run's)")
    a.add_argument("--force", action="store_true", help="replace an existing entry (drops its verification)")
    _add_certified_parser(sub, common)
    v = sub.add_parser("verify", parents=[common], help="re-check an entry and record the result in it")
    v.add_argument("entry", type=Path, nargs="?", help="entry JSON (or --id)")
    v.add_argument("--id", dest="entry_id",
                   help="the entry's id, looked up under --root (entries/ and certified/)")
    v.add_argument("--checkpoint", type=Path, help="the model's checkpoint (without: examples only); "
                                                   "certified entries use their own <id>.pt")
    v.add_argument("--examples", type=int,
                   help="certified entries: re-certify the first K examples (default all)")
    v.add_argument("--n", type=int, default=500, help="examples to re-attack (random subset, default 500)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random subset")
    v.add_argument("--z", type=float, default=3.0, help="tolerance in binomial standard errors (default 3)")
    v.add_argument("--slack", type=float, default=0.01, help="absolute slack added to the tolerance")
    v.add_argument("--by", help="who runs the verification (recorded)")
    v.add_argument("--device", default="cpu")
    v.add_argument("--dry-run", action="store_true", help="print the block, do not write it")
    sub.add_parser("render", parents=[common], help="write README.md and index.html from the entries")
    c = sub.add_parser("compare", parents=[common],
                       help="two models example by example: robust on the images only one holds, exact "
                            "McNemar test per radius")
    for side in ("a", "b"):
        c.add_argument(side, help="an entry id under --root, an entry JSON, or a run's results.json")
    return parser


def _add_certified_parser(sub, common) -> None:
    a = sub.add_parser("add-certified", parents=[common],
                       help="turn a wattack-certify run folder into a certified entry (+ its weights)")
    a.add_argument("run_dir", type=Path, help="wattack-certify run folder (results.json, base_model.pt)")
    a.add_argument("--id", dest="entry_id", required=True, help="entry file stem (letters, digits, ._-)")
    a.add_argument("--name", help="display name (default: the id)")
    a.add_argument("--authors", required=True)
    a.add_argument("--source", required=True, help="http(s) link to the paper or code")
    a.add_argument("--architecture", required=True, help="models.build_model name of the base model")
    a.add_argument("--method", choices=METHODS, help="training of the base model (default: the run's)")
    a.add_argument("--checkpoint", type=Path, help="the certified weights when the run did not train them "
                                                   "(default: RUN_DIR/base_model.pt)")
    a.add_argument("--note")
    a.add_argument("--force", action="store_true", help="replace an existing entry (drops its verification)")


def _validate(args) -> int:
    root = args.root
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder (expected a leaderboard with entries/)")
    paths = entry_paths(root) + certified_paths(root)
    bad = validate_all(root) | validate_certified_all(root)
    for p, problems in sorted(bad.items()):
        print(f"INVALID {p}", *(f"  - {x}" for x in problems), sep="\n")
    if not paths:
        # Nothing validated is not a success: a mistyped --root would otherwise pass.
        raise ValueError(f"--root {root} holds no entries (expected entries/<dataset>/<threat-id>/<id>.json "
                         f"or {CERTIFIED_DIR}/<dataset>/{THREAT_FOLDER}/<id>.json)")
    print(f"{len(paths) - sum(p in bad for p in paths)}/{len(paths)} entries valid"
          + (f", {len(bad)} problem file(s)" if bad else ""))
    return 1 if bad else 0


def _add(args) -> int:
    target = add_entry(args.results, root=args.root, entry_id=args.entry_id, name=args.name,
                       authors=args.authors, source=args.source, training=args.training,
                       architecture=args.architecture, paper=args.paper, note=args.note,
                       headline_radius=args.headline_radius, examples_path=args.examples,
                       selection_seed=args.selection_seed, overwrite=args.force)
    print(f"wrote {target} and {target.with_suffix('.npz').name}; `{TOOL} render` updates the pages")
    return 0


def _add_certified(args) -> int:
    target = add_certified(args.run_dir, args.entry_id, root=args.root, name=args.name, authors=args.authors,
                           source=args.source, architecture=args.architecture, note=args.note,
                           method=args.method, checkpoint=args.checkpoint, overwrite=args.force)
    print(f"wrote {target} and {target.with_suffix('.pt').name}; `{TOOL} render` updates the pages")
    return 0


def _entry_path(args) -> Path:
    """Return the entry to verify: the positional path, or the one entry ``--id`` names under ``--root``."""
    if (args.entry is None) == (args.entry_id is None):
        raise ValueError("verify needs exactly one of ENTRY (a path) and --id")
    if args.entry is not None:
        return args.entry
    found = entries_with_id(args.root, args.entry_id)
    if len(found) != 1:
        raise FileNotFoundError(f"--id {args.entry_id}: {len(found)} entries with that id under --root "
                                f"{args.root} (expected exactly one)")
    return found[0]


def _verify_certified(args, path: Path) -> int:
    if args.checkpoint is not None:
        raise ValueError("--checkpoint: a certified entry is verified with its own weights "
                         "(<id>.pt beside it)")
    record = verify_certified(path, args.examples, by=args.by, device=args.device, write=not args.dry_run)
    for name, c in record["checks"].items():
        print(f"{'ok  ' if c['passed'] else 'FAIL'} {name}: {c['detail']}")
    print(f"re-certified {record['examples_checked']} examples; max |count delta| "
          f"{record['max_count_delta']} (tolerance {record['count_tolerance']})")
    print(f"status: {record['status']}" + ("" if args.dry_run else f" (written to {path})"))
    return 0 if record["status"] == "verified" else 1


def _verify(args) -> int:
    path = _entry_path(args)
    if is_certified(path):
        return _verify_certified(args, path)
    if args.examples is not None:
        raise ValueError("--examples is for certified entries (use --n for the suite's re-run)")
    block = verify_entry(path, args.checkpoint, n=args.n, seed=args.seed, z=args.z,
                         slack=args.slack, by=args.by, device=args.device, write=not args.dry_run,
                         progress=True)
    for name, c in block["checks"].items():
        print(f"{'ok  ' if c['passed'] else 'FAIL'} {name}: {c['detail']}")
    for c in (block["reproduction"] or {}).get("comparisons", []):
        print(f"{'ok  ' if c['passed'] else 'FAIL'} {c['radius']}: claimed {c['claimed']:.4f}, "
              f"reproduced {c['reproduced']:.4f} (tolerance {c['tolerance']:.4f})")
    print(f"status: {block['status']}" + ("" if args.dry_run else f" (written to {path})"))
    return 0 if block["status"] != "failed" else 1


def _compare(args) -> int:
    a, b = load_side(args.a, args.root), load_side(args.b, args.root)
    got = compare(a, b)
    for tag, s in (("A", a), ("B", b)):
        what = "suite " + s.suite if s.kind != "certified" else s.suite
        print(f"{tag}: {s.label} ({s.kind}, {what}, {s.index.size} examples)")
    print(f"{got['shared']} examples evaluated by both; at each radius, the images only one holds and the "
          f"exact McNemar p-value (two-sided, this pair alone)")
    if not got["same_suite"]:
        print("note: the suites (or the certifications' draws) differ, so a difference mixes the models' "
              "robustness with the suites' strength (or the sampling)")
    print(f"{'radius':>8} {'A':>7} {'B':>7} {'only A':>7} {'only B':>7} {'p':>9}")
    for r in got["rows"]:
        print(f"{r['radius']:>8} {100 * r['a']:6.1f}% {100 * r['b']:6.1f}% {r['only_a']:7d} {r['only_b']:7d} "
              f"{r['p']:9.2g}")
    return 0


def _render(args) -> int:
    md, page = write_rendered(args.root)
    print(f"wrote {md} and {page}")
    return 0


_COMMANDS = {"validate": _validate, "add": _add, "add-certified": _add_certified, "verify": _verify,
             "render": _render, "compare": _compare}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wattack-leaderboard`` with ``argv`` (default: the command line); returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (EntryError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 1
