"""What a valid entry is: limits, the JSON schema, and the rules the schema cannot express.

``entry_problems`` checks an entry's JSON alone; ``array_problems`` checks its claimed numbers
and committed examples against the per-example arrays of its npz. Both return every problem found
(an empty list: valid), so a submitter sees all of them at once.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np

from .._util import radius_key
from ..threat import WassersteinBall

__all__ = [
    "SCHEMA_VERSION",
    "MAX_ENTRY_BYTES",
    "MAX_NPZ_BYTES",
    "MAX_NPZ_UNCOMPRESSED",
    "MAX_RESULTS_BYTES",
    "MAX_SAMPLE",
    "HEADLINE_RADIUS",
    "TOOL",
    "NPZ_SPEC",
    "CANONICAL_TOLERANCES",
    "EntryError",
    "threat_id",
    "entry_problems",
    "array_problems",
    "schema_problems",
    "entry_sha256",
    "binding_problems",
    "robust_bounds",
    "robust_mask",
    "eligible",
    "grid_radius",
    "clean_text",
    "utc_now",
]

SCHEMA_VERSION = 1
MAX_ENTRY_BYTES = 256 * 1024
MAX_NPZ_BYTES = 4 * 1024 * 1024
# Decompressed npz members: bounds memory when reading an untrusted (possibly zip-bomb) file.
MAX_NPZ_UNCOMPRESSED = 64 * 1024 * 1024
MAX_RESULTS_BYTES = 64 * 1024 * 1024
MAX_SAMPLE = 100
#: Radius at which tables are ranked, per dataset (units of eps); other datasets use their entries' choice.
HEADLINE_RADIUS = {"mnist": 0.1}
TOOL = "wattack-leaderboard"
NPZ_SPEC = {  # key -> (numpy dtype kind(s), ndim)
    "index": ("iu", 1),
    "label": ("iu", 1),
    "clean_correct": ("b", 1),
    "broken_cost": ("f", 1),
    "broken_by": ("iu", 1),
    "attack_names": ("U", 1),
    "sample_index": ("iu", 1),
    "sample_clean": ("f", 4),
    "sample_adversarial": ("f", 4),
}
_BALL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(WassersteinBall) if f.init}
#: The tolerances of every threat model: ``WassersteinBall``'s defaults. They are part of the threat
#: model's identity (an entry's numbers depend on them: with all tolerances 0 nothing certifies and robust
#: accuracy equals clean accuracy), so an entry stating others is refused rather than ranked beside others.
CANONICAL_TOLERANCES = {"mass_rel": _BALL_DEFAULTS["mass_tol"], "cost_rel": _BALL_DEFAULTS["cost_tol"],
                        "box_abs": _BALL_DEFAULTS["box_tol"]}
# Floating-point slack when claimed fractions are compared with fractions recomputed from the arrays.
_SLACK = 1e-9


class EntryError(ValueError):
    """An entry (or a results file) that does not validate; ``problems`` lists every reason."""

    def __init__(self, where: str, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{where}: " + "; ".join(self.problems))


def threat_id(p: int, kernel_size: int | None, box) -> str:
    """Folder name of a threat model, e.g. ``"W1-k5-box01"`` (``p=1``, 5x5 window, box [0, 1])."""
    window = f"k{kernel_size}" if kernel_size is not None else "dense"
    return f"W{p}-{window}-{'box01' if box is not None else 'nobox'}"


def clean_text(value, limit: int) -> str:
    """``str(value)`` with runs of control characters as one space, stripped, cut to ``limit`` characters."""
    s = re.sub(r"[\x00-\x1f\x7f]+", " ", str(value)).strip()
    return s[:limit]


def utc_now() -> str:
    """Return the current time in the schema's form ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------- schemas
# which -> (package, path inside it, label of its problems)
_SCHEMAS = {
    "entry": (__package__, "entry_schema.json", "schema"),
    # The benchmark pipeline's own schema, read as data: no import of the pipeline.
    "results": ("wasserstein_attacks", "bench/results_schema.json", "results schema"),
    # Randomized-smoothing entries (``.certified``): a table of their own, never ranked with the above.
    "certified": (__package__, "certified_schema.json", "certified schema"),
}


@cache
def _validator(which: str) -> jsonschema.Draft202012Validator:
    package, name, _ = _SCHEMAS[which]
    schema = json.loads(resources.files(package).joinpath(name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_problems(value, which: str) -> list[str]:
    """Every violation of the ``"entry"``, ``"results"`` or ``"certified"`` schema, one line each."""
    if which not in _SCHEMAS:
        raise ValueError(f"which must be one of {', '.join(map(repr, _SCHEMAS))}, got {which!r}")
    label = _SCHEMAS[which][2]
    errors = sorted(_validator(which).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{label}: at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors]


# ------------------------------------------------------------------------------------------ the JSON alone
def _canonical_key(key: str) -> bool:
    try:
        return radius_key(float(key)) == key
    except ValueError:
        return False


def entry_problems(data, path: Path | None = None) -> list[str]:
    """Everything wrong with an entry's JSON ``data`` (empty list: valid). Does not read the npz.

    Checks the schema, then what it cannot express: the threat id, canonical radius keys, the curve,
    the committed examples' costs and radii, and (with ``path``) the file's place
    ``entries/<dataset>/<threat-id>/<id>.json``.
    """
    problems = schema_problems(data, "entry")
    if problems:
        return problems
    out = _threat_problems(data["threat"])
    out += _table_problems(data["claimed"])
    out += _example_list_problems(data)
    out += _run_check_problems(data)
    out += _record_problems(data["verification"])
    if data["model"]["checkpoint_sha256"] is None and "weights_sha256" not in data["model"]:
        out.append("model: checkpoint_sha256 is null, so weights_sha256 is required (to identify the model)")
    if data["examples"]["file"] != f"{data['id']}.npz":
        out.append(f"examples.file must be {data['id']}.npz (the entry's id), "
                   f"got {data['examples']['file']!r}")
    if path is not None:
        path = Path(path)
        want = (data["dataset"]["name"], data["threat"]["id"], f"{data['id']}.json")
        got = (path.parent.parent.name, path.parent.name, path.name)
        if got != want:
            out.append(f"entry file must be at entries/{'/'.join(want)}, found at .../{'/'.join(got)}")
    return out


def _threat_problems(th: dict) -> list[str]:
    out = []
    tid = threat_id(th["p"], th["kernel_size"], th["box"])
    if th["id"] != tid:
        out.append(f"threat.id is {th['id']!r} but p/kernel_size/box give {tid!r}")
    if th["kernel_size"] is not None and th["kernel_size"] % 2 == 0:
        out.append(f"threat.kernel_size must be odd, got {th['kernel_size']}")
    if th["tolerances"] != CANONICAL_TOLERANCES:
        out.append(f"threat.tolerances {th['tolerances']} differ from the canonical tolerances of {tid} "
                   f"{CANONICAL_TOLERANCES} (WassersteinBall's defaults): they are part of the threat model; "
                   "re-run with the default tolerances")
    return out


def _run_check_problems(data: dict) -> list[str]:
    """Check that the run's own checks do not contradict a valid result (NaN outputs, exact re-check)."""
    out = []
    if (data.get("model_checks") or {}).get("nonfinite") is True:
        out.append("model_checks.nonfinite is true: the model produced NaN or infinite outputs")
    ec = data["claimed"].get("exact_check")
    if ec is not None:
        field = "within_counted_radius" if "within_counted_radius" in ec else "within_radius"
        if ec[field] > ec["checked"]:
            out.append(f"claimed.exact_check.{field} = {ec[field]} exceeds checked = {ec['checked']}")
    return out


def _record_problems(record: dict | None) -> list[str]:
    """Check that a verification record's status follows from its checks (as ``verify`` writes it)."""
    if record is None:
        return []
    failed = sorted(k for k, c in record["checks"].items() if not c["passed"])
    status = record["status"]
    if status == "failed" and not failed:
        return ["verification.status is 'failed' but every check passed"]
    if status != "failed" and failed:
        return [f"verification.status is {status!r} but checks {failed} failed"]
    if status == "verified" and (record["reproduction"] is None or "checkpoint" not in record["checks"]):
        return ["verification.status is 'verified' without a checkpoint check and a reproduction"]
    if status == "examples-verified" and record["reproduction"] is not None:
        return ["verification.status is 'examples-verified' but holds a reproduction (use 'verified')"]
    return []


# ------------------------------------------------------------------------------------------ the binding
def entry_sha256(data: dict) -> str:
    """sha256 of the entry without its verification record, in canonical JSON (sorted keys, no spaces).

    Computed from the parsed values, so re-indenting the file does not change it; any edited value does.
    """
    rest = {k: v for k, v in data.items() if k != "verification"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def binding_problems(data: dict) -> list[str]:
    """Why the verification record does not belong to this entry (empty: it binds, or there is none).

    The record names the sha256 of the entry (``entry_sha256``), of its npz, of the checkpoint it ran and
    the suite's name and version: a record copied from another entry, or kept after the entry changed,
    does not bind. (A binding is not a signature: only re-running ``verify`` shows a record is true.)
    """
    record = data["verification"]
    if record is None:
        return []
    b = record.get("binding")
    if b is None:
        return ["verification: record does not bind to this entry: it has no binding (written before records "
                "were bound to their entry); re-run verify"]
    want = {"entry_sha256": entry_sha256(data), "npz_sha256": data["examples"]["sha256"],
            "suite": {"name": data["suite"]["name"], "version": data["suite"]["version"]}}
    # "verified" speaks for the entry's checkpoint; a failed record may document another file's failure.
    if record["status"] == "verified":
        want["checkpoint_sha256"] = data["model"]["checkpoint_sha256"] or b["checkpoint_sha256"]
    bad = sorted(k for k, v in want.items() if b[k] != v)
    if record["status"] == "verified" and b["checkpoint_sha256"] is None:
        bad.append("checkpoint_sha256 (null in a verified record)")
    if bad:
        return [f"verification: record does not bind to this entry: {', '.join(bad)} differ (copied from "
                "another entry, or the entry changed after verify); re-run verify"]
    return []


def _table_problems(cl: dict) -> list[str]:
    """Check the radius keys of the accuracy tables, the headline radius and the curve."""
    out = []
    tables = {"claimed.robust_accuracy": cl["robust_accuracy"]}
    for attack, table in cl["per_attack_robust_accuracy"].items():
        tables[f"claimed.per_attack_robust_accuracy.{attack}"] = table
    for where, table in tables.items():
        bad = [k for k in table if not _canonical_key(k)]
        if bad:
            out.append(f"{where}: radius keys must be shortest round-trip decimals (repr(float)), got {bad}")
        if where != "claimed.robust_accuracy" and set(table) - set(cl["robust_accuracy"]):
            extra = sorted(set(table) - set(cl["robust_accuracy"]))
            out.append(f"{where}: radii {extra} are not in claimed.robust_accuracy")
    if cl["headline_radius"] not in cl["robust_accuracy"]:
        out.append(f"claimed.headline_radius {cl['headline_radius']!r} is not in claimed.robust_accuracy")
    radii, accs = cl["curve"]["radius"], cl["curve"]["accuracy"]
    if len(radii) != len(accs):
        out.append("claimed.curve: radius and accuracy must have the same length")
    if any(b <= a for a, b in zip(radii, radii[1:], strict=False)):
        out.append("claimed.curve.radius must be strictly increasing")
    return out


def _example_list_problems(data: dict) -> list[str]:
    """Check the committed examples' lists: lengths, order, and each cost inside its claimed radius."""
    out = []
    ex, cl = data["examples"], data["claimed"]
    m = len(ex["index"])
    if not (len(ex["label"]) == len(ex["cost"]) == len(ex["radius"]) == m):
        out.append("examples: index, label, cost and radius must have the same length")
    if any(b <= a for a, b in zip(ex["index"], ex["index"][1:], strict=False)):
        out.append("examples.index must be strictly increasing")
    if m > cl["n_examples"]:
        out.append("examples: more committed examples than claimed.n_examples")
    cost_tol = data["threat"]["tolerances"]["cost_rel"]
    for i, (cost, rk) in enumerate(zip(ex["cost"], ex["radius"], strict=False)):
        if rk not in cl["robust_accuracy"]:
            out.append(f"examples.radius[{i}] = {rk!r} is not a radius of claimed.robust_accuracy")
        elif not 0 < cost <= float(rk) * (1 + cost_tol):
            out.append(f"examples.cost[{i}] = {cost!r} is not in (0, {rk} * (1 + cost_rel)]")
    return out


# ------------------------------------------------------------------------------------------ JSON vs arrays
def robust_mask(arrays: dict, radius: float, cost_tol: float) -> np.ndarray:
    """Bool ``[n]``: correct, not broken at ``radius`` by the ball's rule (``cost <= r (1 + cost_tol)``)."""
    return arrays["clean_correct"] & ~(arrays["broken_cost"] <= radius * (1 + cost_tol))


def robust_bounds(arrays: dict, radius: float, cost_tol: float) -> tuple[float, float]:
    """Robust accuracy at ``radius`` from per-example arrays: (tolerant rule, strict rule), fractions."""
    lo = float(np.mean(robust_mask(arrays, radius, cost_tol)))
    hi = float(np.mean(robust_mask(arrays, radius, 0.0)))
    return lo, hi


def grid_radius(cost: float, robust: dict, cost_tol: float) -> str | None:
    """Key of the smallest radius ``r`` of ``robust`` with ``cost <= r * (1 + cost_tol)``, or ``None``."""
    keys = sorted(robust, key=float)
    return next((k for k in keys if cost <= float(k) * (1 + cost_tol)), None)


def eligible(arrays: dict, robust: dict, cost_tol: float) -> np.ndarray:
    """Bool [n]: clean-correct examples broken by a verified adversarial inside the radius grid."""
    top = max(float(k) for k in robust)
    c = arrays["broken_cost"]
    return arrays["clean_correct"] & (c > 0) & (c <= top * (1 + cost_tol))


def array_problems(data: dict, arrays: dict) -> list[str]:
    """Claimed numbers and committed examples against the per-example arrays of the npz."""
    out = _per_example_problems(data["claimed"]["n_examples"], arrays)
    if out:
        return out
    out += _claimed_number_problems(data, arrays)
    out += _sample_problems(data, arrays)
    return out


def _per_example_problems(n: int, arrays: dict) -> list[str]:
    """Check the shapes and values of the per-example arrays on their own."""
    per = ("index", "label", "clean_correct", "broken_cost", "broken_by")
    if any(arrays[k].shape != (n,) for k in per):
        return [f"npz: {', '.join(per)} must all have shape [{n}] (claimed.n_examples), got "
                f"{[arrays[k].shape for k in per]}"]
    out = []
    index, cost, ok = arrays["index"], arrays["broken_cost"], arrays["clean_correct"]
    if np.unique(index).size != n:
        out.append("npz: index holds duplicate dataset indices")
    if np.isnan(cost).any() or (cost < 0).any():
        out.append("npz: broken_cost must be >= 0 (inf where not broken), with no NaN")
    if (cost[~ok] != 0).any():
        out.append("npz: clean errors must have broken_cost 0 (broken at radius 0)")
    names = arrays["attack_names"]
    if names.size > 64 or any(len(s) > 64 for s in names.tolist()):
        out.append("npz: attack_names must hold at most 64 names of at most 64 characters")
    by = arrays["broken_by"].astype(np.int64)
    if (by < -1).any() or (by >= names.size).any():
        out.append("npz: broken_by must be -1 or a row of attack_names")
    return out


def _claimed_number_problems(data: dict, arrays: dict) -> list[str]:
    """Check clean accuracy, robust accuracies and the curve against what the arrays give."""
    out = []
    cl = data["claimed"]
    tol = data["threat"]["tolerances"]["cost_rel"]
    clean = float(np.mean(arrays["clean_correct"]))
    if abs(clean - cl["clean_accuracy"]) > _SLACK:
        out.append(f"claimed.clean_accuracy {cl['clean_accuracy']} != {clean} from the per-example arrays")
    for key, acc in cl["robust_accuracy"].items():
        lo, hi = robust_bounds(arrays, float(key), tol)
        if not lo - _SLACK <= acc <= hi + _SLACK:
            out.append(f"claimed.robust_accuracy[{key}] = {acc} is not what the per-example arrays give "
                       f"({lo} to {hi})")
        for attack, table in cl["per_attack_robust_accuracy"].items():
            if key in table and table[key] < lo - _SLACK:
                out.append(f"claimed.per_attack_robust_accuracy.{attack}[{key}] = {table[key]} is below the "
                           f"final robust accuracy {lo} (cumulative accuracies cannot be lower)")
    for r, acc in zip(cl["curve"]["radius"], cl["curve"]["accuracy"], strict=True):
        lo, hi = robust_bounds(arrays, r, tol)
        if not lo - _SLACK <= acc <= hi + _SLACK:
            out.append(f"claimed.curve at radius {r}: {acc} is not what the per-example arrays give "
                       f"({lo} to {hi})")
    return out


def _sample_problems(data: dict, arrays: dict) -> list[str]:
    """Check that the committed examples are the fixed selection of ``add``, with the arrays' costs."""
    out = []
    cl, ex = data["claimed"], data["examples"]
    tol = data["threat"]["tolerances"]["cost_rel"]
    sample = arrays["sample_index"].astype(np.int64)
    if sample.tolist() != ex["index"]:
        return ["npz: sample_index differs from examples.index"]
    ok = eligible(arrays, cl["robust_accuracy"], tol)
    if sample.size != min(MAX_SAMPLE, int(ok.sum())):
        out.append(f"examples: {sample.size} committed, but {int(ok.sum())} were broken inside "
                   f"the grid (commit min({MAX_SAMPLE}, that))")
    row = {int(i): j for j, i in enumerate(arrays["index"].tolist())}
    rows = [row.get(i) for i in ex["index"]]
    if None in rows:
        out.append("examples.index holds indices that were not evaluated")
        return out
    rows = np.asarray(rows, dtype=np.int64)
    if not ok[rows].all():
        out.append("examples: committed examples must be clean-correct and broken inside the radius grid")
    if arrays["label"][rows].tolist() != ex["label"]:
        out.append("examples.label differs from the per-example labels")
    if not np.array_equal(arrays["broken_cost"][rows], np.asarray(ex["cost"], dtype=np.float64)):
        out.append("examples.cost differs from the per-example broken_cost")
    if [grid_radius(c, cl["robust_accuracy"], tol) for c in ex["cost"]] != ex["radius"]:
        out.append("examples.radius must be the smallest grid radius r with cost <= r * (1 + cost_rel)")
    xs, ys = arrays["sample_clean"], arrays["sample_adversarial"]
    if xs.shape != ys.shape or xs.shape[0] != sample.size or min(xs.shape[1:], default=0) < 1:
        out.append(f"npz: sample_clean and sample_adversarial must both be [{sample.size}, C, H, W], "
                   f"got {xs.shape} and {ys.shape}")
    elif not (np.isfinite(xs).all() and xs.min(initial=0) >= 0 and xs.max(initial=0) <= 1):
        out.append("npz: sample_clean must be finite and in [0, 1]")
    return out
