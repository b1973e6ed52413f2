"""Rank ranges: paired exact tests decide which places of a leaderboard table the data supports."""

from __future__ import annotations

import math
import re

import _leaderboard_fixtures as F
import numpy as np
import pytest

from wasserstein_attacks import leaderboard as lb
from wasserstein_attacks.leaderboard.ranking import holm, mcnemar_p, range_text, rank_ranges


@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (5, 0), (3, 7), (10, 10), (29, 15), (34, 11), (400, 350)])
def test_mcnemar_is_twice_the_smaller_binomial_tail(b, c):
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n  # integers: exact
    assert mcnemar_p(b, c) == pytest.approx(min(1.0, 2 * tail), rel=1e-9, abs=1e-300)
    assert mcnemar_p(b, c) == mcnemar_p(c, b)


def test_mcnemar_small_cases_by_hand():
    assert mcnemar_p(5, 0) == 2 / 32  # all five discordant examples on one side
    assert mcnemar_p(2, 2) == 1.0
    with pytest.raises(ValueError, match="discordant counts"):
        mcnemar_p(-1, 3)


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> kept monotone at 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def _outcomes(robust, index=None):
    robust = np.asarray(robust, dtype=bool)
    return (np.arange(robust.size) if index is None else np.asarray(index)), robust


def test_rank_ranges_separate_only_what_the_test_separates():
    n = 200
    top = np.ones(n, dtype=bool)
    near = top.copy()
    near[:3] = False  # 3 discordant examples: p = 0.25, no evidence
    low = top.copy()
    low[:60] = False  # 60 discordant examples against both: separated
    ranges = rank_ranges([_outcomes(top), _outcomes(near), _outcomes(low)])
    assert ranges == [(1, 2), (1, 2), (3, 3)]
    assert [range_text(*r) for r in ranges] == ["1–2", "1–2", "3"]
    # The order given does not matter: ranges follow the entries.
    assert rank_ranges([_outcomes(low), _outcomes(top), _outcomes(near)]) == [(3, 3), (1, 2), (1, 2)]


def test_rank_ranges_correct_for_many_pairs():
    # p = 2 / 2**6 = 0.031 alone separates two entries; among six entries (15 pairs) Holm does not.
    n = 100
    base = np.ones(n, dtype=bool)
    worse = base.copy()
    worse[:6] = False
    assert rank_ranges([_outcomes(base), _outcomes(worse)]) == [(1, 1), (2, 2)]
    others = [_outcomes(base) for _ in range(4)]
    ranges = rank_ranges([_outcomes(base), *others, _outcomes(worse)])
    assert ranges == [(1, 6)] * 6


def test_rank_ranges_compare_on_shared_examples_only():
    # Robust on different images: nothing shared, nothing separated, whatever the counts.
    a = _outcomes(np.ones(50), index=np.arange(50))
    b = _outcomes(np.zeros(50), index=np.arange(50, 100))
    assert rank_ranges([a, b]) == [(1, 2), (1, 2)]
    # Shared images in another order are matched by dataset index, not by position.
    idx = np.arange(100)
    robust = idx % 2 == 0
    shuffled = np.random.default_rng(0).permutation(100)
    assert rank_ranges([_outcomes(robust, idx), _outcomes(robust[shuffled], idx[shuffled])]) == [(1, 2)] * 2
    with pytest.raises(ValueError, match="alpha"):
        rank_ranges([a, b], alpha=1.5)


def _ranges_in(md: str) -> dict[str, str]:
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and "Rank" not in line]
    return {re.match(r"\[([^\]]+)\]", r[2]).group(1): r[1] for r in rows if r[2].startswith("[")}


def test_render_shows_rank_ranges(tmp_path):
    root = tmp_path / "root"
    # Two entries with the same outcomes (same seed) and one far weaker: the twins share places 1-2.
    specs = [("TwinA", 0, 0.1), ("TwinB", 0, 0.1), ("Weak", 1, 0.95)]
    for i, (entry_id, seed, fraction) in enumerate(specs):
        results = F.synthetic_run(tmp_path / f"run{i}", n=40, seed=seed, broken_fraction=fraction)
        lb.add_entry(results, root=root, entry_id=entry_id, authors="A", source="https://example.org",
                     training="none", architecture="tiny-linear", added="2001-02-03T04:05:06Z")
    md, page = lb.render(root)
    assert "| Rank | Rank range | Model |" in md
    assert _ranges_in(md) == {"TwinA": "1–2", "TwinB": "1–2", "Weak": "3"}
    assert 'data-key="range"' in page and ">1–2</td>" in page


# ------------------------------------------------------------------------------------------- compare
def _entry(root, tmp, entry_id, seed, fraction):
    results = F.synthetic_run(tmp / entry_id, n=40, seed=seed, broken_fraction=fraction)
    lb.add_entry(results, root=root, entry_id=entry_id, authors="A", source="https://example.org",
                 training="none", architecture="tiny-linear", added="2001-02-03T04:05:06Z")
    return results


def test_compare_counts_the_discordant_examples(tmp_path, capsys):
    from wasserstein_attacks.leaderboard.compare import compare, load_side

    root = tmp_path / "root"
    _entry(root, tmp_path, "Strong", 0, 0.1)
    weak_run = _entry(root, tmp_path, "Weak", 1, 0.9)
    a, b = load_side("Strong", root), load_side("Weak", root)
    got = compare(a, b)
    assert got["shared"] == 40 and got["same_suite"]
    assert [r["radius"] for r in got["rows"]] == ["clean", *sorted(a.radii, key=float)]
    ea, eb = (lb.load_entry(root / "entries" / "synthetic" / "W1-k3-box01" / f"{i}.json").arrays
              for i in ("Strong", "Weak"))
    tol = lb.load_entry(root / "entries" / "synthetic" / "W1-k3-box01" / "Strong.json").data["threat"][
        "tolerances"]["cost_rel"]
    for row in got["rows"]:  # both evaluated dataset indices 0..39 in order
        if row["radius"] == "clean":
            ha, hb = ea["clean_correct"], eb["clean_correct"]
        else:
            r = float(row["radius"]) * (1 + tol)
            ha = ea["clean_correct"] & (ea["broken_cost"] > r)
            hb = eb["clean_correct"] & (eb["broken_cost"] > r)
        assert (row["only_a"], row["only_b"]) == (int((ha & ~hb).sum()), int((hb & ~ha).sum()))
        assert row["p"] == mcnemar_p(row["only_a"], row["only_b"])
        assert row["a"] == ha.mean() and row["b"] == hb.mean()
    assert got["rows"][-2]["p"] < 0.05  # 10 % against 90 % broken: clearly apart
    # A run against the entry made from it: the same examples, nothing discordant.
    same = compare(load_side(str(weak_run), root), b)
    assert all(r["only_a"] == r["only_b"] == 0 and r["p"] == 1.0 for r in same["rows"])
    # The command line prints the same table.
    assert lb.main(["compare", "Strong", str(weak_run), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "A: Strong (entry" in out and "(run," in out and "40 examples evaluated by both" in out


def test_compare_refuses_what_is_not_comparable(tmp_path, capsys):
    import json

    root = tmp_path / "root"
    run = _entry(root, tmp_path, "One", 0, 0.5)
    assert lb.main(["compare", "One", "Missing", "--root", str(root)]) == 1
    assert "Missing: not a file, and 0 entries with that id" in capsys.readouterr().err
    data = json.loads(run.read_text())
    other = tmp_path / "other" / "results.json"
    other.parent.mkdir()
    data["examples"]["index"] = [i + 1000 for i in data["examples"]["index"]]
    other.write_text(json.dumps(data))
    assert lb.main(["compare", "One", str(other), "--root", str(root)]) == 1
    assert "share no evaluated example" in capsys.readouterr().err
    data["threat"]["kernel_size"] = 5
    other.write_text(json.dumps(data))
    assert lb.main(["compare", "One", str(other), "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "threat models differ (W1-k3-box01 (tolerances" in err and "against W1-k5-box01" in err
