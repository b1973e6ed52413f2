"""The leaderboard: benchmark runs as validated data, re-checkable exactly, rendered to static pages.

Layout (the ``leaderboard/`` folder of the repository, or any ``--root``)::

    entries/<dataset>/<threat-id>/<id>.json   one model under one threat model (leaderboard_schema.json)
    entries/<dataset>/<threat-id>/<id>.npz    its per-example arrays and committed broken examples
    README.md, index.html                     written by ``render`` (same entries -> same bytes)

``<threat-id>`` names the threat model: ``W<p>-k<kernel_size>-box01`` (``dense`` for no window,
``nobox`` for no box), e.g. ``W1-k5-box01`` for the project's default ``WassersteinBall``.

The npz (written without pickles, read without ``np.load``) holds, for all ``n`` evaluated examples:
``index`` int64 (dataset index), ``label`` int64, ``clean_correct`` bool, ``broken_cost`` float64 (certified
cost of the cheapest verified adversarial example in units of eps, ``+inf`` if none, 0 for clean errors),
``broken_by`` int16 (row of ``attack_names``, -1 for none), ``attack_names`` unicode; and for a fixed
random subset of at most 100 broken examples: ``sample_index`` int64 ``[m]``, ``sample_clean`` and
``sample_adversarial`` float ``[m, C, H, W]`` in pixel space. An example is broken at radius ``r`` when
``broken_cost <= r * (1 + cost_rel)`` (the ball's certification rule); claimed accuracies must lie
between that count and the strict ``broken_cost <= r`` count.

Entries are untrusted input: strict schema, size limits, canonical radius keys, the npz's sha256,
claimed numbers consistent with the per-example arrays, HTML escaping when rendered, checkpoints
loaded only with ``torch.load(..., weights_only=True)`` and only when their sha256 matches the entry.
The verification block is written by ``verify`` only; claimed numbers are never modified.

Command line: ``wattack-leaderboard {validate,add,verify,render}`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import html
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import torch

from .. import __version__
from ..threat import WassersteinBall

__all__ = [
    "EntryError",
    "Entry",
    "radius_key",
    "threat_id",
    "entry_problems",
    "load_entry",
    "validate_all",
    "add_entry",
    "verify_entry",
    "render",
    "write_rendered",
    "load_model",
    "load_data",
    "load_entry_suite",
    "main",
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
_TOOL = "wattack-leaderboard"
_NPZ_SPEC = {  # key -> (numpy dtype kind(s), ndim)
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


class EntryError(ValueError):
    """An entry (or a results file) that does not validate; ``problems`` lists every reason."""

    def __init__(self, where: str, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{where}: " + "; ".join(self.problems))


# ---------------------------------------------------------------------------------------------- files
def _reject_constant(token: str):
    raise ValueError(f"non-finite number {token} is not valid JSON here (numbers must be finite)")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _read_json(path: Path, max_bytes: int, what: str) -> tuple[object, bytes]:
    """Parse ``path`` as strict JSON (no NaN/inf, no duplicate keys), refusing files over ``max_bytes``.

    Returns ``(value, raw bytes)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    size = path.stat().st_size
    if size > max_bytes:
        raise EntryError(str(path), [f"{what} is {size} bytes; the limit is {max_bytes}"])
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant,
                           object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise EntryError(str(path), [f"{what} is not valid UTF-8 JSON: {e}"]) from None
    return value, raw


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_text(value, depth: int = 0) -> str:
    """Indented JSON with arrays of scalars kept on one line (short files, readable diffs)."""
    pad = "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {_json_text(v, depth + 1)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(pad + _json_text(v, depth + 1) for v in value) + "\n" + "  " * depth + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _json_bytes(data) -> bytes:
    return (_json_text(data) + "\n").encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise ``arrays`` as a standard ``.npz`` with fixed member dates: equal arrays, equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read an entry's npz without pickles, checking members, dtypes and sizes before allocating.

    ``np.load`` would allocate whatever shape a member's header claims; here an array must fit in
    the member's (bounded) uncompressed size.
    """
    size = path.stat().st_size
    if size > MAX_NPZ_BYTES:
        raise ValueError(f"npz is {size} bytes; the limit is {MAX_NPZ_BYTES}")
    out = {}
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        names = sorted(i.filename for i in infos)
        expected = sorted(f"{k}.npy" for k in _NPZ_SPEC)
        if names != expected:
            raise ValueError(f"npz members must be exactly {expected}, got {names}")
        total = sum(i.file_size for i in infos)
        if total > MAX_NPZ_UNCOMPRESSED:
            raise ValueError(f"npz decompresses to {total} bytes; the limit is {MAX_NPZ_UNCOMPRESSED}")
        for info in infos:
            key = info.filename[:-4]
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"npz member {key}: unsupported .npy version {version}")
                kinds, ndim = _NPZ_SPEC[key]
                if dtype.hasobject or dtype.kind not in kinds or len(shape) != ndim:
                    raise ValueError(f"npz member {key} must be a {ndim}-d array of kind {kinds!r}, "
                                     f"got dtype {dtype} shape {shape}")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size:
                    raise ValueError(f"npz member {key} claims shape {shape}, larger than its data")
                data = f.read(nbytes)
                if len(data) != nbytes:
                    raise ValueError(f"npz member {key} is truncated")
            arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
            out[key] = arr.astype(dtype.newbyteorder("="), copy=True)
    return out


# ---------------------------------------------------------------------------------------------- keys
def radius_key(radius: float) -> str:
    """Format a radius (units of eps) as an entry key: the shortest round-trip decimal, ``repr(float)``."""
    r = float(radius)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"radius must be a finite float >= 0, got {radius!r}")
    return repr(r)


def _canonical_key(key: str) -> bool:
    try:
        return radius_key(float(key)) == key
    except ValueError:
        return False


def threat_id(p: int, kernel_size: int | None, box) -> str:
    """Folder name of a threat model, e.g. ``"W1-k5-box01"`` (``p=1``, 5x5 window, box [0, 1])."""
    window = f"k{kernel_size}" if kernel_size is not None else "dense"
    return f"W{p}-{window}-{'box01' if box is not None else 'nobox'}"


def _ball(threat: dict, eps) -> WassersteinBall:
    tol = threat["tolerances"]
    box = (0.0, 1.0) if threat["box"] is not None else None
    return WassersteinBall(eps, threat["p"], threat["kernel_size"], box, tol["mass_rel"], tol["cost_rel"],
                           tol["box_abs"])


# ---------------------------------------------------------------------------------------------- validation
@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    text = resources.files(__package__).joinpath("leaderboard_schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A validated entry: its JSON ``data`` and npz ``arrays`` (see the module docstring)."""

    path: Path
    data: dict
    arrays: dict

    @property
    def status(self) -> str:
        """``"verified"``, ``"examples-verified"``, ``"failed"`` or ``"claimed"`` (never verified)."""
        v = self.data["verification"]
        return v["status"] if v else "claimed"


def _robust_bounds(arrays: dict, radius: float, cost_tol: float) -> tuple[float, float]:
    """Robust accuracy at ``radius`` from per-example arrays: (tolerant rule, strict rule), fractions."""
    ok, cost = arrays["clean_correct"], arrays["broken_cost"]
    lo = float(np.mean(ok & ~(cost <= radius * (1 + cost_tol))))
    hi = float(np.mean(ok & ~(cost <= radius)))
    return lo, hi


def entry_problems(data, path: Path | None = None) -> list[str]:
    """Everything wrong with an entry's JSON ``data`` (empty list: valid). Does not read the npz.

    Checks the schema, then what it cannot express: the threat id, canonical radius keys, the curve,
    the committed examples' costs and radii, and (with ``path``) the file's place
    ``entries/<dataset>/<threat-id>/<id>.json``.
    """
    errors = sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        return [f"schema: at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors]
    out = []
    th, cl, ex = data["threat"], data["claimed"], data["examples"]
    tid = threat_id(th["p"], th["kernel_size"], th["box"])
    if th["id"] != tid:
        out.append(f"threat.id is {th['id']!r} but p/kernel_size/box give {tid!r}")
    if th["kernel_size"] is not None and th["kernel_size"] % 2 == 0:
        out.append(f"threat.kernel_size must be odd, got {th['kernel_size']}")
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
    m = len(ex["index"])
    if not (len(ex["label"]) == len(ex["cost"]) == len(ex["radius"]) == m):
        out.append("examples: index, label, cost and radius must have the same length")
    if any(b <= a for a, b in zip(ex["index"], ex["index"][1:], strict=False)):
        out.append("examples.index must be strictly increasing")
    if m > cl["n_examples"]:
        out.append("examples: more committed examples than claimed.n_examples")
    cost_tol = th["tolerances"]["cost_rel"]
    for i, (cost, rk) in enumerate(zip(ex["cost"], ex["radius"], strict=False)):
        if rk not in cl["robust_accuracy"]:
            out.append(f"examples.radius[{i}] = {rk!r} is not a radius of claimed.robust_accuracy")
        elif not 0 < cost <= float(rk) * (1 + cost_tol):
            out.append(f"examples.cost[{i}] = {cost!r} is not in (0, {rk} * (1 + cost_rel)]")
    if data["model"]["checkpoint_sha256"] is None and "weights_sha256" not in data["model"]:
        out.append("model: checkpoint_sha256 is null, so weights_sha256 is required (to identify the model)")
    if ex["file"] != f"{data['id']}.npz":
        out.append(f"examples.file must be {data['id']}.npz (the entry's id), got {ex['file']!r}")
    if path is not None:
        path = Path(path)
        want = (data["dataset"]["name"], th["id"], f"{data['id']}.json")
        got = (path.parent.parent.name, path.parent.name, path.name)
        if got != want:
            out.append(f"entry file must be at entries/{'/'.join(want)}, found at .../{'/'.join(got)}")
    return out


def _array_problems(data: dict, arrays: dict) -> list[str]:
    """Claimed numbers and committed examples against the per-example arrays of the npz."""
    out = []
    cl, ex, th = data["claimed"], data["examples"], data["threat"]
    n = cl["n_examples"]
    per = ("index", "label", "clean_correct", "broken_cost", "broken_by")
    if any(arrays[k].shape != (n,) for k in per):
        return [f"npz: {', '.join(per)} must all have shape [{n}] (claimed.n_examples), got "
                f"{[arrays[k].shape for k in per]}"]
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
    if out:
        return out
    tol = th["tolerances"]["cost_rel"]
    slack = 1e-9
    clean = float(np.mean(ok))
    if abs(clean - cl["clean_accuracy"]) > slack:
        out.append(f"claimed.clean_accuracy {cl['clean_accuracy']} != {clean} from the per-example arrays")
    for key, acc in cl["robust_accuracy"].items():
        lo, hi = _robust_bounds(arrays, float(key), tol)
        if not lo - slack <= acc <= hi + slack:
            out.append(f"claimed.robust_accuracy[{key}] = {acc} is not what the per-example arrays give "
                       f"({lo} to {hi})")
        for attack, table in cl["per_attack_robust_accuracy"].items():
            if key in table and table[key] < lo - slack:
                out.append(f"claimed.per_attack_robust_accuracy.{attack}[{key}] = {table[key]} is below the "
                           f"final robust accuracy {lo} (cumulative accuracies cannot be lower)")
    for r, acc in zip(cl["curve"]["radius"], cl["curve"]["accuracy"], strict=True):
        lo, hi = _robust_bounds(arrays, r, tol)
        if not lo - slack <= acc <= hi + slack:
            out.append(f"claimed.curve at radius {r}: {acc} is not what the per-example arrays give "
                       f"({lo} to {hi})")
    # The committed examples must be the fixed selection of _select_sample, with the arrays' costs.
    sample = arrays["sample_index"].astype(np.int64)
    if sample.tolist() != ex["index"]:
        out.append("npz: sample_index differs from examples.index")
        return out
    eligible = _eligible(arrays, cl["robust_accuracy"], tol)
    if sample.size != min(MAX_SAMPLE, int(eligible.sum())):
        out.append(f"examples: {sample.size} committed, but {int(eligible.sum())} were broken inside "
                   f"the grid (commit min({MAX_SAMPLE}, that))")
    row = {int(i): j for j, i in enumerate(index.tolist())}
    rows = [row.get(i) for i in ex["index"]]
    if None in rows:
        out.append("examples.index holds indices that were not evaluated")
        return out
    rows = np.asarray(rows, dtype=np.int64)
    if not eligible[rows].all():
        out.append("examples: committed examples must be clean-correct and broken inside the radius grid")
    if arrays["label"][rows].tolist() != ex["label"]:
        out.append("examples.label differs from the per-example labels")
    if not np.array_equal(cost[rows], np.asarray(ex["cost"], dtype=np.float64)):
        out.append("examples.cost differs from the per-example broken_cost")
    want_r = [_grid_radius(c, cl["robust_accuracy"], tol) for c in ex["cost"]]
    if want_r != ex["radius"]:
        out.append("examples.radius must be the smallest grid radius r with cost <= r * (1 + cost_rel)")
    xs, ys = arrays["sample_clean"], arrays["sample_adversarial"]
    if xs.shape != ys.shape or xs.shape[0] != sample.size or min(xs.shape[1:], default=0) < 1:
        out.append(f"npz: sample_clean and sample_adversarial must both be [{sample.size}, C, H, W], "
                   f"got {xs.shape} and {ys.shape}")
    elif not (np.isfinite(xs).all() and xs.min(initial=0) >= 0 and xs.max(initial=0) <= 1):
        out.append("npz: sample_clean must be finite and in [0, 1]")
    return out


def _grid_radius(cost: float, robust: dict, cost_tol: float) -> str | None:
    keys = sorted(robust, key=float)
    return next((k for k in keys if cost <= float(k) * (1 + cost_tol)), None)


def _eligible(arrays: dict, robust: dict, cost_tol: float) -> np.ndarray:
    """Bool [n]: clean-correct examples broken by a verified adversarial inside the radius grid."""
    top = max(float(k) for k in robust)
    c = arrays["broken_cost"]
    return arrays["clean_correct"] & (c > 0) & (c <= top * (1 + cost_tol))


def _npz_path(path: Path, data: dict) -> Path:
    return Path(path).parent / data["examples"]["file"]


def _load_arrays(path: Path, data: dict) -> tuple[dict | None, list[str]]:
    npz = _npz_path(path, data)
    if not npz.is_file():
        return None, [f"{npz.name} (the entry's npz) is missing"]
    if _sha256_file(npz) != data["examples"]["sha256"]:
        return None, [f"{npz.name}: sha256 differs from examples.sha256 (changed after the entry was made)"]
    try:
        arrays = _read_npz(npz)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        return None, [f"{npz.name}: {e}"]
    return arrays, _array_problems(data, arrays)


def load_entry(path: Path) -> Entry:
    """Read and fully validate an entry (JSON + npz); raise :class:`EntryError` listing every problem."""
    path = Path(path)
    data, _ = _read_json(path, MAX_ENTRY_BYTES, "entry")
    problems = entry_problems(data, path)
    if problems:
        raise EntryError(str(path), problems)
    arrays, problems = _load_arrays(path, data)
    if problems:
        raise EntryError(str(path), problems)
    return Entry(path, data, arrays)


def _entry_paths(root: Path) -> list[Path]:
    return sorted((Path(root) / "entries").glob("*/*/*.json"))


def validate_all(root: Path) -> dict[Path, list[str]]:
    """Validate every entry under ``root/entries``; returns ``{path: problems}`` for the invalid ones.

    Also reports files that are not part of an entry (an npz without its JSON, files at other depths).
    """
    root = Path(root)
    bad: dict[Path, list[str]] = {}
    paths = _entry_paths(root)
    for p in paths:
        try:
            load_entry(p)
        except (EntryError, FileNotFoundError) as e:
            bad[p] = getattr(e, "problems", [str(e)])
    known = set(paths) | {p.with_suffix(".npz") for p in paths}
    entries = root / "entries"
    if entries.is_dir():
        for f in sorted(entries.rglob("*")):
            if f.is_file() and f not in known and f.name != ".gitkeep":
                bad[f] = ["not part of an entry: expected entries/<dataset>/<threat-id>/<id>.json and .npz"]
    return bad


# ---------------------------------------------------------------------------------------------- add
def _curve_radii(grid: list[float]) -> list[float]:
    """Radii at which the accuracy curve is recorded: 0, the grid, and 48 log-spaced points up to its top.

    The log points start a decade below the smallest positive grid radius (4 significant digits).
    """
    positive = [r for r in grid if r > 0]
    pts = {0.0, *grid}
    if positive:
        pts |= {float(f"{r:.4g}") for r in np.geomspace(min(positive) / 10, max(positive), 48).tolist()}
    return sorted(pts)


def _select_sample(arrays: dict, robust: dict, cost_tol: float, seed: int) -> np.ndarray:
    """Rows of the committed broken examples: a seeded uniform choice of ``MAX_SAMPLE``, sorted by index."""
    rows = np.flatnonzero(_eligible(arrays, robust, cost_tol))
    if rows.size > MAX_SAMPLE:
        rows = np.random.default_rng(seed).choice(rows, size=MAX_SAMPLE, replace=False)
    return rows[np.argsort(arrays["index"][rows], kind="stable")]


def _text(value, limit: int) -> str:
    s = re.sub(r"[\x00-\x1f\x7f]+", " ", str(value)).strip()
    return s[:limit]


def _need(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise ValueError(f"results.json lacks {dotted!r} (see the agreed results.json format)")
        cur = cur[part]
    return cur


def _results_schema_problems(results: dict) -> list[str]:
    """Validate against the pipeline's ``results_schema.json`` when the package ships one."""
    f = resources.files(__package__).joinpath("results_schema.json")
    if not f.is_file():
        return []
    v = jsonschema.Draft202012Validator(json.loads(f.read_text(encoding="utf-8")))
    return [f"results schema: at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in v.iter_errors(results)]


def add_entry(
    results_path: Path,
    *,
    root: Path,
    entry_id: str | None = None,
    name: str | None = None,
    authors: str,
    source: str,
    training: str,
    architecture: str | None = None,
    paper: str | None = None,
    note: str | None = None,
    headline_radius: float | None = None,
    examples_path: Path | None = None,
    selection_seed: int | None = None,
    added: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn a benchmark run (``results.json`` + ``examples.npz``) into a leaderboard entry.

    Args:
        results_path: the run's ``results.json`` (agreed format, written by ``wattack-bench``).
        root: leaderboard folder; the entry goes to ``root/entries/<dataset>/<threat-id>/<id>.json``.
        entry_id: file stem (letters, digits, ``._-``; default: the results' model name).
        name: display name (default: ``entry_id``).
        authors: who made the model.
        source: http(s) link to the paper or code.
        training: training method, e.g. ``"standard"``.
        architecture: ``models.build_model`` name (suffix ``-binarize`` for the binarized-input
            defense); default: the results' model name.
        paper: citation.
        note: anything a reader should know (e.g. "example only").
        headline_radius: ranking radius (default 0.1 for MNIST, else the grid's middle radius).
        examples_path: the run's ``examples.npz`` (default: beside ``results.json``).
        selection_seed: seed of the committed subset of broken examples (default: the run's seed).
        added: ``YYYY-MM-DDTHH:MM:SSZ`` (default: now, UTC).
        overwrite: replace an existing entry (its verification block is dropped).

    Returns:
        Path of the written entry JSON. Raises :class:`EntryError` / ``ValueError`` without writing
        anything if the run does not make a valid entry.

    """
    results_path = Path(results_path)
    results, raw = _read_json(results_path, MAX_RESULTS_BYTES, "results")
    if not isinstance(results, dict) or results.get("schema_version") != 1:
        raise ValueError(f"{results_path}: expected a results.json object with schema_version 1")
    problems = _results_schema_problems(results)
    if problems:
        raise EntryError(str(results_path), problems)
    if results.get("shard") is not None:
        raise ValueError(f"{results_path} is one shard of a run: merge the shards first (wattack-merge)")
    th = _need(results, "threat")
    threat = {
        "id": threat_id(_need(th, "p"), _need(th, "kernel_size"), _need(th, "box")),
        "name": _text(th.get("name") or "", 100) or None,
        "p": th["p"],
        "kernel_size": th["kernel_size"],
        "box": th["box"],
        "eps_units": _text(_need(th, "eps_units"), 200),
        "mass_normalisation": _text(th.get("mass_normalisation") or "", 100) or None,
        "tolerances": {k: _need(th, f"tolerances.{k}") for k in ("mass_rel", "cost_rel", "box_abs")},
    }
    threat = {k: v for k, v in threat.items() if v is not None or k in ("kernel_size", "box")}
    cost_tol = threat["tolerances"]["cost_rel"]

    ex = _need(results, "examples")
    n = int(_need(results, "n_examples"))
    cols = {k: _need(ex, k) for k in ("index", "label", "clean_correct", "broken_cost", "broken_by")}
    if any(not isinstance(v, list) or len(v) != n for v in cols.values()):
        raise ValueError(f"results.json examples.* must be lists of n_examples = {n} values")
    names = sorted({b for b in cols["broken_by"] if b is not None})
    arrays = {
        "index": np.asarray(cols["index"], dtype=np.int64),
        "label": np.asarray(cols["label"], dtype=np.int64),
        "clean_correct": np.asarray(cols["clean_correct"], dtype=bool),
        "broken_cost": np.asarray([math.inf if c is None else float(c) for c in cols["broken_cost"]]),
        "broken_by": np.asarray([-1 if b is None else names.index(b) for b in cols["broken_by"]], np.int16),
        "attack_names": np.asarray(names, dtype="<U64"),
    }
    grid = sorted(float(r) for r in _need(results, "radii"))
    robust = {radius_key(float(k)): float(v) for k, v in _need(results, "robust_accuracy").items()}
    if sorted(robust, key=float) != [radius_key(r) for r in grid]:
        raise ValueError(f"results.json robust_accuracy keys {sorted(robust)} do not match radii {grid}")
    per_attack = {a: {radius_key(float(k)): float(v) for k, v in t.items()}
                  for a, t in _need(results, "per_attack_robust_accuracy").items()}
    dataset = {k: _need(results, f"dataset.{k}") for k in ("name", "split", "n")}
    if headline_radius is None:
        default = HEADLINE_RADIUS.get(dataset["name"])
        headline_radius = default if default in grid else grid[len(grid) // 2]
    if radius_key(headline_radius) not in robust:
        raise ValueError(f"headline_radius {headline_radius} must be one of the run's radii {grid}")

    seed = int(_need(results, "seed"))
    selection_seed = seed if selection_seed is None else int(selection_seed)
    rows = _select_sample(arrays, robust, cost_tol, selection_seed)
    examples_path = Path(examples_path) if examples_path is not None else results_path.parent / "examples.npz"
    with np.load(examples_path, allow_pickle=False) as z:  # the run's own file, written by wattack-bench
        run_index = {int(i): j for j, i in enumerate(z["index"].tolist())}
        pick = [run_index.get(int(i)) for i in arrays["index"][rows]]
        if None in pick:
            raise ValueError(f"{examples_path} lacks the images of broken examples "
                             f"{arrays['index'][rows].tolist()}")
        arrays["sample_index"] = arrays["index"][rows]
        arrays["sample_clean"] = np.asarray(z["clean"][pick])
        arrays["sample_adversarial"] = np.asarray(z["adversarial"][pick])
    curve_r = _curve_radii(grid)

    model = _need(results, "model")
    entry_id = entry_id or re.sub(r"[^A-Za-z0-9._-]+", "-", str(_need(model, "name"))).strip("-.")[:64]
    hardware = results.get("hardware")
    if isinstance(hardware, dict):
        hardware = "; ".join(f"{k}={hardware[k]}" for k in sorted(hardware))
    commit = results.get("git_commit")
    checks = {}
    for k, v in (results.get("model_checks") or {}).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            checks[k] = _text(v, 300) if isinstance(v, str) else v
        elif isinstance(v, list) and all(isinstance(s, (str, int, float, bool)) or s is None for s in v):
            checks[k] = [_text(s, 300) if isinstance(s, str) else s for s in v[:32]]
    npz_bytes = _npz_bytes(arrays)
    data = {
        "schema_version": SCHEMA_VERSION,
        "id": entry_id,
        # What the submitter typed is kept as typed: the schema rejects, it never silently rewrites.
        "name": name or entry_id,
        "authors": authors,
        "source": source,
        **({"paper": paper} if paper else {}),
        **({"note": note} if note else {}),
        # Without an explicit architecture the model config's name must be one `verify` can build.
        "architecture": architecture or _check_architecture(str(_need(model, "name"))),
        "training": training,
        "added": added or _now(),
        "dataset": dataset,
        "threat": threat,
        "suite": {
            **{k: _need(results, f"suite.{k}") for k in ("name", "version", "attacks")},
            **({"order": results["suite"]["order"]} if "order" in results.get("suite", {}) else {}),
        },
        "claimed": {
            "n_examples": n,
            "clean_accuracy": float(_need(results, "clean_accuracy")),
            "robust_accuracy": robust,
            "headline_radius": radius_key(headline_radius),
            "curve": {"radius": curve_r,
                      "accuracy": [_robust_bounds(arrays, r, cost_tol)[0] for r in curve_r]},
            **({"exact_check": results["exact_check"]} if results.get("exact_check") else {}),
            "per_attack_robust_accuracy": per_attack,
        },
        "model": {
            **({"checkpoint": Path(str(model["checkpoint"])).name} if model.get("checkpoint") else {}),
            "checkpoint_sha256": _need(model, "checkpoint_sha256"),
            **({"weights_sha256": model["weights_sha256"]} if model.get("weights_sha256") else {}),
        },
        "provenance": {
            "package_version": str(_need(results, "package_version")),
            "git_commit": commit if commit not in ("", "unknown") else None,
            "config_hash": results.get("config_hash"),
            "seed": seed,
            "hardware": _text(hardware or "unknown", 300),
            "results_sha256": _sha256(raw),
        },
        **({"model_checks": checks} if checks else {}),
        "examples": {
            "file": f"{entry_id}.npz",
            "sha256": _sha256(npz_bytes),
            "selection_seed": selection_seed,
            "index": arrays["sample_index"].tolist(),
            "label": arrays["label"][rows].tolist(),
            "cost": arrays["broken_cost"][rows].tolist(),
            "radius": [_grid_radius(c, robust, cost_tol) for c in arrays["broken_cost"][rows].tolist()],
        },
        "verification": None,
    }
    target = Path(root) / "entries" / str(dataset["name"]) / threat["id"] / f"{entry_id}.json"
    problems = entry_problems(data, target)
    if not problems:
        problems = _array_problems(data, arrays)
    if problems:
        raise EntryError(f"entry from {results_path}", problems)
    if len(npz_bytes) > MAX_NPZ_BYTES:
        raise EntryError(str(target), [f"npz would be {len(npz_bytes)} bytes; the limit is {MAX_NPZ_BYTES}"])
    js = _json_bytes(data)
    if len(js) > MAX_ENTRY_BYTES:
        raise EntryError(str(target), [f"entry would be {len(js)} bytes; the limit is {MAX_ENTRY_BYTES}"])
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists: pass overwrite=True (--force) to replace it")
    _write_atomic(target.with_suffix(".npz"), npz_bytes)
    _write_atomic(target, js)
    return target


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------- verify
def _check_architecture(architecture: str) -> str:
    """``architecture`` if ``verify`` can build it (a ``models.build_model`` name, optional ``-binarize``).

    Raises ``ValueError`` (naming ``--architecture``) otherwise.
    """
    from .. import models

    base = architecture[: -len("-binarize")] if architecture.endswith("-binarize") else architecture
    if base not in models.MODELS:
        raise ValueError(
            f"architecture must be a models.build_model name (optionally with '-binarize'): one of "
            f"{', '.join(models.MODELS)}, got the model config's name {architecture!r}; pass "
            "--architecture (e.g. mnist_convnet)"
        )
    return architecture


def load_model(architecture: str, checkpoint: Path) -> torch.nn.Module:
    """Default model loader for ``verify``: ``models.build_model`` + ``models.load_weights``.

    ``architecture`` is a ``build_model`` name; the suffix ``-binarize`` wraps the model in the
    input-binarization defense (threshold 0.5 in the forward pass) with a straight-through backward pass
    (BPDA): the forward pass, on which success is judged, is the defense itself, while the attacks get a
    useful gradient, as in the benchmark run that made the entry (``conf/model/mnist_binarize.yaml``);
    with the threshold's zero gradient no attack could reproduce anything. The checkpoint is read with
    ``torch.load(weights_only=True)`` (any format ``load_weights`` knows). Returns the model in eval mode.
    """
    from .. import models  # imported late: listing and rendering entries need no models

    base, binarize = (architecture[: -len("-binarize")], True) if architecture.endswith("-binarize") else (
        architecture, False)
    model = models.build_model(base, binarize=binarize, straight_through=binarize)
    models.load_weights(model.model if binarize else model, checkpoint)
    return model.eval()


def load_data(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a data split for ``verify``: images float ``[N, C, H, W]`` in [0, 1], labels int64 ``[N]``."""
    from ..data import load_dataset  # written by the data work; imported late like load_model

    ds = load_dataset(name, split)
    return ds.images, ds.labels


def load_entry_suite(name: str, version: int):
    """Load an entry's suite for ``verify``: ``conf/suite/<name>-v<version>.yaml``, else ``<name>.yaml``.

    ``verify`` then requires the loaded suite's version to equal the entry's.
    """
    from ..attacks.suite import load_suite

    try:
        return load_suite(f"{name}-v{version}")
    except ValueError:
        return load_suite(name)


def _git_commit() -> str | None:
    """Commit of the checkout the package runs from (``-dirty`` if modified), or None outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head if re.fullmatch(r"[0-9a-f]{40}", head) else None


def _check(passed: bool, detail: str) -> dict:
    return {"passed": bool(passed), "detail": _text(detail, 2000)}


def _examples_check(data: dict, arrays: dict) -> dict:
    """Exact check of every committed adversarial example against its claimed radius and cost."""
    ex, th = data["examples"], data["threat"]
    m = len(ex["index"])
    if m == 0:
        return _check(True, "no broken examples to check")
    x = torch.from_numpy(arrays["sample_clean"]).to(torch.float64)
    y = torch.from_numpy(arrays["sample_adversarial"]).to(torch.float64)
    clean_ok = bool(torch.isfinite(x).all()) and x.numel() > 0 and 0 <= x.min() and x.max() <= 1
    if x.shape != y.shape or x.shape[0] != m or not clean_ok:
        return _check(False, "committed images malformed: sample_clean / sample_adversarial must be "
                             f"[{m}, C, H, W] with clean images in [0, 1]")
    radius = torch.tensor([float(r) for r in ex["radius"]], dtype=torch.float64)
    cost = torch.tensor(ex["cost"], dtype=torch.float64)
    # Negative or non-finite pixels are not images (and not masses): outside without an LP.
    sane = (torch.isfinite(y) & (y >= 0)).flatten(1).all(1)
    inside = torch.zeros(m, dtype=torch.bool)
    dist = torch.full((m,), math.inf, dtype=torch.float64)
    if sane.any():
        ball = _ball(th, radius[sane])
        inside[sane] = ball.contains(x[sane], y[sane])
        dist[sane] = ball.distance(x[sane], y[sane])
    tol = th["tolerances"]["cost_rel"]
    cost_ok = dist <= cost * (1 + tol)
    bad = [ex["index"][i] for i in range(m) if not (inside[i] and cost_ok[i])]
    ratio = (dist / radius).max().item()
    detail = (f"{m - len(bad)}/{m} committed adversarial examples inside the ball at their radius and within "
              f"their claimed cost (exact LP, cost_rel {tol}); max exact distance / radius = {ratio:.6g}")
    if bad:
        detail += f"; failing dataset indices: {bad[:20]}{' ...' if len(bad) > 20 else ''}"
    return _check(not bad, detail)


def verify_entry(
    path: Path,
    checkpoint: Path | None = None,
    *,
    n: int = 500,
    seed: int = 0,
    z: float = 3.0,
    slack: float = 0.01,
    clean_slack: float = 0.005,
    flip_slack: float = 0.05,
    by: str | None = None,
    device: str | torch.device = "cpu",
    model_loader: Callable[[str, Path], torch.nn.Module] = load_model,
    data_loader: Callable[[str, str], tuple[torch.Tensor, torch.Tensor]] = load_data,
    suite_loader: Callable[[str, int], object] = load_entry_suite,
    write: bool = True,
    progress: bool = False,
    now: str | None = None,
) -> dict:
    """Re-check an entry and write its verification block (claimed numbers are never touched).

    Without a checkpoint (status ``examples-verified`` or ``failed``): the npz's sha256, the claimed
    numbers against the per-example arrays, and every committed adversarial example exactly
    (``WassersteinBall.contains`` and ``distance`` at its claimed radius and cost, box included).

    With ``checkpoint`` (status ``verified`` or ``failed``), also: its sha256 against the entry; the
    model (``model_loader(architecture, checkpoint)``) misclassifies the committed adversarial
    examples (at most ``flip_slack`` of them may flip back on other hardware); the committed clean
    images and the labels equal the dataset's (``data_loader(name, split)``); clean accuracy on the
    entry's examples within ``clean_slack`` of the claim; and the suite (``suite_loader(name, version)``,
    same version) re-run on a seeded random subset of ``n`` of the entry's examples: at every radius,
    ``|reproduced - claimed| <= z * sqrt(a (1 - a) / n * (N - n) / (N - 1)) + slack`` (``a`` the
    claimed accuracy on all ``N`` examples: the binomial standard error of a subsample without
    replacement, plus ``slack`` for attack randomness and hardware).

    Returns:
        The verification block (also written into the entry, atomically, when ``write``).

    """
    path = Path(path)
    data, _ = _read_json(path, MAX_ENTRY_BYTES, "entry")
    problems = entry_problems(data, path)
    if problems:
        raise EntryError(str(path), problems)
    checks: dict[str, dict] = {}
    arrays, problems = _load_arrays(path, data)
    if arrays is None:
        checks["npz"] = _check(False, "; ".join(problems))
    else:
        checks["npz"] = _check(True, f"{data['examples']['file']} matches examples.sha256")
        checks["consistency"] = _check(not problems, "; ".join(problems) or
                                       "claimed numbers agree with the per-example arrays")
        checks["examples_in_ball"] = _examples_check(data, arrays)
    reproduction = None
    if checkpoint is not None:
        reproduction = _reproduce(data, arrays, Path(checkpoint), checks, n=n, seed=seed, z=z, slack=slack,
                                  clean_slack=clean_slack, flip_slack=flip_slack, device=device,
                                  model_loader=model_loader, data_loader=data_loader,
                                  suite_loader=suite_loader, progress=progress)
    passed = all(c["passed"] for c in checks.values())
    status = "failed" if not passed else "verified" if checkpoint is not None else "examples-verified"
    block = {
        "status": status,
        "by": _text(by or f"{_TOOL} verify", 200),
        "at": now or _now(),
        "tool": f"{_TOOL} verify (wasserstein_attacks {__version__})",
        "package_version": __version__,
        "git_commit": _git_commit(),
        "checks": checks,
        "reproduction": reproduction,
    }
    if write:
        updated = dict(data, verification=block)
        problems = entry_problems(updated, path)
        if problems:
            raise EntryError(f"verification block for {path}", problems)
        _write_atomic(path, _json_bytes(updated))
    return block


def _reproduce(data, arrays, checkpoint, checks, *, n, seed, z, slack, clean_slack, flip_slack, device,
               model_loader, data_loader, suite_loader, progress) -> dict | None:
    """Run the checks that need the model (see :func:`verify_entry`): fill ``checks``, return the block."""
    want, got = data["model"]["checkpoint_sha256"], _sha256_file(checkpoint)
    if want is not None:
        checks["checkpoint"] = _check(got == want, f"checkpoint sha256 {got}"
                                      + ("" if got == want else f" != {want}"))
        if got != want:
            return None  # never load a file the entry does not name
    if arrays is None:
        return None
    model = model_loader(data["architecture"], checkpoint)
    if want is None:
        # The run built its model without a checkpoint file: identify the weights instead.
        from ..bench import _weights_sha256

        w_want, w_got = data["model"]["weights_sha256"], _weights_sha256(model)
        checks["checkpoint"] = _check(w_got == w_want, f"weights sha256 {w_got}"
                                      + ("" if w_got == w_want else f" != {w_want}"))
        if w_got != w_want:
            return None
    model = model.to(device).eval()
    images, labels = data_loader(data["dataset"]["name"], data["dataset"]["split"])
    index = arrays["index"].astype(np.int64)
    if index.max(initial=0) >= len(labels):
        checks["dataset"] = _check(False, f"entry indices reach {index.max()}, the dataset has {len(labels)}")
        return None
    idx = torch.from_numpy(index)
    x, y = images[idx].float(), labels[idx].long()
    label_ok = torch.equal(y, torch.from_numpy(arrays["label"].astype(np.int64)))
    pos = {int(i): j for j, i in enumerate(index.tolist())}
    rows = [pos.get(int(i)) for i in arrays["sample_index"]]
    same = None not in rows and arrays["sample_clean"].shape == (len(rows), *x.shape[1:])
    if same and rows:
        committed = torch.from_numpy(arrays["sample_clean"]).double()
        same = bool((x[torch.tensor(rows)].double() - committed).abs().max() <= 1e-6)
    checks["dataset"] = _check(label_ok and same,
                               f"labels {'match' if label_ok else 'DIFFER from'} the dataset; committed "
                               f"clean images {'match' if same else 'DIFFER from'} the dataset")
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000].to(device)).argmax(1).cpu() for i in range(0, len(x), 1000)])
        adv = torch.from_numpy(arrays["sample_adversarial"]).to(device=device, dtype=x.dtype)
        adv_pred = model(adv).argmax(1).cpu() if len(adv) else torch.zeros(0, dtype=torch.long)
    fooled = int((adv_pred != torch.tensor(data["examples"]["label"], dtype=torch.long)).sum())
    m = len(adv_pred)
    checks["examples_misclassified"] = _check(
        m == 0 or fooled >= m * (1 - flip_slack),
        f"the model misclassifies {fooled}/{m} committed adversarial examples "
        f"(at least {1 - flip_slack:.0%} needed)")
    comparisons = []
    total = len(index)
    clean = float((pred == y).double().mean())
    comparisons.append({"radius": "clean", "claimed": data["claimed"]["clean_accuracy"], "reproduced": clean,
                        "claimed_on_subset": None, "tolerance": clean_slack,
                        "passed": abs(clean - data["claimed"]["clean_accuracy"]) <= clean_slack})
    suite = suite_loader(data["suite"]["name"], data["suite"]["version"])
    version_ok = getattr(suite, "version", None) == data["suite"]["version"]
    checks["suite"] = _check(version_ok, f"suite {data['suite']['name']!r} version "
                             f"{getattr(suite, 'version', None)} (entry: version {data['suite']['version']})")
    k = min(int(n), total)
    block = {"n": k, "seed": int(seed), "z": float(z), "slack": float(slack),
             "clean_slack": float(clean_slack), "comparisons": comparisons}
    if version_ok:
        sub = np.sort(np.random.default_rng(seed).choice(total, size=k, replace=False))
        robust = data["claimed"]["robust_accuracy"]
        radii = sorted(float(r) for r in robust)
        tsub = torch.from_numpy(sub)
        result = suite.run(model, x[tsub].to(device), y[tsub].to(device), radii,
                           threat=_ball(data["threat"], max(radii)), seed=data["provenance"]["seed"],
                           indices=idx[tsub], progress=progress)
        fpc = (total - k) / (total - 1) if total > 1 else 0.0
        sub_arrays = {name: arrays[name][sub] for name in ("clean_correct", "broken_cost")}
        cost_tol = data["threat"]["tolerances"]["cost_rel"]
        for key in sorted(robust, key=float):
            a = robust[key]
            acc = float(result.robust_accuracy(float(key)))
            tol = z * math.sqrt(a * (1 - a) / k * fpc) + slack
            comparisons.append({"radius": key, "claimed": a, "reproduced": acc,
                                "claimed_on_subset": _robust_bounds(sub_arrays, float(key), cost_tol)[0],
                                "tolerance": tol, "passed": abs(acc - a) <= tol})
    failed = [c["radius"] for c in comparisons if not c["passed"]]
    checks["reproduction"] = _check(
        version_ok and not failed,
        ("suite version differs: not re-run; " if not version_ok else "")
        + (f"outside tolerance at {failed}" if failed else "clean and every radius within tolerance"),
    )
    return block


# ---------------------------------------------------------------------------------------------- render
_STATUS_TEXT = {
    "verified": "verified",
    "examples-verified": "examples verified, not re-run",
    "failed": "FAILED verification",
    "claimed": "claimed (not verified)",
}
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22"]


@dataclasses.dataclass(frozen=True)
class _Table:
    dataset: str
    threat: str
    headline: str
    radii: list[str]
    entries: list[Entry]  # in ranked order; failed entries last


def _tables(entries: list[Entry]) -> list[_Table]:
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault((e.data["dataset"]["name"], e.data["threat"]["id"]), []).append(e)
    out = []
    for (ds, tid), group in sorted(groups.items()):
        keys = {k for e in group for k in e.data["claimed"]["robust_accuracy"]}
        default = HEADLINE_RADIUS.get(ds)
        if default is not None and radius_key(default) in keys:
            headline = radius_key(default)
        else:
            votes = Counter(e.data["claimed"]["headline_radius"] for e in group)
            headline = min(votes, key=lambda k: (-votes[k], float(k)))

        def rank(e: Entry, headline=headline):
            acc = e.data["claimed"]["robust_accuracy"].get(headline)
            return (e.status == "failed", acc is None, -(acc or 0.0), -e.data["claimed"]["clean_accuracy"],
                    e.data["name"].casefold(), e.data["id"])

        out.append(_Table(ds, tid, headline, sorted(keys, key=float), sorted(group, key=rank)))
    return out


def _pct(a: float | None) -> str:
    return "–" if a is None else f"{100 * a:.1f}%"


def _status(e: Entry) -> str:
    v = e.data["verification"]
    return _STATUS_TEXT[e.status] + (f" ({v['at'][:10]})" if v else "")


def _md(text: str) -> str:
    """Markdown-safe cell text: HTML-escaped, markdown syntax characters backslash-escaped."""
    s = html.escape(str(text), quote=False)
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", s)


def _md_url(url: str) -> str:
    return url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")


def _threat_line(th: dict) -> str:
    t = th["tolerances"]
    window = f"{th['kernel_size']}x{th['kernel_size']} window" if th["kernel_size"] else "dense plans"
    box = "box [0, 1]" if th["box"] is not None else "no box"
    return (f"p = {th['p']}, {window}, {box}; eps in {th['eps_units']}; verification tolerances: "
            f"mass {t['mass_rel']:g} (relative), cost {t['cost_rel']:g} (relative), box {t['box_abs']:g}")


_MD_INTRO = """# Wasserstein robustness leaderboard

Robust accuracy under one exactly defined Wasserstein threat model (see `THREAT_MODEL.md` of the
project): every adversarial example counted was verified inside the ball, and every entry commits
up to 100 of them so anyone can re-check them exactly. Rows are ranked by robust accuracy at the headline
radius, then by clean accuracy; entries that failed verification are listed last, unranked.
Accuracies are percentages of the evaluated examples; clean errors count as broken at radius 0.

Generated by `wattack-leaderboard render` from `entries/` (do not edit by hand). Add a run with
`wattack-leaderboard add <results.json> ...`, re-check one with
`wattack-leaderboard verify <entry.json> --checkpoint <file>`.
"""


def _render_markdown(tables: list[_Table]) -> str:
    out = [_MD_INTRO]
    if not tables:
        out.append("\nNo entries yet.\n")
    for t in tables:
        th = t.entries[0].data["threat"]
        out.append(f"\n## {_md(t.dataset)} · {_md(t.threat)}\n")
        out.append(f"\nThreat model: {_md(_threat_line(th))}. Ranked at radius {t.headline}.\n")
        head = ["Rank", "Model", "Architecture", "Training", "Clean"] + [
            f"**{r}**" if r == t.headline else r for r in t.radii] + ["Suite", "n", "Status"]
        out.append("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
        rank = 0
        for e in t.entries:
            d, cl = e.data, e.data["claimed"]
            rank_s = "–" if e.status == "failed" else str(rank := rank + 1)
            cells = [rank_s, f"[{_md(d['name'])}]({_md_url(d['source'])})", _md(d["architecture"]),
                     _md(d["training"]), _pct(cl["clean_accuracy"])]
            cells += [_pct(cl["robust_accuracy"].get(r)) for r in t.radii]
            cells += [_md(f"{d['suite']['name']} v{d['suite']['version']}"), str(cl["n_examples"]),
                      _md(_status(e))]
            out.append("| " + " | ".join(cells) + " |\n")
    return "".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; padding: 0 1rem; }
table.leaderboard { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
table.leaderboard th, table.leaderboard td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; }
table.leaderboard td, table.leaderboard th { text-align: right; }
table.leaderboard td.text, table.leaderboard th.text { text-align: left; }
table.leaderboard th button { font: inherit; font-weight: bold; background: none; border: none; padding: 0; }
table.leaderboard th button { cursor: pointer; }
table.leaderboard th[aria-sort="ascending"] button::after { content: " \\25B2"; }
table.leaderboard th[aria-sort="descending"] button::after { content: " \\25BC"; }
th.headline { background: #eef3fb; }
.status-verified { color: #11641f; font-weight: bold; }
.status-examples-verified { color: #11641f; }
.status-failed { color: #a40000; font-weight: bold; }
.status-claimed { color: #666; font-style: italic; }
tr.failed td { color: #999; }
figure { margin: 1rem 0; }
figcaption, p.threat { color: #555; font-size: 0.9rem; }
""".strip()

_JS = """
(function () {
  "use strict";
  function cellValue(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent;
    if (!numeric) { return raw.toLowerCase(); }
    var v = parseFloat(raw);
    return isNaN(v) ? null : v;
  }
  function sortTable(table, col, th) {
    var numeric = th.getAttribute("data-type") === "number";
    var now = th.getAttribute("aria-sort");
    var dir = now === "descending" ? "ascending" : now === "ascending" ? "descending" :
      (numeric && th.getAttribute("data-first") !== "ascending" ? "descending" : "ascending");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, col, numeric), y = cellValue(b, col, numeric);
      if (x !== y) {
        if (x === null) { return 1; }
        if (y === null) { return -1; }
        return x < y ? -sign : sign;
      }
      return Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order"));
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.leaderboard"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.querySelector("button").addEventListener("click", function () { sortTable(table, col, th); });
    });
  });
})();
""".strip()


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _svg(t: _Table) -> str:
    """Accuracy-vs-radius curves of one table, log radius axis, as inline SVG (escaped text only)."""
    w, h, left, right, top, bottom = 680, 300, 50, 210, 15, 40
    pts = [r for e in t.entries for r in e.data["claimed"]["curve"]["radius"] if r > 0]
    if not pts:
        return ""
    lo, hi = math.log10(min(pts)), math.log10(max(pts))
    hi = hi if hi > lo else lo + 1

    def px(r: float) -> float:
        return left + (math.log10(r) - lo) / (hi - lo) * (w - left - right)

    def py(a: float) -> float:
        return top + (1 - a) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           'role="img" aria-label="robust accuracy against radius">',
           f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
           'fill="none" stroke="#999"/>']
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{py(a):.1f}" y2="{py(a):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 5}" y="{py(a) + 4:.1f}" font-size="11" text-anchor="end">'
                   f'{100 * a:.0f}%</text>')
    for r in t.radii:
        if float(r) > 0:
            x = px(float(r))
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{h - bottom}" stroke="#eee"/>'
                       f'<text x="{x:.1f}" y="{h - bottom + 15}" font-size="11" text-anchor="middle">'
                       f'{_e(r)}</text>')
    out.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 5}" font-size="12" text-anchor="middle">'
               f'radius eps (log scale)</text>')
    for i, e in enumerate(t.entries):
        color = _PALETTE[i % len(_PALETTE)]
        c = e.data["claimed"]["curve"]
        line = " ".join(f"{px(r):.1f},{py(a):.1f}"
                        for r, a in zip(c["radius"], c["accuracy"], strict=True) if r > 0)
        dash = ' stroke-dasharray="4 3"' if e.status in ("claimed", "failed") else ""
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{line}">'
                   f'<title>{_e(e.data["name"])}</title></polyline>')
        y = top + 14 * i + 8
        out.append(f'<line x1="{w - right + 10}" x2="{w - right + 30}" y1="{y}" y2="{y}" stroke="{color}" '
                   f'stroke-width="2"{dash}/><text x="{w - right + 35}" y="{y + 4}" font-size="11">'
                   f'{_e(e.data["name"][:30])}</text>')
    out.append("</svg>")
    return "".join(out)


def _render_html(tables: list[_Table]) -> str:
    csp = (f"default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    out = ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
           f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n',
           '<meta name="referrer" content="no-referrer">\n',
           '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
           "<title>Wasserstein robustness leaderboard</title>\n",
           f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>Wasserstein robustness leaderboard</h1>\n",
           "<p>Robust accuracy under one exactly defined Wasserstein threat model: every adversarial "
           "example counted was verified inside the ball. Ranked by robust accuracy at the headline radius, "
           "then clean accuracy; entries that failed verification are listed last, unranked. Click a column "
           "header to sort. Status shows whether the claimed numbers were re-checked by "
           "<code>wattack-leaderboard verify</code>.</p>\n"]
    if not tables:
        out.append('<p id="empty">No entries yet.</p>\n')
    for t in tables:
        sid = _e(f"{t.dataset}-{t.threat}")
        th = t.entries[0].data["threat"]
        out.append(f'<section id="{sid}">\n<h2>{_e(t.dataset)} · {_e(t.threat)}</h2>\n')
        out.append(f'<p class="threat">Threat model: {_e(_threat_line(th))}. '
                   f'Ranked at radius {_e(t.headline)}.</p>\n')
        cols = [("Rank", "number", "ascending", "rank", "rank"), ("Model", "text", "", "model", "model"),
                ("Architecture", "text", "", "architecture", "architecture"),
                ("Training", "text", "", "training", "training method"),
                ("Clean", "number", "", "clean", "clean accuracy")]
        cols += [(r, "number", "", f"r{r}", f"robust accuracy at radius {r}") for r in t.radii]
        cols += [("Suite", "text", "", "suite", "attack suite and version"),
                 ("n", "number", "", "n", "examples"),
                 ("Status", "text", "", "status", "verification status")]
        out.append(f'<table class="leaderboard" id="table-{sid}">\n<thead><tr>')
        for label, kind, first, key, title in cols:
            cls = ["text"] if kind == "text" else []
            if key == f"r{t.headline}":
                cls.append("headline")
            attrs = f' data-type="{kind}" data-key="{_e(key)}"' + (f' data-first="{first}"' if first else "")
            attrs += f' class="{" ".join(cls)}"' if cls else ""
            out.append(f'<th scope="col"{attrs}><button type="button" title="{_e(title)}">'
                       f'{_e(label)}</button></th>')
        out.append("</tr></thead>\n<tbody>\n")
        rank = 0
        for order, e in enumerate(t.entries, start=1):
            d, cl = e.data, e.data["claimed"]
            failed = e.status == "failed"
            rank_s = "–" if failed else str(rank := rank + 1)
            tr_class = ' class="failed"' if failed else ""
            row = [f'<tr data-id="{_e(d["id"])}" data-order="{order}"{tr_class}>',
                   f'<td data-value="{order}">{rank_s}</td>',
                   f'<td class="text" data-value="{_e(d["name"])}"><a href="{_e(d["source"])}" '
                   f'rel="noopener noreferrer nofollow" title="{_e(d.get("paper") or d["source"])}">'
                   f'{_e(d["name"])}</a><br><small>{_e(d["authors"])}</small>'
                   + (f'<br><small>{_e(d["note"])}</small>' if d.get("note") else "") + "</td>",
                   f'<td class="text">{_e(d["architecture"])}</td>',
                   f'<td class="text">{_e(d["training"])}</td>',
                   f'<td data-value="{cl["clean_accuracy"]!r}">{_pct(cl["clean_accuracy"])}</td>']
            for r in t.radii:
                a = cl["robust_accuracy"].get(r)
                row.append(f'<td data-value="{"" if a is None else repr(a)}">{_pct(a)}</td>')
            row += [f'<td class="text">{_e(d["suite"]["name"])} v{d["suite"]["version"]}</td>',
                    f'<td data-value="{cl["n_examples"]}">{cl["n_examples"]}</td>',
                    f'<td class="text status-{_e(e.status)}">{_e(_status(e))}</td></tr>\n']
            out.append("".join(row))
        out.append("</tbody>\n</table>\n")
        svg = _svg(t)
        if svg:
            out.append(f"<figure>{svg}<figcaption>Robust accuracy against radius (claimed numbers; dashed: "
                       "not verified).</figcaption></figure>\n")
        out.append("</section>\n")
    out.append(f"<script>{_JS}</script>\n</body>\n</html>\n")
    return "".join(out)


def render(root: Path) -> tuple[str, str]:
    """Render ``(README.md, index.html)`` text from the entries under ``root``; deterministic.

    Raises :class:`EntryError` if any entry does not validate (nothing invalid is ever rendered).
    """
    bad = validate_all(root)
    if bad:
        raise EntryError(f"{root}: cannot render", [f"{p}: {'; '.join(v)}" for p, v in sorted(bad.items())])
    tables = _tables([load_entry(p) for p in _entry_paths(root)])
    return _render_markdown(tables), _render_html(tables)


def write_rendered(root: Path) -> tuple[Path, Path]:
    """Write ``root/README.md`` and ``root/index.html`` atomically; returns their paths."""
    root = Path(root)
    md, page = render(root)
    _write_atomic(root / "README.md", md.encode("utf-8"))
    _write_atomic(root / "index.html", page.encode("utf-8"))
    return root / "README.md", root / "index.html"


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wattack-leaderboard`` (``validate``, ``add``, ``verify``, ``render``); returns the exit code."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, default=Path("leaderboard"),
                        help="leaderboard folder (default: ./leaderboard)")
    parser = argparse.ArgumentParser(prog=_TOOL, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", parents=[common], help="validate every entry (schema, limits, npz, numbers)")
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
    v = sub.add_parser("verify", help="re-check an entry and record the result in it")
    v.add_argument("entry", type=Path, help="entry JSON")
    v.add_argument("--checkpoint", type=Path, help="the model's checkpoint (without: examples only)")
    v.add_argument("--n", type=int, default=500, help="examples to re-attack (random subset, default 500)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random subset")
    v.add_argument("--z", type=float, default=3.0, help="tolerance in binomial standard errors (default 3)")
    v.add_argument("--slack", type=float, default=0.01, help="absolute slack added to the tolerance")
    v.add_argument("--by", help="who runs the verification (recorded)")
    v.add_argument("--device", default="cpu")
    v.add_argument("--dry-run", action="store_true", help="print the block, do not write it")
    sub.add_parser("render", parents=[common], help="write README.md and index.html from the entries")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            paths = _entry_paths(args.root)
            bad = validate_all(args.root)
            for p, problems in sorted(bad.items()):
                print(f"INVALID {p}", *(f"  - {x}" for x in problems), sep="\n")
            print(f"{len(paths) - sum(p in bad for p in paths)}/{len(paths)} entries valid"
                  + (f", {len(bad)} problem file(s)" if bad else ""))
            return 1 if bad else 0
        if args.command == "add":
            target = add_entry(args.results, root=args.root, entry_id=args.entry_id, name=args.name,
                               authors=args.authors, source=args.source, training=args.training,
                               architecture=args.architecture, paper=args.paper, note=args.note,
                               headline_radius=args.headline_radius, examples_path=args.examples,
                               selection_seed=args.selection_seed, overwrite=args.force)
            print(f"wrote {target} and {target.with_suffix('.npz').name}; `{_TOOL} render` updates the pages")
            return 0
        if args.command == "verify":
            block = verify_entry(args.entry, args.checkpoint, n=args.n, seed=args.seed, z=args.z,
                                 slack=args.slack, by=args.by, device=args.device, write=not args.dry_run,
                                 progress=True)
            for name, c in block["checks"].items():
                print(f"{'ok  ' if c['passed'] else 'FAIL'} {name}: {c['detail']}")
            for c in (block["reproduction"] or {}).get("comparisons", []):
                print(f"{'ok  ' if c['passed'] else 'FAIL'} {c['radius']}: claimed {c['claimed']:.4f}, "
                      f"reproduced {c['reproduced']:.4f} (tolerance {c['tolerance']:.4f})")
            print(f"status: {block['status']}" + ("" if args.dry_run else f" (written to {args.entry})"))
            return 0 if block["status"] != "failed" else 1
        md, page = write_rendered(args.root)
        print(f"wrote {md} and {page}")
        return 0
    except (EntryError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
