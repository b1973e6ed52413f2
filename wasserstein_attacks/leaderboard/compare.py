"""Two models compared example by example: is one more robust than the other, or is it chance.

Each side is a leaderboard entry (its id under a root, or its JSON path), a ``wattack-bench`` run (its
``results.json``, so a new model can be held against any entry before it is submitted), or a certified
entry (against another certified entry only: a certificate and an attack answer different questions).
Both must be measured under the same threat model on the same dataset split; they are compared on the
examples both evaluated, at clean accuracy and every radius both report, with the exact McNemar test of
``.ranking`` (one pair: no correction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .add import _per_example_arrays, _read_results, _robust_table, _threat
from .certified import CERTIFIED_DIR, THREAT_FOLDER, certified_paths, correct_and_radius, load_certified
from .io import entry_paths, load_entry
from .ranking import mcnemar_p
from .schema import robust_mask

__all__ = ["Side", "entries_with_id", "is_certified", "load_side", "compare"]


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a comparison.

    Attributes:
        label: what the user named (id or path).
        kind: ``"entry"``, ``"run"`` or ``"certified"``.
        threat: a threat key: the threat id and tolerances (empirical), or ``"W1, certified"``.
        suite: the suite's ``"name vN"``, or the certification's draws and ``alpha``.
        dataset: ``(name, split)``.
        radii: canonical radius keys it reports.
        index: dataset indices int ``[n]`` of its examples.
        held: ``held(radius_key or None, rows) -> bool [len(rows)]``: correct (``None``) or robust /
            certified at that radius, for the examples at ``rows``.

    """

    label: str
    kind: str
    threat: str
    suite: str
    dataset: tuple[str, str]
    radii: list[str]
    index: np.ndarray
    held: Callable[[str | None, np.ndarray], np.ndarray]


def _empirical(label: str, kind: str, threat: dict, suite: dict, dataset: dict, radii, arrays: dict) -> Side:
    """Build a side from per-example arrays: broken at ``r`` when ``broken_cost <= r (1 + cost_rel)``."""
    tol = threat["tolerances"]["cost_rel"]

    def held(radius, rows):
        if radius is None:
            return arrays["clean_correct"][rows]
        return robust_mask(arrays, float(radius), tol)[rows]

    tols = ", ".join(f"{k} {v:g}" for k, v in sorted(threat["tolerances"].items()))
    key = f"{threat['id']} (tolerances {tols})"
    return Side(label, kind, key, f"{suite['name']} v{suite['version']}", (dataset["name"], dataset["split"]),
                sorted(radii, key=float), arrays["index"].astype(np.int64), held)


def _certified_side(label: str, path: Path) -> Side:
    """Build a side from a certified entry: certified at ``r`` when correct, radius strictly above ``r``."""
    d = load_certified(path).data
    ex = d["examples"]
    correct, certified = correct_and_radius(d)

    def held(radius, rows):
        return correct[rows] if radius is None else correct[rows] & (certified[rows] > float(radius))

    c = d["certification"]
    how = f"n {c['n']}, alpha {c['alpha']:g}"  # the noise is part of the model, not of the protocol
    radii = sorted(d["claimed"]["certified_accuracy"], key=float)
    dataset = (c["dataset"]["name"], c["dataset"]["split"])
    index = np.asarray(ex["index"], dtype=np.int64)
    return Side(label, "certified", "W1, certified", how, dataset, radii, index, held)


def entries_with_id(root: Path, entry_id: str) -> list[Path]:
    """Entry files (empirical and certified) under ``root`` whose id is ``entry_id`` ([] without ``root``)."""
    known = entry_paths(root) + certified_paths(root) if Path(root).is_dir() else []
    return [p for p in known if p.stem == str(entry_id)]


def is_certified(path: Path) -> bool:
    """Return whether ``path`` is a certified entry's file (``certified/<dataset>/W1/<id>.json``)."""
    return path.parent.name == THREAT_FOLDER and path.parent.parent.parent.name == CERTIFIED_DIR


def load_side(spec: str | Path, root: Path) -> Side:
    """Load ``spec``: an entry id under ``root``, an entry JSON path, or a run's ``results.json``.

    Entries are validated in full, runs against the results schema. Raises ``FileNotFoundError``
    naming the argument when ``spec`` is none of these.
    """
    path = Path(spec)
    if not path.is_file():
        found = entries_with_id(root, str(spec))
        if len(found) != 1:
            raise FileNotFoundError(f"{spec}: not a file, and {len(found)} entries with that id under --root "
                                    f"{root} (expected an entry id, an entry JSON or a results.json)")
        path = found[0]
    if path.name == "results.json":
        results, _ = _read_results(path)
        _, robust = _robust_table(results)
        return _empirical(str(spec), "run", _threat(results), results["suite"], results["dataset"], robust,
                          _per_example_arrays(results))
    if is_certified(path):
        return _certified_side(str(spec), path)
    e = load_entry(path)
    d = e.data
    robust = d["claimed"]["robust_accuracy"]
    return _empirical(d["id"], "entry", d["threat"], d["suite"], d["dataset"], robust, e.arrays)


def compare(a: Side, b: Side) -> dict:
    """Compare two sides on their shared examples: clean accuracy and every radius both report.

    Returns ``{"shared": n, "same_suite": bool, "rows": [{"radius": "clean" | key, "a": fraction,
    "b": fraction, "only_a": count, "only_b": count, "p": exact McNemar p-value}]}``. Raises
    ``ValueError`` when the threat models or datasets differ, or no example is shared.
    """
    if a.threat != b.threat:
        raise ValueError(f"threat models differ ({a.threat} against {b.threat}): their numbers answer "
                         "different questions")
    if a.dataset != b.dataset:
        raise ValueError(f"datasets differ ({'/'.join(a.dataset)} against {'/'.join(b.dataset)})")
    _, ra, rb = np.intersect1d(a.index, b.index, assume_unique=True, return_indices=True)
    if ra.size == 0:
        raise ValueError("the two share no evaluated example (compare runs on the same images)")
    rows = []
    for key in [None, *sorted(set(a.radii) & set(b.radii), key=float)]:
        ha, hb = a.held(key, ra), b.held(key, rb)
        only_a, only_b = int(np.count_nonzero(ha & ~hb)), int(np.count_nonzero(hb & ~ha))
        rows.append({"radius": "clean" if key is None else key, "a": float(ha.mean()), "b": float(hb.mean()),
                     "only_a": only_a, "only_b": only_b, "p": mcnemar_p(only_a, only_b)})
    return {"shared": int(ra.size), "same_suite": a.suite == b.suite, "rows": rows}
