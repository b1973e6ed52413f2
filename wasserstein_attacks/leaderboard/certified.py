"""Certified entries: flow-space randomized smoothing (Levine & Feizi 2020), certified by CERTIFY.

Layout (beside ``entries/``, in a table of their own: never ranked with the empirical entries)::

    certified/<dataset>/W1/<id>.json   one smoothed classifier, made by ``add_certified`` from a
                                       ``wattack-certify`` run folder (certified_schema.json)
    certified/<dataset>/W1/<id>.pt     its base model's state dict (required; read with weights_only=True)

The threat folder is ``W1``: a certificate of radius ``r`` (units of eps, ``p = 1``) covers every ``x'``
with exactly the same mass per channel as ``x`` and ``W1(x, x') < r`` for ANY window size, in or out of
the box, with probability at least ``1 - alpha`` per example (``defenses.smoothing.certify``).

``validate_certified`` recomputes every claim from the per-example counts, the noise and the
certification parameters, with no model: ``p_lower = clopper_pearson_lower(count, n, alpha)`` (within
``1e-9``), ``radius = flow_radius_to_eps(noise.radius(p_lower), mass, relative)`` (within ``1e-9``
relative; 0 where ``p_lower <= 1/2``), prediction = ``selected`` if ``p_lower > 1/2`` else abstain, and
then certified accuracy at each radius ``r`` (prediction == label and radius > r), smoothed accuracy and
abstention rate, which must equal the claims exactly; the checkpoint's file and weights hashes must be
the entry's. ``add_certified`` (``.certified_add``) makes entries; ``verify_certified``
(``.certified_verify``) re-runs CERTIFY with the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from .._util import radius_key, sha256_file, weights_sha256
from .io import read_json
from .schema import EntryError, entry_sha256, schema_problems

__all__ = [
    "CERTIFIED_DIR",
    "CERTIFIED_RADII",
    "METHODS",
    "MAX_CERTIFIED_BYTES",
    "CertifiedEntry",
    "certified_paths",
    "recompute",
    "certified_numbers",
    "correct_and_radius",
    "certified_problems",
    "certified_binding_problems",
    "certified_checkpoint_problems",
    "validate_certified",
    "load_certified",
    "validate_certified_all",
    "read_state",
    "ABSTAIN",
    "COLUMNS",
    "PARAMS",
    "THREAT_FOLDER",
]

CERTIFIED_DIR = "certified"
#: Folder of the threat model: W1 (p = 1), any window, box or not: what one flow certificate covers.
THREAT_FOLDER = "W1"
#: Radii of the rendered table (units of eps); an entry may claim others, shown only in its file.
CERTIFIED_RADII = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
METHODS = ("noise", "consistency", "smoothadv", "none")
# Per-example columns in JSON (about 60 bytes per example): up to 10000 examples fit.
MAX_CERTIFIED_BYTES = 2 * 1024 * 1024
MAX_CHECKPOINT_BYTES = 512 * 1024 * 1024
P_LOWER_ATOL = 1e-9
RADIUS_RTOL = 1e-9
PARAMS = ("n0", "n", "alpha", "seed", "p")
COLUMNS = ("index", "label", "selected", "count", "p_lower", "radius")
ABSTAIN = -1  # defenses.smoothing.ABSTAIN, without importing the defenses to list entries
_LIST = 20


@dataclasses.dataclass(frozen=True)
class CertifiedEntry:
    """A validated certified entry: its JSON ``data`` (the checkpoint ``<id>.pt`` lies beside ``path``)."""

    path: Path
    data: dict

    @property
    def status(self) -> str:
        """Return the shown status: the record's, ``"claimed"`` (none) or ``"unbound"`` (not this entry's)."""
        v = self.data["verification"]
        if not v:
            return "claimed"
        return "unbound" if certified_binding_problems(self.data) else v["status"]


def certified_paths(root: Path) -> list[Path]:
    """List the certified entry files ``root/certified/<dataset>/W1/<id>.json``, sorted."""
    return sorted((Path(root) / CERTIFIED_DIR).glob(f"*/{THREAT_FOLDER}/*.json"))


def _listed(values) -> str:
    values = list(values)
    return f"{values[:_LIST]}{' ...' if len(values) > _LIST else ''}"


# ------------------------------------------------------------------------------------ numbers from counts
def recompute(data: dict) -> dict[str, np.ndarray]:
    """Recompute what the counts give, for an entry with valid columns (``certified_problems`` checks first).

    Returns ``p_lower`` float64 ``[N]`` (one-sided Clopper-Pearson of ``count`` out of ``n`` at ``alpha``),
    ``radius`` float64 ``[N]`` (units of eps; 0 where ``p_lower <= 1/2``, ``inf`` where pixel-unit noise
    lacks the mass it needs) and ``prediction`` int64 ``[N]`` (``selected``, -1 where abstaining).
    """
    from ..defenses.smoothing import clopper_pearson_lower, flow_radius_to_eps, make_noise

    c, ex, nz = data["certification"], data["examples"], data["noise"]
    p_lower = clopper_pearson_lower(np.asarray(ex["count"], dtype=np.int64), c["n"], c["alpha"])
    noise = make_noise(nz["name"], sigma=nz["sigma"], relative=nz["relative"])
    masses = ex.get("mass") or [1.0] * len(p_lower)  # relative noise: the radius does not depend on it
    mass = np.asarray([math.nan if m is None else m for m in masses], dtype=np.float64)
    eps = flow_radius_to_eps(noise.radius(p_lower), mass, relative=nz["relative"])
    certified = p_lower > 0.5
    selected = np.asarray(ex["selected"], dtype=np.int64)
    return {"p_lower": p_lower, "radius": np.where(certified, eps, 0.0),
            "prediction": np.where(certified, selected, ABSTAIN)}


def correct_and_radius(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per example of a valid entry: prediction correct (bool ``[N]``) and certified radius (float64 ``[N]``).

    An abstention is not correct; radii are in units of eps; certified at ``r``: correct, radius ``> r``.
    """
    got = recompute(data)
    return got["prediction"] == np.asarray(data["examples"]["label"], dtype=np.int64), got["radius"]


def certified_numbers(label, prediction, radius, keys) -> dict:
    """Certified accuracy at each radius key, smoothed accuracy and abstention rate of ``N`` examples.

    ``label``, ``prediction`` int ``[N]``, ``radius`` float ``[N]`` (units of eps). Fractions are
    ``count / N`` in float64, exactly as ``CertifyResult.certified_accuracy`` computes them, so an honest
    claim compares equal. Certified at ``r``: correct and radius strictly above ``r``.
    """
    radius = np.asarray(radius, dtype=np.float64)
    correct = np.asarray(prediction) == np.asarray(label)
    n = correct.size
    return {"certified_accuracy": {k: int(np.count_nonzero(correct & (radius > float(k)))) / n for k in keys},
            "smoothed_accuracy": int(np.count_nonzero(correct)) / n,
            "abstention_rate": int(np.count_nonzero(np.asarray(prediction) == ABSTAIN)) / n}


# ---------------------------------------------------------------------------------------- the JSON alone
def _column_problems(data: dict) -> list[str]:
    """Columns of one length (``claimed.n_examples``), distinct indices, counts <= n, the mass column."""
    ex, n = data["examples"], data["claimed"]["n_examples"]
    out = []
    cols = [*COLUMNS, *(["mass"] if "mass" in ex else [])]
    lengths = {k: len(ex[k]) for k in cols}
    if set(lengths.values()) != {n}:
        out.append(f"examples: every column must hold claimed.n_examples = {n} values, got lengths {lengths}")
    if len(set(ex["index"])) != len(ex["index"]):
        out.append("examples.index holds duplicate dataset indices")
    over = [i for i, k in zip(ex["index"], ex["count"], strict=False) if k > data["certification"]["n"]]
    if over:
        out.append(f"examples.count exceeds certification.n at dataset indices {_listed(over)}")
    relative = data["noise"]["relative"]
    if relative and "mass" in ex:
        out.append("examples.mass is for pixel-unit noise only (noise.relative is true)")
    if not relative and "mass" not in ex:
        out.append("examples.mass is required with pixel-unit noise (noise.relative false): the radius "
                   "in eps is radius_flow / (sqrt(2) mass)")
    return out


def _key_problems(data: dict) -> list[str]:
    out = []
    for key in data["claimed"]["certified_accuracy"]:
        try:
            ok = radius_key(float(key)) == key
        except ValueError:
            ok = False
        if not ok:
            out.append(f"claimed.certified_accuracy key {key!r} is not a canonical radius (e.g. '0.1')")
    if data["model"]["checkpoint"] != f"{data['id']}.pt":
        out.append(f"model.checkpoint must be {data['id']}.pt (the entry's id), "
                   f"got {data['model']['checkpoint']!r}")
    return out


def _number_problems(data: dict) -> list[str]:
    """Claims against what the counts give (``recompute``), naming the dataset indices that differ."""
    ex, cl = data["examples"], data["claimed"]
    index = np.asarray(ex["index"])
    got = recompute(data)
    out = []
    p_bad = ~(np.abs(np.asarray(ex["p_lower"], dtype=np.float64) - got["p_lower"]) <= P_LOWER_ATOL)
    if p_bad.any():
        out.append(f"examples.p_lower is not clopper_pearson_lower(count, n, alpha) (within "
                   f"{P_LOWER_ATOL:g}) at dataset indices {_listed(index[p_bad].tolist())}")
    radius = np.asarray(ex["radius"], dtype=np.float64)
    ok = np.isfinite(got["radius"]) & (np.abs(radius - got["radius"]) <= RADIUS_RTOL * got["radius"])
    if not ok.all():
        out.append(f"examples.radius is not the radius the noise certifies for p_lower (within "
                   f"{RADIUS_RTOL:g} relative; 0 where p_lower <= 1/2) at dataset indices "
                   f"{_listed(index[~ok].tolist())}")
    if "mass" in ex:
        rows = zip(index, ex["mass"], got["p_lower"], strict=True)
        missing = [int(i) for i, m, p in rows if m is None and p > 0.5]
        if missing:
            out.append(f"examples.mass is null at certified examples (dataset indices {_listed(missing)})")
    want = certified_numbers(ex["label"], got["prediction"], radius, cl["certified_accuracy"])
    for key, acc in cl["certified_accuracy"].items():
        if acc != want["certified_accuracy"][key]:
            out.append(f"claimed.certified_accuracy[{key}] = {acc} but the examples give "
                       f"{want['certified_accuracy'][key]}")
    for field in ("smoothed_accuracy", "abstention_rate"):
        if cl[field] != want[field]:
            out.append(f"claimed.{field} = {cl[field]} but the examples give {want[field]}")
    return out


def _record_problems(data: dict) -> list[str]:
    """Check that a verification record's status follows from its checks (as ``verify`` writes it)."""
    record = data["verification"]
    if record is None:
        return []
    failed = sorted(k for k, c in record["checks"].items() if not c["passed"])
    if record["status"] == "verified" and (failed or "counts" not in record["checks"]):
        return [f"verification.status is 'verified' but checks {failed or ['counts (missing)']} failed"]
    if record["status"] == "failed" and not failed:
        return ["verification.status is 'failed' but every check passed"]
    if record["examples_checked"] > data["claimed"]["n_examples"]:
        return ["verification.examples_checked exceeds claimed.n_examples"]
    if record["status"] == "verified" and record["examples_checked"] < 1:
        return ["verification.status is 'verified' but no example was re-checked"]
    return []


def certified_problems(data, path: Path | None = None) -> list[str]:
    """Everything wrong with a certified entry's JSON ``data`` (empty: valid); does not read the checkpoint.

    The schema, then: the columns, canonical radius keys, every number recomputed from the counts
    (module doc), the record's status, and (with ``path``) the place ``certified/<dataset>/W1/<id>.json``.
    """
    problems = schema_problems(data, "certified")
    if problems:
        return problems
    out = _column_problems(data) + _key_problems(data)
    if not out:  # recomputing needs well-formed columns
        out += _number_problems(data)
    out += _record_problems(data)
    if path is not None:
        path = Path(path)
        want = (CERTIFIED_DIR, data["certification"]["dataset"]["name"], THREAT_FOLDER, f"{data['id']}.json")
        got = (path.parent.parent.parent.name, path.parent.parent.name, path.parent.name, path.name)
        if got != want:
            out.append(f"certified entry file must be at {'/'.join(want)}, found at .../{'/'.join(got)}")
    return out


# ------------------------------------------------------------------------------- binding and checkpoint
def certified_binding_problems(data: dict) -> list[str]:
    """Why the verification record does not belong to this entry (empty: it binds, or there is none).

    It names the sha256 of the entry without the record (``schema.entry_sha256``), of the checkpoint it
    loaded and the certification parameters: a record copied from another entry, or kept after the
    entry changed, does not bind. (Not a signature: only re-running ``verify`` shows a record is true.)
    """
    record = data["verification"]
    if record is None:
        return []
    b = record["binding"]
    want = {"entry_sha256": entry_sha256(data), "checkpoint_sha256": data["model"]["checkpoint_sha256"],
            "certification": {k: data["certification"][k] for k in PARAMS}}
    bad = sorted(k for k, v in want.items() if b[k] != v)
    if bad:
        return [f"verification: record does not bind to this entry: {', '.join(bad)} differ (copied from "
                "another entry, or the entry changed after verify); re-run verify"]
    return []


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Read the state dict in a checkpoint file (``safe_load``: weights only); one-line ``ValueError``."""
    from ..models import extract_state_dict, safe_load

    return extract_state_dict(safe_load(path))


def certified_checkpoint_problems(path: Path, data: dict) -> list[str]:
    """Why ``<id>.pt`` beside the entry at ``path`` is not the model it claims (empty: it is)."""
    pt = Path(path).with_name(data["model"]["checkpoint"])
    if not pt.is_file():
        return [f"{pt.name} (the base model's state dict) is missing: a certified entry commits its weights"]
    if pt.stat().st_size > MAX_CHECKPOINT_BYTES:
        return [f"{pt.name} is {pt.stat().st_size} bytes; the limit is {MAX_CHECKPOINT_BYTES}"]
    got = sha256_file(pt)
    if got != data["model"]["checkpoint_sha256"]:
        return [f"{pt.name}: sha256 {got} differs from model.checkpoint_sha256 (changed after the entry "
                "was made)"]
    try:
        weights = weights_sha256(read_state(pt))
    except ValueError as e:
        return [f"{pt.name}: {e}"]
    if weights != data["model"]["weights_sha256"]:
        return [f"{pt.name}: weights sha256 {weights} differs from model.weights_sha256"]
    return []


# ------------------------------------------------------------------------------------------------ files
def validate_certified(path: Path, *, binding: bool = True) -> list[str]:
    """Every problem of the certified entry at ``path`` (empty: valid).

    Its JSON and numbers (``certified_problems``), its checkpoint (``certified_checkpoint_problems``)
    and, with ``binding``, whether its verification record binds to it.
    """
    try:
        data, _ = read_json(path, MAX_CERTIFIED_BYTES, "certified entry")
    except (FileNotFoundError, EntryError) as e:
        return getattr(e, "problems", [str(e)])
    problems = certified_problems(data, path)
    if schema_problems(data, "certified"):
        return problems
    problems += certified_checkpoint_problems(path, data)
    return problems + (certified_binding_problems(data) if binding else [])


def load_certified(path: Path) -> CertifiedEntry:
    """Read and validate a certified entry (not its binding: ``status`` shows that); ``EntryError`` else."""
    problems = validate_certified(path, binding=False)
    if problems:
        raise EntryError(str(path), problems)
    return CertifiedEntry(Path(path), read_json(path, MAX_CERTIFIED_BYTES, "certified entry")[0])


def validate_certified_all(root: Path, *, binding: bool = True) -> dict[Path, list[str]]:
    """Validate every certified entry under ``root``; ``{path: problems}`` for the invalid ones.

    Also reports files under ``root/certified`` that are not an entry or its checkpoint.
    """
    bad = {p: v for p in certified_paths(root) if (v := validate_certified(p, binding=binding))}
    known = {q for p in certified_paths(root) for q in (p, p.with_suffix(".pt"))}
    folder = Path(root) / CERTIFIED_DIR
    for f in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if f.is_file() and f not in known and f.name != ".gitkeep":
            bad[f] = [f"not part of a certified entry: expected {CERTIFIED_DIR}/<dataset>/W1/<id>.json "
                      "and <id>.pt"]
    return bad
