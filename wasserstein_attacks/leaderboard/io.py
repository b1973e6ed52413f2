"""Reading and writing entries: strict JSON, pickle-free npz, and the ``entries/`` folder as a whole.

Loading an entry validates all of it: the JSON, the npz, the claims against the per-example arrays,
and every committed adversarial example by the exact LP (``.committed``).

Everything read here is untrusted: JSON without NaN, infinities or duplicate keys and under a size
limit; npz members checked against ``NPZ_SPEC`` before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from .._util import atomic_write, sha256_file
from .committed import claims_problems, exact_distances, example_problems
from .schema import (
    MAX_ENTRY_BYTES,
    MAX_NPZ_BYTES,
    MAX_NPZ_UNCOMPRESSED,
    NPZ_SPEC,
    EntryError,
    array_problems,
    binding_problems,
    entry_problems,
)

__all__ = [
    "Entry",
    "read_json",
    "json_bytes",
    "npz_bytes",
    "read_npz",
    "read_entry_npz",
    "committed_problems",
    "load_arrays",
    "load_entry_json",
    "load_entry",
    "entry_paths",
    "validate_all",
]


@dataclasses.dataclass(frozen=True)
class Entry:
    """A validated entry: its JSON ``data`` and npz ``arrays`` (see the package docstring)."""

    path: Path
    data: dict
    arrays: dict

    @property
    def status(self) -> str:
        """Return the shown status: the record's, ``"claimed"`` (none) or ``"unbound"``.

        ``"unbound"``: a record that does not bind to this entry (copied, or the entry changed since).
        """
        v = self.data["verification"]
        if not v:
            return "claimed"
        return "unbound" if binding_problems(self.data) else v["status"]


# ---------------------------------------------------------------------------------------------- JSON
def _reject_constant(token: str):
    raise ValueError(f"non-finite number {token} is not valid JSON here (numbers must be finite)")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def read_json(path: Path, max_bytes: int, what: str) -> tuple[object, bytes]:
    """Parse ``path`` as strict JSON (no NaN/inf, no duplicate keys), refusing files over ``max_bytes``.

    Returns ``(value, raw bytes)``. ``FileNotFoundError`` if ``path`` is not a file, ``EntryError``
    (naming ``what``) if it is too large or not JSON.
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


def json_bytes(data) -> bytes:
    """Return an entry's file content: UTF-8 JSON in insertion order, scalar arrays on one line."""
    return (_json_text(data) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------- npz
def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
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


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read an entry's npz without pickles, checking members, dtypes and sizes before allocating.

    ``np.load`` would allocate whatever shape a member's header claims; here an array must fit in
    the member's (bounded) uncompressed size. ``ValueError`` naming the member otherwise.
    """
    size = Path(path).stat().st_size
    if size > MAX_NPZ_BYTES:
        raise ValueError(f"npz is {size} bytes; the limit is {MAX_NPZ_BYTES}")
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        names = sorted(i.filename for i in infos)
        expected = sorted(f"{k}.npy" for k in NPZ_SPEC)
        if names != expected:
            raise ValueError(f"npz members must be exactly {expected}, got {names}")
        total = sum(i.file_size for i in infos)
        if total > MAX_NPZ_UNCOMPRESSED:
            raise ValueError(f"npz decompresses to {total} bytes; the limit is {MAX_NPZ_UNCOMPRESSED}")
        return {info.filename[:-4]: _read_member(zf, info) for info in infos}


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, its header checked against ``NPZ_SPEC`` and its size before reading."""
    key = info.filename[:-4]
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npz member {key}: unsupported .npy version {version}")
        kinds, ndim = NPZ_SPEC[key]
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
    return arr.astype(dtype.newbyteorder("="), copy=True)


# ---------------------------------------------------------------------------------------------- entries
def read_entry_npz(path: Path, data: dict) -> tuple[dict | None, list[str]]:
    """Read the npz of the entry at ``path`` (its JSON ``data`` already valid): ``(arrays, [])``.

    ``(None, [problem])`` when the npz is missing, differs from ``examples.sha256`` or is unreadable.
    """
    npz = Path(path).parent / data["examples"]["file"]
    if not npz.is_file():
        return None, [f"{npz.name} (the entry's npz) is missing"]
    if sha256_file(npz) != data["examples"]["sha256"]:
        return None, [f"{npz.name}: sha256 differs from examples.sha256 (changed after the entry was made)"]
    try:
        return read_npz(npz), []
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        return None, [f"{npz.name}: {e}"]


def committed_problems(data: dict, arrays: dict) -> list[str]:
    """Re-check every committed adversarial example by the exact LP, then the claims against them.

    ``arrays`` must already pass ``array_problems`` (shapes and clean images checked). See ``.committed``.
    """
    if not data["examples"]["index"]:
        return []
    dist, in_box = exact_distances(data, arrays)
    return example_problems(data, dist, in_box) + claims_problems(data, dist)


def load_arrays(path: Path, data: dict) -> tuple[dict | None, list[str]]:
    """Read the npz of the entry at ``path`` (its JSON ``data`` already valid); return it and its problems.

    ``(None, problems)`` when the npz is missing, differs from ``examples.sha256`` or is unreadable;
    otherwise ``(arrays, problems)``: the claimed numbers against the per-example arrays and, when those
    agree, every committed adversarial example re-checked exactly (``committed_problems``).
    """
    arrays, problems = read_entry_npz(path, data)
    if arrays is None:
        return None, problems
    problems = array_problems(data, arrays)
    return arrays, problems or committed_problems(data, arrays)


def load_entry_json(path: Path) -> dict:
    """Read an entry's JSON and validate it alone (not its npz); ``EntryError`` lists every problem."""
    data, _ = read_json(path, MAX_ENTRY_BYTES, "entry")
    problems = entry_problems(data, path)
    if problems:
        raise EntryError(str(path), problems)
    return data


def load_entry(path: Path) -> Entry:
    """Read and fully validate an entry (JSON + npz); raise ``EntryError`` listing every problem."""
    path = Path(path)
    data = load_entry_json(path)
    arrays, problems = load_arrays(path, data)
    if problems:
        raise EntryError(str(path), problems)
    return Entry(path, data, arrays)


def checkpoint_problems(data: dict, path: Path) -> list[str]:
    """Why a checkpoint committed beside the entry (``<id>.pt``) is not the one it claims (empty: fine).

    It must be the file the entry names (``model.checkpoint_sha256``) or, without one, the file its
    verification ran; otherwise a reader re-verifying with it would check other weights.
    """
    pt = Path(path).with_suffix(".pt")
    if not pt.is_file():
        return []
    record = data.get("verification") or {}
    want = data["model"]["checkpoint_sha256"] or (record.get("binding") or {}).get("checkpoint_sha256")
    if want is None:
        return [f"{pt.name}: a committed checkpoint needs model.checkpoint_sha256 or a verification record"]
    got = sha256_file(pt)
    return [] if got == want else [f"{pt.name}: sha256 {got} is not the verified checkpoint's {want}"]


def entry_paths(root: Path) -> list[Path]:
    """List the entry JSON files ``root/entries/<dataset>/<threat-id>/<id>.json``, sorted."""
    return sorted((Path(root) / "entries").glob("*/*/*.json"))


def validate_all(root: Path, *, binding: bool = True) -> dict[Path, list[str]]:
    """Validate every entry under ``root/entries``; returns ``{path: problems}`` for the invalid ones.

    Also reports files that are not part of an entry (an npz without its JSON, files at other depths),
    a committed checkpoint ``<id>.pt`` that is not the one the entry's verification ran, and, with
    ``binding``, verification records that do not bind to their entry (``render`` shows those
    as not verified instead). An empty ``{}`` also for a ``root`` without entries: callers that need
    some check ``entry_paths``.
    """
    root = Path(root)
    bad: dict[Path, list[str]] = {}
    paths = entry_paths(root)
    for p in paths:
        try:
            entry = load_entry(p)
        except (EntryError, FileNotFoundError) as e:
            bad[p] = getattr(e, "problems", [str(e)])
            continue
        if binding and binding_problems(entry.data):
            bad[p] = binding_problems(entry.data)
        if checkpoint_problems(entry.data, p):
            bad.setdefault(p, []).extend(checkpoint_problems(entry.data, p))
    # An entry may commit its weights beside it (<id>.pt), so that anyone can re-run verify.
    known = set(paths) | {p.with_suffix(s) for p in paths for s in (".npz", ".pt")}
    entries = root / "entries"
    if entries.is_dir():
        for f in sorted(entries.rglob("*")):
            if f.is_file() and f not in known and f.name != ".gitkeep":
                bad[f] = ["not part of an entry: expected entries/<dataset>/<threat-id>/<id>.json and .npz"]
    return bad


def write_verified(path: Path, data: dict, record: dict, problems_of) -> None:
    """Write ``data`` with ``verification = record`` to ``path`` atomically, if ``problems_of`` accepts it.

    ``problems_of(updated, path)`` is the entry kind's validator; ``EntryError`` lists what it refuses.
    """
    updated = dict(data, verification=record)
    problems = problems_of(updated, path)
    if problems:
        raise EntryError(f"verification record for {path}", problems)
    atomic_write(path, json_bytes(updated))
