"""Two models compared example by example: is one more robust than the other, or is it chance.

Each side is a leaderboard entry (its id under a root, or its JSON path) or a ``wattack-bench`` run (its
``results.json``), so a new model can be held against any entry before it is submitted. Both must be
measured under the same threat model; they are compared on the dataset examples both evaluated, at
every radius both report, with the exact McNemar test of ``.ranking`` (one pair: no correction).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .add import _per_example_arrays, _read_results, _robust_table, _threat
from .io import entry_paths, load_entry
from .ranking import mcnemar_p

__all__ = ["Side", "load_side", "compare"]


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a comparison: a label, what it is, its threat, suite and per-example arrays."""

    label: str
    kind: str  # "entry" or "run"
    threat: dict
    suite: tuple[str, int]
    dataset: tuple[str, str]  # (name, split)
    radii: list[str]  # canonical radius keys it reports
    arrays: dict  # index, clean_correct, broken_cost (see the package docstring)


def load_side(spec: str | Path, root: Path) -> Side:
    """Load ``spec``: an entry id under ``root``, an entry JSON path, or a run's ``results.json``.

    Entries are validated in full (``load_entry``), runs against the results schema. Raises
    ``FileNotFoundError`` naming the argument when ``spec`` is none of these.
    """
    path = Path(spec)
    if not path.is_file():
        found = [p for p in entry_paths(root) if p.stem == str(spec)] if Path(root).is_dir() else []
        if len(found) != 1:
            raise FileNotFoundError(f"{spec}: not a file, and {len(found)} entries with that id under --root "
                                    f"{root} (expected an entry id, an entry JSON or a results.json)")
        path = found[0]
    if path.name == "results.json":
        results, _ = _read_results(path)
        _, robust = _robust_table(results)
        return Side(str(spec), "run", _threat(results),
                    (str(results["suite"]["name"]), int(results["suite"]["version"])),
                    (str(results["dataset"]["name"]), str(results["dataset"]["split"])),
                    sorted(robust, key=float), _per_example_arrays(results))
    e = load_entry(path)
    d = e.data
    return Side(d["id"], "entry", d["threat"], (d["suite"]["name"], int(d["suite"]["version"])),
                (d["dataset"]["name"], d["dataset"]["split"]),
                sorted(d["claimed"]["robust_accuracy"], key=float), e.arrays)


def _held(s: Side, radius: str | None, rows: np.ndarray) -> np.ndarray:
    """Bool per shared row: correct (``radius`` None) or robust at ``radius`` (the certification rule)."""
    a = s.arrays
    ok = a["clean_correct"][rows]
    if radius is None:
        return ok
    tol = s.threat["tolerances"]["cost_rel"]
    return ok & ~(a["broken_cost"][rows] <= float(radius) * (1 + tol))


def compare(a: Side, b: Side) -> dict:
    """Compare two sides on their shared examples: clean accuracy and every radius both report.

    Returns ``{"shared": n, "same_suite": bool, "rows": [{"radius": "clean" | key, "a": fraction,
    "b": fraction, "only_a": count, "only_b": count, "p": exact McNemar p-value}]}``. Raises
    ``ValueError`` when the threat models or datasets differ, or no example is shared.
    """
    if a.threat["id"] != b.threat["id"] or a.threat["tolerances"] != b.threat["tolerances"]:
        raise ValueError(f"threat models differ ({a.threat['id']} against {b.threat['id']}, or their "
                         "tolerances): robust accuracies under different balls are not comparable")
    if a.dataset != b.dataset:
        raise ValueError(f"datasets differ ({'/'.join(a.dataset)} against {'/'.join(b.dataset)})")
    _, ra, rb = np.intersect1d(a.arrays["index"], b.arrays["index"], assume_unique=True, return_indices=True)
    if ra.size == 0:
        raise ValueError("the two share no evaluated example (compare runs on the same images)")
    rows = []
    for key in [None, *sorted(set(a.radii) & set(b.radii), key=float)]:
        ha, hb = _held(a, key, ra), _held(b, key, rb)
        only_a, only_b = int(np.count_nonzero(ha & ~hb)), int(np.count_nonzero(hb & ~ha))
        rows.append({"radius": "clean" if key is None else key, "a": float(ha.mean()), "b": float(hb.mean()),
                     "only_a": only_a, "only_b": only_b, "p": mcnemar_p(only_a, only_b)})
    return {"shared": int(ra.size), "same_suite": a.suite == b.suite, "rows": rows}
