"""The attack suite: worst case per example over attacks and radii (AutoAttack style), its accounting."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_doubles import CentreOfMass, RandomShift  # noqa: E402

from wasserstein_attacks import WassersteinBall  # noqa: E402
from wasserstein_attacks.attacks.base import example_seeds  # noqa: E402
from wasserstein_attacks.attacks.suite import Suite, SuiteResult, check_radii, in_exact_sample, load_suite  # noqa: E402
from wasserstein_attacks.data import synthetic_dataset  # noqa: E402

RADII = (0.05, 0.2, 0.6)
THREAT = WassersteinBall(eps=0.0)


@pytest.fixture(scope="module")
def setup():
    data = synthetic_dataset(20, split="test", height=12, width=12, num_classes=4, seed=3)
    model = CentreOfMass(12, 12, 4).eval()
    suite = Suite("toy", 1, [RandomShift(salt=0), RandomShift(salt=1)], labels=["a", "b"])
    res = suite.run(
        model, data.images, data.labels, RADII, threat=THREAT, seed=5, exact_fraction=1.0, progress=False
    )
    return data, model, suite, res


def test_accounting_and_verified_adversarial_examples(setup):
    data, model, _, res = setup
    x, y = data.images, data.labels
    tol = THREAT.cost_tol
    with torch.no_grad():
        clean_pred = model(x).argmax(1)
        adv_pred = model(res.adversarial).argmax(1)
    torch.testing.assert_close(res.clean_correct, clean_pred == y)
    broken = res.broken_attack >= 0
    # The toy data must exercise every case, or the assertions below would prove little.
    assert (~res.clean_correct).any() and broken.any() and (res.clean_correct & ~broken).any()
    # Clean errors: broken at radius 0, by no attack, image untouched.
    ce = ~res.clean_correct
    assert (res.broken_cost[ce] == 0).all() and (res.broken_radius[ce] == 0).all()
    assert (res.broken_attack[ce] == -1).all()
    torch.testing.assert_close(res.adversarial[~broken], x[~broken])
    # Broken examples: misclassified, inside the ball of their radius by the exact LP, cost within it.
    assert (adv_pred[broken] != y[broken]).all()
    assert (res.broken_cost[broken] <= res.broken_radius[broken] * (1 + tol)).all()
    exact = THREAT.distance(x[broken], res.adversarial[broken])
    assert (exact <= res.broken_radius[broken] * (1 + tol)).all()
    assert set(res.broken_radius[broken].tolist()) <= set(RADII)
    # Never-broken correct examples have infinite cost.
    assert torch.isinf(res.broken_cost[res.clean_correct & ~broken]).all()
    # Robust accuracy is the fraction clean-correct with no adversarial of cost <= r.
    for r in RADII:
        expect = (res.clean_correct & ~(res.broken_cost <= r * (1 + tol))).double().mean().item()
        assert res.robust_accuracy(r) == expect
    accs = [res.robust_accuracy(r) for r in RADII]
    assert accs == sorted(accs, reverse=True) and accs[0] <= res.clean_accuracy
    assert res.broken_by == [("a", "b")[j] if j >= 0 else None for j in res.broken_attack.tolist()]


def test_later_attacks_run_only_on_what_is_still_robust(setup):
    _, _, _, res = setup
    calls = {(t["radius"], t["attack"]): t for t in res.timings}
    rad, by = res.broken_radius, res.broken_attack
    for r in RADII:
        # "a" attacks what no smaller radius broke; "b" what "a" then left robust.
        left_a = res.clean_correct & (rad >= r)
        left_b = res.clean_correct & ((rad > r) | ((rad == r) & (by == 1)))
        assert calls.get((r, "a"), {"attacked": 0})["attacked"] == int(left_a.sum())
        assert calls.get((r, "b"), {"attacked": 0})["attacked"] == int(left_b.sum())
        assert calls.get((r, "a"), {"broken": 0})["broken"] == int(((by == 0) & (rad == r)).sum())
    cum = res.cumulative_robust_accuracy()
    assert list(cum) == ["a", "b"]
    assert cum["b"] == {r: res.robust_accuracy(r) for r in RADII}
    assert all(cum["a"][r] >= cum["b"][r] for r in RADII)


def test_descending_order_attacks_inside_a_ball_only_what_it_broke(setup):
    data, model, _, asc = setup
    suite = Suite("toy", 2, [RandomShift(salt=0), RandomShift(salt=1)], labels=["a", "b"], order="descending")
    res = suite.run(
        model, data.images, data.labels, RADII, threat=THREAT, seed=5, exact_fraction=1.0, progress=False
    )
    tol = THREAT.cost_tol
    calls = [(t["radius"], t["attack"], t["attacked"]) for t in res.timings]
    assert [c[0] for c in calls] == sorted((c[0] for c in calls), reverse=True)  # largest radius first
    # The largest radius sees every clean-correct example; a smaller one only those broken at the next
    # larger radius with a cost above the smaller one.
    assert calls[0] == (RADII[-1], "a", int(asc.clean_correct.sum()))
    for r in RADII:
        broken = res.clean_correct & (res.broken_cost <= r * (1 + tol))
        assert res.robust_accuracy(r) == (res.clean_correct & ~broken).double().mean().item()
    # Verified: every break lies in the ball of its radius (exact LP), and broken_radius is the smallest.
    hit = res.broken_attack >= 0
    exact = THREAT.distance(data.images[hit], res.adversarial[hit])
    assert (exact <= res.broken_radius[hit] * (1 + tol)).all()
    assert (res.broken_cost[hit] <= res.broken_radius[hit] * (1 + tol)).all()
    for r, rp in zip(RADII[:-1], RADII[1:], strict=True):
        # Inside a ball, only what was broken in the next larger one is attacked again.
        attacked_here = sum(n for rr, a, n in calls if rr == r and a == "a")
        broken_above = sum(t["broken"] for t in res.timings if t["radius"] == rp)
        assert attacked_here <= broken_above
    assert sum(n for rr, a, n in calls if rr == RADII[0]) < sum(n for rr, a, n in calls if rr == RADII[-1])
    # Per-attack costs: an example broken by "a" at a large radius and by "b" only at a smaller one still
    # counts for "a" in the prefix curve at the large radius.
    by_a = res.clean_correct & torch.isfinite(res.attack_cost[:, 0])
    a_top = [t["broken"] for t in res.timings if t["radius"] == RADII[-1] and t["attack"] == "a"][0]
    assert a_top <= int(by_a.sum()) <= sum(t["broken"] for t in res.timings if t["attack"] == "a")
    by_a_top = res.attack_cost[:, 0] <= RADII[-1] * (1 + tol)
    assert torch.equal(res.robust(RADII[-1], upto=0), res.clean_correct & ~by_a_top)
    cum = res.cumulative_robust_accuracy()
    assert all(cum["a"][r] >= cum["b"][r] == res.robust_accuracy(r) for r in RADII)
    # Examples that resisted at the largest radius were never broken anywhere.
    never = res.clean_correct & torch.isinf(res.broken_cost)
    assert never.any() and (res.broken_attack[never] == -1).all()
    accs = [res.robust_accuracy(r) for r in RADII]
    assert accs == sorted(accs, reverse=True)
    with pytest.raises(ValueError, match="order"):
        Suite("x", 1, [RandomShift()], order="random")


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_adding_attacks_anywhere_never_leaves_robust_what_the_smaller_suite_breaks(setup, order):
    # standard-v3 rests on this: v2's attacks plus others, in another order, break at least what v2 breaks
    # at every radius (attacks seed per example, and a suite that breaks more at a large radius walks
    # more examples down to the smaller ones).
    data, model, _, _ = setup
    kw = dict(threat=THREAT, seed=5, exact_fraction=0.0, progress=False)
    small = Suite("toy", 1, [RandomShift(salt=0), RandomShift(salt=1)], labels=["a", "b"], order=order)
    big = Suite("toy", 2, [RandomShift(salt=s) for s in (2, 0, 1, 3)], labels=list("cabd"), order=order)
    rs = small.run(model, data.images, data.labels, RADII, **kw)
    rb = big.run(model, data.images, data.labels, RADII, **kw)
    strictly_more = False
    for r in RADII:
        assert not (rb.robust(r) & ~rs.robust(r)).any()
        strictly_more |= bool((rs.robust(r) & ~rb.robust(r)).any())
    assert strictly_more  # otherwise the toy setup proves nothing


def test_cumulative_curves_on_hand_made_result():
    res = SuiteResult(
        radii=(0.01, 0.1, 0.5),
        attacks=("a", "b"),
        indices=torch.arange(5),
        labels=torch.zeros(5, dtype=torch.long),
        clean_correct=torch.tensor([True, True, True, False, True]),
        broken_cost=torch.tensor([0.05, 0.2, float("inf"), 0.0, 0.1 * (1 + 5e-5)], dtype=torch.float64),
        broken_attack=torch.tensor([0, 1, -1, -1, 1]),
        broken_radius=torch.tensor([0.1, 0.5, float("inf"), 0.0, 0.1], dtype=torch.float64),
        adversarial=torch.zeros(5, 1, 2, 2),
        exact_distance=torch.full((5,), float("nan"), dtype=torch.float64),
        cost_tol=1e-4,
    )
    assert res.clean_accuracy == 0.8
    # Example 4 costs 0.1 * (1 + 5e-5): inside the ball of radius 0.1 by the certificate's tolerance.
    assert [res.robust_accuracy(r) for r in res.radii] == [0.8, 0.4, 0.2]
    assert res.cumulative_robust_accuracy() == {
        "a": {0.01: 0.8, 0.1: 0.6, 0.5: 0.6},
        "b": {0.01: 0.8, 0.1: 0.4, 0.5: 0.2},
    }
    assert res.broken_by == ["a", "b", None, None, "b"]
    both = SuiteResult.concatenate([res, res])
    assert both.robust_accuracy(0.1) == 0.4 and both.indices.numel() == 10


def test_batches_reproduce_the_whole_run_and_seeds_come_from_indices(setup):
    data, model, suite, res = setup
    parts = [
        suite.run(
            model,
            data.images[s],
            data.labels[s],
            RADII,
            threat=THREAT,
            seed=5,
            indices=torch.arange(20)[s],
            exact_fraction=1.0,
            progress=False,
        )
        for s in (slice(0, 7), slice(7, 20))
    ]
    joined = SuiteResult.concatenate(parts)
    for name in ("clean_correct", "broken_cost", "broken_attack", "broken_radius", "adversarial"):
        torch.testing.assert_close(getattr(joined, name), getattr(res, name), rtol=0, atol=0)
    torch.testing.assert_close(joined.exact_distance, res.exact_distance, equal_nan=True)

    seen = []

    class Spy(RandomShift):
        def _run(self, model, x, labels, *, threat, targets, seeds):
            seen.append(list(seeds))
            return super()._run(model, x, labels, threat=threat, targets=targets, seeds=seeds)

    idx = torch.arange(100, 108)
    Suite("spy", 1, [Spy()]).run(
        model, data.images[:8], data.labels[:8], [0.1], threat=THREAT, seed=9, indices=idx, progress=False
    )
    attacked = res.clean_correct[:8]
    assert seen == [example_seeds(9, idx[attacked])]


def test_the_seed_drives_the_draws(setup):
    data, model, suite, res = setup
    # Same seed, same numbers is shown above (batches reproduce the run bit for bit); another seed differs.
    other = suite.run(model, data.images, data.labels, RADII[-1:], threat=THREAT, seed=6, progress=False)
    again = suite.run(model, data.images, data.labels, RADII[-1:], threat=THREAT, seed=5, progress=False)
    assert not torch.equal(other.adversarial, again.adversarial)


def test_exact_sample_depends_on_index_only(setup):
    _, _, _, res = setup
    idx = np.arange(5000)
    a = in_exact_sample(idx, 0.2)
    np.testing.assert_array_equal(in_exact_sample(idx[::-1], 0.2), a[::-1])
    assert 0.17 < a.mean() < 0.23
    assert not in_exact_sample(idx, 0.0).any() and in_exact_sample(idx, 1.0).all()
    broken = res.broken_attack >= 0
    checked = ~torch.isnan(res.exact_distance)
    assert torch.equal(checked, broken)  # fraction 1.0: every success re-checked
    assert (res.exact_distance[checked] <= res.broken_radius[checked] * (1 + THREAT.cost_tol)).all()
    with pytest.raises(ValueError, match="exact_fraction"):
        in_exact_sample(idx, 1.5)


def test_bad_input_names_the_argument(setup):
    data, model, suite, _ = setup
    with pytest.raises(ValueError, match="radii"):
        check_radii([0.1, -0.2])
    with pytest.raises(ValueError, match="radii"):
        check_radii([])
    with pytest.raises(ValueError, match="radii"):
        check_radii([0.1, 0.1])
    assert check_radii([0.5, 0.01]) == (0.01, 0.5)
    with pytest.raises(ValueError, match="version"):
        Suite("x", 0, [RandomShift()])
    with pytest.raises(ValueError, match="labels"):
        Suite("x", 1, [RandomShift(), RandomShift()])
    with pytest.raises(ValueError, match="attacks"):
        Suite("x", 1, [])
    with pytest.raises(ValueError, match="indices"):
        suite.run(model, data.images[:4], data.labels[:4], [0.1], threat=THREAT, indices=torch.arange(3))
    with pytest.raises(ValueError, match="threat"):
        suite.run(model, data.images[:4], data.labels[:4], [0.1], threat=0.1)


def test_load_suite_builds_the_named_versioned_suite():
    conf = Path(__file__).parent / "conf"
    suite = load_suite("toy-v1", conf_dir=conf)
    assert (suite.name, suite.version, suite.labels) == ("toy", 1, ["shift_a", "shift_b"])
    assert [a.salt for a in suite.attacks] == [0, 1]
    with pytest.raises(ValueError, match="suite: unknown suite 'nope'"):
        load_suite("nope", conf_dir=conf)


class _Spy(RandomShift):
    """RandomShift that records the targets of every call."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def __call__(self, model, images, labels, **kw):
        self.calls.append(None if kw.get("targets") is None else kw["targets"].clone())
        return super().__call__(model, images, labels, **kw)


def test_targeted_runs_follow_the_most_likely_wrong_classes():
    data = synthetic_dataset(12, split="test", height=12, width=12, num_classes=4, seed=3)
    model = CentreOfMass(12, 12, 4).eval()
    spy = _Spy(salt=0)
    suite = Suite("toy", 1, [spy], labels=["t"], targets=[2])
    res = suite.run(model, data.images, data.labels, [0.6], threat=THREAT, seed=5, progress=False)
    assert len(spy.calls) == 2 and all(t is not None for t in spy.calls)
    with torch.no_grad():
        logits = model(data.images)
    attacked = res.clean_correct
    wrong = logits.masked_fill(torch.nn.functional.one_hot(data.labels, 4).bool(), -torch.inf)
    ranked = wrong.argsort(1, descending=True)
    torch.testing.assert_close(spy.calls[0], ranked[attacked, 0])
    assert (spy.calls[1] != data.labels[attacked][: spy.calls[1].numel()]).all()
    # Whatever a targeted run broke is misclassified and inside its ball.
    broken = res.broken_attack >= 0
    with torch.no_grad():
        assert (model(res.adversarial[broken]).argmax(1) != data.labels[broken]).all()


def test_suite_lists_the_losses_its_attacks_use():
    from wasserstein_attacks.attacks import FrankWolfeBox, PGDBox

    suite = Suite("s", 1, [FrankWolfeBox(loss="margin"), PGDBox(loss="ce"), PGDBox(loss="margin")],
                  labels=["a", "b", "c"])
    assert suite.losses == ["margin", "ce"]
    with pytest.raises(ValueError, match="targets must give one int >= 0 per attack"):
        Suite("s", 1, [PGDBox()], targets=[-1])


def test_suite_config_targets_must_name_its_attacks(tmp_path):
    from omegaconf import OmegaConf

    from wasserstein_attacks.attacks.suite import suite_from_config

    cfg = OmegaConf.create({"name": "s", "version": 1, "attacks": {
        "a": {"_target_": "wasserstein_attacks.attacks.PGDBox", "steps": 2}}, "targets": {"b": 2}})
    with pytest.raises(ValueError, match="suite.targets names attacks"):
        suite_from_config(cfg)
    cfg.targets = {"a": 2}
    assert suite_from_config(cfg).targets == [2]


def test_counted_radius_is_the_smallest_ball_an_example_counts_in():
    # Found by the attack call at 0.5 with certified cost 0.015: it counts as broken from 0.02 on, so an
    # exact re-check must test 0.02, not 0.5 (the radius of the call).
    res = SuiteResult(
        radii=(0.01, 0.02, 0.5), attacks=("a",), indices=torch.arange(3),
        labels=torch.zeros(3, dtype=torch.long), clean_correct=torch.tensor([True, True, False]),
        broken_cost=torch.tensor([0.015, torch.inf, 0.0]).double(), broken_attack=torch.tensor([0, -1, -1]),
        broken_radius=torch.tensor([0.5, torch.inf, 0.0]).double(), adversarial=torch.zeros(3, 1, 2, 2),
        exact_distance=torch.full((3,), float("nan"), dtype=torch.float64), cost_tol=1e-4,
    )
    expected = torch.tensor([0.02, torch.inf, 0.0], dtype=torch.float64)
    torch.testing.assert_close(res.counted_radius(), expected)
    assert res.robust(0.02).tolist() == [False, True, False]


def test_the_default_suite_breaks_only_with_verified_examples_inside_the_ball(setup):
    # The default suite of conf/config.yaml as packaged, with few steps: every break it counts is
    # misclassified, in the box, and inside the ball of its counted radius by the exact LP.
    from conftest import default_suite

    data, model, _, _ = setup
    suite = load_suite(default_suite())
    for attack in suite.attacks:
        attack.steps = 5
    x, y = data.images, data.labels
    res = suite.run(model, x, y, RADII, threat=THREAT, seed=5, exact_fraction=1.0, progress=False)
    broken = res.broken_attack >= 0
    assert broken.any()
    with torch.no_grad():
        assert (model(res.adversarial[broken]).argmax(1) != y[broken]).all()
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    exact = THREAT.distance(x[broken], res.adversarial[broken])
    assert (exact <= res.counted_radius()[broken] * (1 + THREAT.cost_tol)).all()


class _StartSpy(RandomShift):
    """RandomShift that takes a starting plan (ignoring it) and records the plans it is handed and returns."""

    supports_start = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.starts, self.ends = [], []

    def __call__(self, model, images, labels, **kw):
        self.starts.append(None if kw.get("start") is None else kw["start"].clone())
        res = super().__call__(model, images, labels, **kw)
        self.ends.append(res.plan.clone())
        return res

    def _run(self, model, x, labels, *, threat, targets, seeds, start=None):
        return super()._run(model, x, labels, threat=threat, targets=targets, seeds=seeds)


def test_a_warm_started_attack_begins_where_the_one_before_it_ended():
    data = synthetic_dataset(16, split="test", height=12, width=12, num_classes=4, seed=3)
    model = CentreOfMass(12, 12, 4).eval()
    first, second = _StartSpy(salt=0), _StartSpy(salt=1)
    suite = Suite("toy", 1, [first, second], labels=["a", "b"], starts=["identity", "previous"])
    suite.run(model, data.images, data.labels, [0.05, 0.6], threat=THREAT, seed=5, progress=False)
    assert len(first.starts) == 2 and all(s is None for s in first.starts)  # the first starts from identity
    assert len(second.starts) == 2, "the toy data must leave examples robust after the first attack"
    for r in range(2):
        # At each radius the second attack gets, for each example it attacks (those the first left
        # robust), a plan that the first attack returned at that radius.
        assert 0 < second.starts[r].shape[0] <= first.ends[r].shape[0]
        matches = [(s == first.ends[r]).flatten(1).all(1).any() for s in second.starts[r]]
        assert all(bool(m) for m in matches)
    assert "starts=['identity', 'previous']" in repr(suite)


def test_warm_starts_are_refused_where_they_cannot_work():
    from omegaconf import OmegaConf

    from wasserstein_attacks.attacks import PGDBox
    from wasserstein_attacks.attacks.suite import suite_from_config

    with pytest.raises(ValueError, match="the first attack has no attack before it"):
        Suite("s", 1, [PGDBox(), PGDBox()], labels=["a", "b"], starts=["previous", "identity"])
    with pytest.raises(ValueError, match="RandomShift does not begin from a plan"):
        Suite("s", 1, [PGDBox(), RandomShift()], labels=["a", "b"], starts=["identity", "previous"])
    with pytest.raises(ValueError, match="starts must give 'identity' or 'previous'"):
        Suite("s", 1, [PGDBox()], starts=["warm"])
    cfg = OmegaConf.create({"name": "s", "version": 1, "attacks": {
        "a": {"_target_": "wasserstein_attacks.attacks.PGDBox", "steps": 2},
        "b": {"_target_": "wasserstein_attacks.attacks.PGDBox", "steps": 2}}, "starts": {"c": "previous"}})
    with pytest.raises(ValueError, match="suite.starts names attacks"):
        suite_from_config(cfg)
    cfg.starts = {"b": "previous"}
    assert suite_from_config(cfg).starts == ["identity", "previous"]


def test_closeness_is_positive_exactly_when_misclassified_and_ignores_the_logit_scale():
    from wasserstein_attacks.attacks.base import closeness

    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [1.0, 2.0, 0.0, 0.0], [0.5, 0.4, 0.0, -2.0]])
    labels = torch.tensor([0, 0, 0])
    near = closeness(logits, labels)
    assert (near > 0).tolist() == [False, True, False]
    torch.testing.assert_close(closeness(1000 * logits, labels), near)
    # Best other minus true logit, over the spread z_(1) - z_(3): (1 - 3) / 3, (2 - 1) / 2, (0.4 - 0.5) / 0.5.
    torch.testing.assert_close(near, torch.tensor([-2 / 3, 0.5, -0.2]))


class _Recorded:
    """Mixin: record the dataset indices each call attacks and its result."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls, self.radii = [], []

    def __call__(self, model, images, labels, **kw):
        res = super().__call__(model, images, labels, **kw)
        self.calls.append((kw.get("indices"), res))
        self.radii.append(kw["threat"].eps_for(images.shape[0]))
        return res


def _recorded_pgd(**kw):
    from wasserstein_attacks.attacks import PGDBox

    return type("RecordedPGDBox", (_Recorded, PGDBox), {})(**kw)


def test_plan_attacks_report_how_near_each_example_came():
    data = synthetic_dataset(16, split="test", height=12, width=12, num_classes=4, seed=3)
    model = CentreOfMass(12, 12, 4).eval()
    res = _recorded_pgd(steps=5, loss="margin")(model, data.images, data.labels, threat=WassersteinBall(0.3))
    assert res.closest is not None and res.closest.shape == (16,) and torch.isfinite(res.closest).all()
    assert res.success.any() and (~res.success).any()
    assert (res.closest[res.success] > 0).all()
    # At least as near as the clean image and the returned example.
    from wasserstein_attacks.attacks.base import closeness

    with torch.no_grad():
        floor = torch.maximum(closeness(model(data.images), data.labels), closeness(model(res.adversarial),
                                                                                      data.labels))
    assert (res.closest >= floor.double() - 1e-6).all()
    assert not RandomShift.tracks_closest and RandomShift()(model, data.images, data.labels,
                                                            threat=WassersteinBall(0.3)).closest is None


def test_near_miss_runs_attack_only_what_an_earlier_run_came_near():
    data = synthetic_dataset(40, split="test", height=12, width=12, num_classes=4, seed=3)
    model = CentreOfMass(12, 12, 4).eval()

    def run(tau):
        first, second = _recorded_pgd(steps=3, loss="margin"), _recorded_pgd(steps=3, loss="ce", lr=1.0)
        suite = Suite("toy", 1, [first, second], labels=["a", "b"], near_miss=[None, tau])
        res = suite.run(model, data.images, data.labels, [0.15], threat=THREAT, seed=5, progress=False)
        return first, second, res, suite

    first, second, everyone, _ = run(-1e9)  # every example still robust is near enough
    (idx, res1), = first.calls
    left = idx[~res1.success & res1.clean_correct]
    assert left.numel() >= 4, "the toy data must leave examples robust after the first attack"
    assert second.calls[0][0].tolist() == left.tolist()
    tau = float(res1.closest[~res1.success & res1.clean_correct].median())
    first, second, res, suite = run(tau)
    near = idx[~res1.success & res1.clean_correct & (res1.closest > tau)]
    assert 0 < near.numel() < left.numel()
    assert second.calls[0][0].tolist() == near.tolist()
    assert f"near_miss=[None, {tau}]" in repr(suite)
    # Fewer examples attacked, never a break the first attack found lost.
    assert not (res.robust(0.15) & ~everyone.robust(0.15) & (everyone.broken_attack == 0)).any()
    first, second, _, _ = run(1e9)  # nobody is near enough: the second attack never runs
    assert second.calls == []


def test_near_miss_thresholds_are_checked():
    from omegaconf import OmegaConf

    from wasserstein_attacks.attacks import PGDBox
    from wasserstein_attacks.attacks.suite import suite_from_config

    with pytest.raises(ValueError, match="near_miss: a cannot select near misses: it is the first attack$"):
        Suite("s", 1, [PGDBox(), PGDBox()], labels=["a", "b"], near_miss=[-0.1, None])
    with pytest.raises(ValueError, match="near_miss: b cannot select near misses: no attack before it"):
        Suite("s", 1, [RandomShift(), PGDBox()], labels=["a", "b"], near_miss=[None, -0.1])
    with pytest.raises(ValueError, match="near_miss: b needs None or a finite float threshold, got nan"):
        Suite("s", 1, [PGDBox(), PGDBox()], labels=["a", "b"], near_miss=[None, float("nan")])
    with pytest.raises(ValueError, match="near_miss must give None or a float threshold per attack"):
        Suite("s", 1, [PGDBox(), PGDBox()], labels=["a", "b"], near_miss=[None])
    cfg = OmegaConf.create({"name": "s", "version": 1, "attacks": {
        "a": {"_target_": "wasserstein_attacks.attacks.PGDBox", "steps": 2},
        "b": {"_target_": "wasserstein_attacks.attacks.PGDBox", "steps": 2}}, "near_miss": {"c": -0.1}})
    with pytest.raises(ValueError, match="suite.near_miss names attacks"):
        suite_from_config(cfg)
    cfg.near_miss = {"b": -0.1}
    assert suite_from_config(cfg).near_miss == [None, -0.1]


def test_a_pooled_near_miss_pass_attacks_every_near_pair_once_in_its_own_ball():
    data = synthetic_dataset(40, split="test", height=12, width=12, num_classes=4, seed=3)
    model = CentreOfMass(12, 12, 4).eval()
    radii = (0.1, 0.3)

    def run(tau, order="descending"):
        first = _recorded_pgd(steps=2, loss="ce", lr=0.05)
        second = _recorded_pgd(steps=10, loss="margin", lr=1.0)
        suite = Suite("toy", 1, [first, second], labels=["a", "b"], order=order, near_miss=[None, tau],
                      near_miss_pass="pooled")
        res = suite.run(model, data.images, data.labels, radii, threat=THREAT, seed=5, progress=False)
        return first, second, res, suite

    first, second, res, suite = run(-1e9)
    assert "near_miss_pass='pooled'" in repr(suite)
    # The walk ran the first attack alone: at 0.3, then at 0.1 on what 0.3 broke.
    assert [float(r.max()) for r in first.radii] == [0.3, 0.1]
    (i03, r03), (i01, r01) = first.calls
    robust_03 = i03[~r03.success & r03.clean_correct]
    robust_01 = i01[~r01.success & r01.clean_correct]
    assert robust_03.numel() >= 2 and robust_01.numel() >= 2, "the toy data must leave pairs to attack"
    # One call, on every pair the first attack left robust, grouped by radius (ascending), each in its ball.
    (idx, out), = second.calls
    assert idx.tolist() == robust_01.tolist() + robust_03.tolist()
    pair_radius = torch.tensor([0.1] * robust_01.numel() + [0.3] * robust_03.numel(), dtype=torch.float64)
    torch.testing.assert_close(second.radii[0].double().cpu(), pair_radius)
    hit = res.broken_attack == 1
    assert set(res.broken_radius[hit].tolist()) == set(radii), "the toy data must give breaks at both radii"
    assert (res.broken_cost[hit] <= res.broken_radius[hit] * (1 + THREAT.cost_tol)).all()
    exact = THREAT.distance(data.images[hit], res.adversarial[hit])
    assert (exact <= res.broken_radius[hit] * (1 + THREAT.cost_tol)).all()
    calls = [t for t in res.timings if t["attack"] == "b"]
    assert [t["radius"] for t in calls] == [0.1, 0.3] and all(t["pooled"] for t in calls)
    assert [t["attacked"] for t in calls] == [robust_01.numel(), robust_03.numel()]
    assert sum(t["broken"] for t in calls) == int(hit.sum())
    _, second, _, _ = run(1e9)  # no pair is near enough: no call
    assert second.calls == []
    # Walked upward, an example robust at both radii is attacked at both in the one call, and keeps the
    # cheapest of its breaks.
    _, second, res, _ = run(-1e9, order="ascending")
    (idx, out), = second.calls
    assert idx.unique().numel() < idx.numel() and out.success.any()
    for i in idx[out.success].unique().tolist():
        costs = out.cost.double()[(idx == i) & out.success]
        assert res.broken_attack[i] == 1 and res.broken_cost[i] == costs.min()


def test_a_pooled_break_keeps_the_cheapest_of_an_examples_pairs():
    from wasserstein_attacks.attacks.suite import _cheapest

    idx = torch.tensor([3, 5, 3, 7, 5])
    won = torch.tensor([True, True, True, False, True])
    cost = torch.tensor([0.2, 0.1, 0.05, 0.0, 0.1], dtype=torch.float64)
    assert _cheapest(idx, won, cost).tolist() == [False, True, True, False, False]
    assert _cheapest(torch.tensor([1, 2]), torch.tensor([True, True]), cost[:2]).tolist() == [True, True]


def test_a_pooled_near_miss_pass_is_checked():
    from omegaconf import OmegaConf

    from wasserstein_attacks.attacks import PGDBox
    from wasserstein_attacks.attacks.suite import suite_from_config

    three = [PGDBox(), PGDBox(), PGDBox()]
    with pytest.raises(ValueError, match="near_miss_pass must be 'per_radius' or 'pooled', got 'end'$"):
        Suite("s", 1, three, labels=["a", "b", "c"], near_miss=[None, -0.1, None], near_miss_pass="end")
    with pytest.raises(ValueError, match="needs at least one near_miss attack"):
        Suite("s", 1, three, labels=["a", "b", "c"], near_miss_pass="pooled")
    with pytest.raises(ValueError, match="the near-miss attacks must come last, but c follows b$"):
        Suite("s", 1, three, labels=["a", "b", "c"], near_miss=[None, -0.1, None], near_miss_pass="pooled")
    with pytest.raises(ValueError, match="c cannot start from the previous attack's plan"):
        Suite("s", 1, three, labels=["a", "b", "c"], near_miss=[None, None, -0.1], near_miss_pass="pooled",
              starts=["identity", "identity", "previous"])
    cfg = OmegaConf.create({"name": "s", "version": 1, "attacks": {
        "a": {"_target_": "wasserstein_attacks.attacks.PGDBox", "steps": 2},
        "b": {"_target_": "wasserstein_attacks.attacks.PGDBox", "steps": 2}}, "near_miss": {"b": -0.1},
        "near_miss_pass": "pooled"})
    assert suite_from_config(cfg).near_miss_pass == "pooled"
    cfg.near_miss_pass = "later"
    with pytest.raises(ValueError, match="^suite: near_miss_pass must be"):
        suite_from_config(cfg)
