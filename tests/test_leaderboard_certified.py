"""Certified leaderboard entries: randomized smoothing in flow space, certified by CERTIFY.

Every entry here comes from a real (tiny) certification run: the registry's ``tiny`` convnet on 1x8x8
synthetic images, ``SmoothedClassifier.certify`` with n0 = 10, n = 200, written as ``wattack-certify``
writes its run folder (``certification_results`` + ``save_checkpoint``).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import _leaderboard_fixtures as F
import pytest
import torch

from wasserstein_attacks import leaderboard as lb
from wasserstein_attacks._util import sha256_file, weights_sha256, write_json
from wasserstein_attacks.defenses import smoothing as sm
from wasserstein_attacks.leaderboard import certified as C
from wasserstein_attacks.leaderboard import certified_verify as CV
from wasserstein_attacks.leaderboard.io import json_bytes
from wasserstein_attacks.models import build_model, save_checkpoint

N = 24
RADII = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
N0, NDRAWS, ALPHA = 10, 200, 0.001


def data(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic 1x8x8 images and labels: the untrained tiny net says 6; every 4th label (3) is an error."""
    x, _ = F.synthetic_data(n)
    y = torch.full((n,), 6, dtype=torch.long)
    y[::4] = 3
    return x, y


def loader(name: str, split: str):
    assert (name, split) == ("synthetic", "test")
    return data()


def certify_run(folder: Path, *, sigma: float = 0.1, relative: bool = True, seed: int = 0,
                model_seed: int = 0, train: bool = True, p: int = 1) -> Path:
    """A miniature ``wattack-certify`` run: results.json (+ base_model.pt when ``train``)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model("tiny", seed=model_seed).eval()
    x, y = data()
    noise = sm.make_noise("laplace", sigma=sigma, relative=relative)
    index = torch.arange(N)
    res = sm.SmoothedClassifier(model, noise, num_classes=10).certify(x, n0=N0, n=NDRAWS, alpha=ALPHA,
                                                                      seed=seed, indices=index)
    results = sm.certification_results(
        res, y, radii=RADII, noise=noise, n0=N0, n=NDRAWS, alpha=ALPHA, seed=seed, indices=index,
        extra={"dataset": {"name": "synthetic", "split": "test", "n": N},
               "model": {"name": "tiny", "checkpoint": "base_model.pt" if train else None,
                         "checkpoint_sha256": None, "weights_sha256": weights_sha256(model)},
               "base_training": {"method": "noise", "epochs": 1, "epoch_loss": [1.5]} if train else None,
               "device": "cpu"})
    results["p"] = p
    write_json(folder / "results.json", results)
    if train:
        save_checkpoint(model, folder / "base_model.pt", meta={"noise": noise.describe()})
    return folder


def add(run: Path, root: Path, entry_id: str, **kw) -> Path:
    kw = {"authors": "A. Author", "source": "https://example.org/c", "architecture": "tiny",
          "added": "2001-02-03T04:05:06Z", **kw}
    return lb.add_certified(run, entry_id, root=root, **kw)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def write(path: Path, d: dict) -> None:
    path.write_bytes(json_bytes(d))


def copy_entry(entry: Path, root: Path) -> Path:
    """Copy an entry and its checkpoint to the same place under another root."""
    target = root / entry.relative_to(entry.parents[3])
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(entry, target)
    shutil.copy(entry.with_suffix(".pt"), target.with_suffix(".pt"))
    return target


def recompute_claims(d: dict) -> dict:
    """A forger's consistent edit: p_lower, radii and claims recomputed from the (edited) counts."""
    got = C.recompute(d)
    d["examples"]["p_lower"] = got["p_lower"].tolist()
    d["examples"]["radius"] = got["radius"].tolist()
    nums = C.certified_numbers(d["examples"]["label"], got["prediction"], got["radius"],
                               d["claimed"]["certified_accuracy"])
    d["claimed"].update(nums)
    return d


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("certified")
    run = certify_run(tmp / "run")
    return {"tmp": tmp, "run": run, "entry": add(run, tmp / "root", "Smooth", name="Smoothed tiny")}


# ------------------------------------------------------------------------------------------------- add
def test_add_makes_a_valid_entry_from_a_run(honest):
    entry, results = honest["entry"], read(honest["run"] / "results.json")
    assert entry == honest["tmp"] / "root" / "certified" / "synthetic" / "W1" / "Smooth.json"
    assert lb.validate_certified(entry) == [] and lb.validate_certified_all(entry.parents[3]) == {}
    d = lb.load_certified(entry).data
    assert d["claimed"]["certified_accuracy"] == results["certified_accuracy"]
    assert d["claimed"]["smoothed_accuracy"] == results["smoothed_accuracy"]
    assert d["examples"]["count"] == results["examples"]["count"] and d["method"] == "noise"
    assert d["certification"] == {"n0": N0, "n": NDRAWS, "alpha": ALPHA, "seed": 0, "p": 1,
                                  "dataset": {"name": "synthetic", "split": "test", "n": N}}
    assert d["verification"] is None and lb.load_certified(entry).status == "claimed"
    # The construction's premise: a mix of certified, wrong and abstaining examples, radii that differ.
    acc = d["claimed"]["certified_accuracy"]
    assert 0 < acc["0.01"] < d["claimed"]["smoothed_accuracy"] < 1 and d["claimed"]["abstention_rate"] > 0
    assert len(set(d["examples"]["radius"])) > 5
    # The weights are a plain state dict, the run's model.
    state = torch.load(entry.with_suffix(".pt"), weights_only=True)
    assert list(state) == list(build_model("tiny").state_dict())
    assert lb.main(["validate", "--root", str(entry.parents[3])]) == 0


def test_add_refuses_runs_that_cannot_make_an_entry(tmp_path, honest):
    root = tmp_path / "root"
    bad_p = certify_run(tmp_path / "p2", p=2)
    with pytest.raises(ValueError, match="p must be 1"):
        add(bad_p, root, "P2")
    # Claimed certified accuracy that the per-example data does not give.
    run = tmp_path / "edited"
    shutil.copytree(honest["run"], run)
    results = read(run / "results.json")
    results["certified_accuracy"]["0.02"] += 1 / N
    write_json(run / "results.json", results)
    with pytest.raises(lb.EntryError, match=r"claimed.certified_accuracy\[0.02\]"):
        add(run, root, "Edited")
    # Radii that are not the keys of the accuracy table.
    results["certified_accuracy"].pop("0.02")
    write_json(run / "results.json", results)
    with pytest.raises(ValueError, match="are not the keys of certified_accuracy"):
        add(run, root, "Edited")
    # A run that did not train needs the weights it certified, and only those.
    untrained = certify_run(tmp_path / "untrained", train=False)
    with pytest.raises(FileNotFoundError, match="needs checkpoint"):
        add(untrained, root, "Untrained", method="noise")
    other = tmp_path / "other.pt"
    torch.save(build_model("tiny", seed=5).state_dict(), other)
    with pytest.raises(ValueError, match="is not the certified model's"):
        add(untrained, root, "Untrained", method="noise", checkpoint=other)
    with pytest.raises(ValueError, match="method must be given"):
        add(untrained, root, "Untrained", checkpoint=honest["run"] / "base_model.pt")
    assert not root.exists()  # nothing written by any refusal
    entry = add(untrained, root, "Untrained", method="smoothadv", checkpoint=honest["run"] / "base_model.pt")
    assert read(entry)["method"] == "smoothadv" and lb.validate_certified(entry) == []


def test_add_copies_the_empirical_block_type_checked_only(tmp_path, honest):
    run = tmp_path / "run"
    shutil.copytree(honest["run"], run)
    results = read(run / "results.json")
    empirical = {"robust_accuracy": {"0.01": 0.5, "0.1": 0.25}, "clean_accuracy": 0.75,
                 "broken_at": [None, 0.1, 0.01, None], "n_examples": 4, "seconds": 1.5,
                 "settings": {"attack": "pgd_box", "loss": None, "m": 16}}
    results["empirical"] = empirical
    write_json(run / "results.json", results)
    entry = add(run, tmp_path / "root", "Emp")
    assert read(entry)["empirical"] == empirical and lb.validate_certified(entry) == []
    results["empirical"] = {"settings": {"nested": {"too": "deep"}}}
    write_json(run / "results.json", results)
    with pytest.raises(lb.EntryError, match="certified schema: at /empirical/settings"):
        add(run, tmp_path / "root2", "Emp")


# -------------------------------------------------------------------------------------------- validate
def _edit_count(d):
    i = d["examples"]["p_lower"].index(max(d["examples"]["p_lower"]))
    d["examples"]["count"][i] -= 1


def _edit_radius(d):
    i = d["examples"]["radius"].index(max(d["examples"]["radius"]))
    d["examples"]["radius"][i] *= 1.001


def _edit_claim(d):
    d["claimed"]["certified_accuracy"]["0.01"] += 1 / N


def _edit_smoothed(d):
    d["claimed"]["smoothed_accuracy"] = 1.0


def _edit_p_lower(d):
    d["examples"]["p_lower"][0] += 1e-6


def _edit_length(d):
    d["claimed"]["n_examples"] = N + 1


@pytest.mark.parametrize("edit, message", [
    (_edit_count, "examples.p_lower is not clopper_pearson_lower"),
    (_edit_radius, "examples.radius is not the radius the noise certifies"),
    (_edit_claim, r"claimed.certified_accuracy\[0.01\]"),
    (_edit_smoothed, "claimed.smoothed_accuracy"),
    (_edit_p_lower, "examples.p_lower"),
    (_edit_length, "every column must hold claimed.n_examples"),
])
def test_validate_recomputes_every_claim_from_the_counts(tmp_path, honest, edit, message):
    entry = copy_entry(honest["entry"], tmp_path)
    d = read(entry)
    edit(d)
    write(entry, d)
    problems = lb.validate_certified(entry)
    assert any(re.search(message, p) for p in problems), problems
    with pytest.raises(lb.EntryError):
        lb.load_certified(entry)


def test_validate_checks_the_committed_weights(tmp_path, honest):
    entry = copy_entry(honest["entry"], tmp_path)
    torch.save(build_model("tiny", seed=7).state_dict(), entry.with_suffix(".pt"))
    assert any("differs from model.checkpoint_sha256" in p for p in lb.validate_certified(entry))
    # Hashes updated to the new file: the weights hash still says it is not the certified model.
    d = read(entry)
    d["model"]["checkpoint_sha256"] = sha256_file(entry.with_suffix(".pt"))
    write(entry, d)
    assert any("differs from model.weights_sha256" in p for p in lb.validate_certified(entry))
    entry.with_suffix(".pt").unlink()
    assert any("is missing" in p for p in lb.validate_certified(entry))
    (entry.parent / "stray.txt").write_text("x")
    stray = lb.validate_certified_all(tmp_path)[entry.parent / "stray.txt"]
    assert "not part of a certified entry" in stray[0]


def test_validate_checks_the_entry_sits_in_its_folder(tmp_path, honest):
    d = read(honest["entry"])
    wrong = tmp_path / "certified" / "mnist" / "W1" / "Smooth.json"
    assert any("must be at certified/synthetic/W1/Smooth.json" in p for p in C.certified_problems(d, wrong))
    assert C.certified_problems(d, honest["entry"]) == []


# ---------------------------------------------------------------------------------------------- verify
def test_verify_reproduces_the_counts_and_binds(tmp_path, honest):
    entry = copy_entry(honest["entry"], tmp_path / "a")
    record = lb.verify_certified(entry, data_loader=loader, now="2002-01-01T00:00:00Z")
    assert record["status"] == "verified", record["checks"]
    assert record["max_count_delta"] == 0 and record["examples_checked"] == N
    assert record["binding"]["checkpoint_sha256"] == read(entry)["model"]["checkpoint_sha256"]
    assert read(entry)["verification"] == record and lb.load_certified(entry).status == "verified"
    assert lb.validate_certified(entry) == []
    # The claimed numbers are untouched.
    before = read(honest["entry"])
    assert {k: v for k, v in read(entry).items() if k != "verification"} == \
        {k: v for k, v in before.items() if k != "verification"}
    # A model handed in must be the entry's.
    bad = lb.verify_certified(entry, 3, model=build_model("tiny", seed=9), data_loader=loader, write=False)
    assert bad["status"] == "failed" and not bad["checks"]["checkpoint"]["passed"]


def test_verify_first_examples_only_says_so(tmp_path, honest):
    entry = copy_entry(honest["entry"], tmp_path)
    record = lb.verify_certified(entry, 5, data_loader=loader, now="2002-01-01T00:00:00Z")
    assert record["status"] == "verified" and record["examples_checked"] == 5
    md, page = lb.render(tmp_path)
    assert "verified on the first 5 of 24 examples (2002-01-01)" in md
    assert 'class="text status-verified"' in page


def test_verify_fails_a_consistently_forged_count(tmp_path, honest):
    """Counts raised (everything else recomputed to match) validate; CERTIFY does not reproduce them."""
    entry = copy_entry(honest["entry"], tmp_path)
    d = read(entry)
    certified = [i for i, p in enumerate(d["examples"]["p_lower"]) if 0.5 < p < 0.9]
    assert certified  # the construction's premise
    for i in certified:
        d["examples"]["count"][i] += 10  # beyond the tolerance floor(0.001 * 200) = 0
    write(entry, recompute_claims(d))
    assert lb.validate_certified(entry) == []
    record = lb.verify_certified(entry, data_loader=loader)
    assert record["status"] == "failed" and record["max_count_delta"] == 10
    assert not record["checks"]["counts"]["passed"]
    assert lb.load_certified(entry).status == "failed"
    # Edited without recomputing: invalid, so verify refuses to run at all.
    d["examples"]["count"][certified[0]] += 1
    write(entry, d)
    with pytest.raises(lb.EntryError, match="clopper_pearson_lower"):
        lb.verify_certified(entry, data_loader=loader)


def test_verify_tolerance_and_the_accuracy_check(tmp_path, honest, monkeypatch):
    """Counts lowered within the tolerance pass; counts raised within it must not raise certified accuracy."""
    monkeypatch.setattr(CV, "COUNT_TOLERANCE", 0.05)  # 10 of n = 200
    entry = copy_entry(honest["entry"], tmp_path)
    d = read(entry)
    d["examples"]["count"] = [max(0, k - 3) for k in d["examples"]["count"]]
    write(entry, recompute_claims(d))
    record = lb.verify_certified(entry, data_loader=loader, write=False)
    assert record["status"] == "verified" and record["count_tolerance"] == 10
    assert record["max_count_delta"] == 3
    d = read(honest["entry"])
    d["examples"]["count"] = [min(NDRAWS, k + 10) for k in d["examples"]["count"]]
    write(entry, recompute_claims(d))
    record = lb.verify_certified(entry, data_loader=loader, write=False)
    assert record["checks"]["counts"]["passed"] and not record["checks"]["certified_accuracy"]["passed"]
    assert record["status"] == "failed"


def test_pixel_unit_noise_records_masses(tmp_path):
    run = certify_run(tmp_path / "run", sigma=0.3, relative=False)
    entry = add(run, tmp_path / "root", "Pixel")
    d = read(entry)
    assert "mass" in d["examples"] and lb.validate_certified(entry) == []
    assert lb.verify_certified(entry, 6, data_loader=loader, write=False)["status"] == "verified"
    i = next(j for j, m in enumerate(d["examples"]["mass"]) if m is not None)
    d["examples"]["mass"][i] *= 0.5  # a smaller mass would inflate the radius in eps
    write(entry, d)
    assert any("examples.radius" in p for p in lb.validate_certified(entry))


# ------------------------------------------------------------------------------------- binding, render
def test_a_copied_record_does_not_bind(tmp_path, honest):
    a = copy_entry(honest["entry"], tmp_path / "a")
    record = lb.verify_certified(a, data_loader=loader, now="2002-01-01T00:00:00Z")
    root = tmp_path / "b"
    other = add(certify_run(tmp_path / "run", seed=1), root, "Other")
    d = read(other)
    d["verification"] = copy.deepcopy(record)
    write(other, d)
    assert C.certified_problems(d, other) == []  # a well-formed record ...
    assert any("does not bind" in p for p in lb.validate_certified(other))  # ... that is not this entry's
    assert lb.load_certified(other).status == "unbound"
    md, page = lb.render(root)
    assert "verification does not match the entry" in md and "| verified" not in md
    assert 'class="text status-verified"' not in page and 'class="text status-unbound"' in page
    # The verified entry edited afterwards (its note): unbound as well.
    d = read(a)
    d["note"] = "edited after verification"
    write(a, d)
    assert lb.load_certified(a).status == "unbound"


def test_a_record_must_follow_from_its_checks(tmp_path, honest):
    entry = copy_entry(honest["entry"], tmp_path)
    record = lb.verify_certified(entry, 3, data_loader=loader, write=False)
    record["checks"]["counts"]["passed"] = False
    d = dict(read(entry), verification=record)
    assert any("status is 'verified' but checks" in p for p in C.certified_problems(d, entry))


def _mixed_board(tmp_path: Path, honest, names: dict[str, str]) -> Path:
    root = tmp_path / "root"
    copy_entry(honest["entry"], root)
    add(certify_run(tmp_path / "run1", sigma=0.05), root, "Narrow", name=names.get("Narrow", "Narrow"))
    add(certify_run(tmp_path / "run2", sigma=0.2, model_seed=3), root, "Wide", name=names.get("Wide", "Wide"))
    lb.add_entry(F.synthetic_run(tmp_path / "emp", n=40), root=root, entry_id="Empirical", authors="A",
                 source="https://example.org", training="none", architecture="tiny-linear",
                 added="2001-01-01T00:00:00Z")
    return root


def test_render_keeps_the_tables_apart_ranked_and_escaped(tmp_path, honest):
    evil = "<script>alert(1)</script>"
    root = _mixed_board(tmp_path, honest, {"Wide": evil})
    md, page = lb.render(root)
    assert lb.render(root) == (md, page)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1 and "<script>" not in md
    certified_html = page.split('<section id="certified">')[1]
    empirical_html = page.split('<section id="certified">')[0]
    assert 'data-id="Empirical"' in empirical_html and 'data-id="Empirical"' not in certified_html
    for cid in ("Smooth", "Narrow", "Wide"):
        assert f'data-id="{cid}"' in certified_html and f'data-id="{cid}"' not in empirical_html
    # Ranked by certified accuracy at 0.1, then 0.05 (written out here, not taken from the renderer).
    entries = [read(p) for p in lb.certified_paths(root)]
    want = [d["id"] for d in sorted(entries, key=lambda d: (-d["claimed"]["certified_accuracy"]["0.1"],
                                                            -d["claimed"]["certified_accuracy"]["0.05"],
                                                            d["name"].casefold()))]
    shown = [part.split('"')[0] for part in certified_html.split('<tr data-id="')[1:]]
    assert shown == want
    section = md.split("## Certified (randomized smoothing in flow space)")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "Rank" not in line]
    assert len(rows) == 3 and "Empirical" not in section
    assert all("claimed (not verified)" in r for r in rows)


def test_no_certified_entries_is_one_line(tmp_path):
    root = tmp_path / "root"
    lb.add_entry(F.synthetic_run(tmp_path / "emp", n=40), root=root, entry_id="Empirical", authors="A",
                 source="https://example.org", training="none", architecture="tiny-linear")
    md, page = lb.render(root)
    assert md.count("No certified entries yet.") == 1 and page.count("No certified entries yet.") == 1
    assert 'id="table-certified"' not in page


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_add_certified_missing_run_dir_is_one_line(tmp_path, capsys):
    code = lb.main(["add-certified", str(tmp_path / "nope"), "--id", "X", "--name", "X", "--authors", "A",
                    "--source", "https://example.org", "--architecture", "tiny", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: run_dir ") and "nope" in err


def test_cli_round_trip(tmp_path, honest, monkeypatch, capsys):
    root = tmp_path / "root"
    args = ["add-certified", str(honest["run"]), "--id", "Cli", "--name", "CLI entry", "--authors", "A",
            "--source", "https://example.org", "--architecture", "tiny", "--root", str(root)]
    assert lb.main(args) == 0
    assert lb.main(args) == 1 and "exists" in capsys.readouterr().err
    assert lb.main(["validate", "--root", str(root)]) == 0
    monkeypatch.setattr(CV, "load_data", loader)  # the synthetic split as the run drew it
    assert lb.main(["verify", "--id", "Cli", "--root", str(root), "--examples", "4"]) == 0
    out = capsys.readouterr().out
    assert "re-certified 4 examples; max |count delta| 0" in out and "status: verified" in out
    assert lb.main(["verify", "--id", "Cli", "--root", str(root), "--checkpoint", "x.pt"]) == 1
    assert lb.main(["render", "--root", str(root)]) == 0
    assert "verified on the first 4 of 24 examples" in (root / "README.md").read_text()
    entry = root / "certified" / "synthetic" / "W1" / "Cli.json"
    d = read(entry)
    d["examples"]["count"] = [max(0, k - 5) for k in d["examples"]["count"]]
    write(entry, recompute_claims(d))
    assert lb.main(["verify", str(entry), "--examples", "4"]) == 1
    assert read(entry)["verification"]["max_count_delta"] == 5


def test_the_method_follows_the_run_s_training():
    from wasserstein_attacks.leaderboard.certified_add import _method

    assert _method(None, {"method": "noise", "epochs": 3}) == "noise"
    assert _method(None, {"method": "noise", "epochs": 3, "consistency": 10.0}) == "consistency"
    assert _method(None, {"method": "smoothadv", "epochs": 3, "consistency": 10.0}) == "smoothadv"
    assert _method(None, {"mass_prior": {"mode": "only"}, "epochs": 0}) == "none"  # nothing was trained
    assert _method("smoothadv", {"method": "noise", "epochs": 0}) == "smoothadv"  # said explicitly
    with pytest.raises(ValueError, match=r"^method must be given \('noise', 'consistency', 'smoothadv'"):
        _method(None, None)


def test_compare_certified_entries(honest, capsys):
    from wasserstein_attacks.leaderboard.compare import compare, load_side

    entry = honest["entry"]
    root = entry.parents[3]
    side = load_side("Smooth", root)
    assert side.kind == "certified" and load_side(str(entry), root).kind == "certified"
    got = compare(side, side)
    claimed = lb.load_certified(entry).data["claimed"]
    # Each row's accuracy is the claimed certified accuracy (correct, radius strictly above r).
    assert {r["radius"]: r["a"] for r in got["rows"][1:]} == claimed["certified_accuracy"]
    assert got["rows"][0]["a"] == claimed["smoothed_accuracy"]
    assert all(r["only_a"] == r["only_b"] == 0 and r["p"] == 1.0 for r in got["rows"])
    # A certificate and an attack answer different questions: refused, one line.
    import _leaderboard_fixtures as LF

    run = LF.synthetic_run(honest["tmp"] / "empirical", n=N)
    assert lb.main(["compare", "Smooth", str(run), "--root", str(root)]) == 1
    assert "threat models differ (W1, certified against W1-k3-box01" in capsys.readouterr().err
