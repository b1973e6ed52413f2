"""Rank ranges: which places of a ranked table the per-example results can tell apart.

The entries of a table are evaluated on test images of one split (usually the first ``n``), so two of
them compare example by example. At the table's ranking radius, let ``b`` be the examples robust (or
certified) under entry A and not under B, and ``c`` the reverse, over the examples both evaluated. The
exact two-sided McNemar test (a binomial test of ``b`` out of ``b + c`` at 1/2) asks whether the two are
equally robust; a difference of a few examples out of a thousand is not evidence of one. Over all pairs
of the table the p-values are corrected with Holm's step-down method, so that the chance of calling any
one pair different when none is stays below ``alpha``. An entry is placed behind another only where
that test separates them; its rank range runs from one plus the number of entries shown to be more
robust than it to the number of ranked entries minus the number shown to be less robust.

Paired tests are far sharper than intervals for each entry alone: two models that fail on mostly the
same images differ by few discordant examples, and these decide the test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ALPHA", "Outcomes", "mcnemar_p", "holm", "rank_ranges", "range_text"]

#: Family-wise error rate of the rank ranges over all pairs of one table.
ALPHA = 0.05

#: Per-example results of one entry: (dataset indices int ``[n]``, robust or certified bool ``[n]``).
Outcomes = tuple[np.ndarray, np.ndarray]


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant examples (1.0 when there are none).

    The binomial test of ``b`` out of ``b + c`` at 1/2: ``2 * P(X <= min(b, c))`` for
    ``X ~ Binomial(b + c, 1/2)``, capped at 1.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest  # imported late: listing entries needs no scipy

    return float(binomtest(b, b + c, 0.5).pvalue)


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (each in ``[0, 1]``, monotone in rank)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: (p[i], i))
    out, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


def _discordant(a: Outcomes, b: Outcomes) -> tuple[int, int]:
    """``(robust under a only, robust under b only)`` over the dataset indices both evaluated."""
    _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    ra, rb = a[1][ia], b[1][ib]
    return int(np.count_nonzero(ra & ~rb)), int(np.count_nonzero(rb & ~ra))


def rank_ranges(outcomes: Sequence[Outcomes], alpha: float = ALPHA) -> list[tuple[int, int]]:
    """Rank range ``(best, worst)`` (1-based) of each entry of a ranked table; see the module docstring.

    Args:
        outcomes: per entry, in any order: dataset indices int ``[n_i]`` (distinct) and bool ``[n_i]``
            (robust, or certified, at the ranking radius). Entries evaluated on different images are
            compared on the images they share (none shared: never separated).
        alpha: family-wise error rate over all pairs, in ``(0, 1)``.

    Returns:
        ``[(best, worst)]`` in the input order, ``1 <= best <= worst <= len(outcomes)``.

    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    m = len(outcomes)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    counts = [_discordant(outcomes[i], outcomes[j]) for i, j in pairs]
    adjusted = holm([mcnemar_p(b, c) for b, c in counts])
    above, below = [0] * m, [0] * m  # entries shown more / less robust than each one
    for (i, j), (b, c), p in zip(pairs, counts, adjusted, strict=True):
        if p < alpha and b != c:
            better, worse = (i, j) if b > c else (j, i)
            above[worse] += 1
            below[better] += 1
    return [(1 + above[k], m - below[k]) for k in range(m)]


def range_text(best: int, worst: int) -> str:
    """``"3"`` for a rank the tests pin down, ``"1–4"`` otherwise."""
    return str(best) if best == worst else f"{best}–{worst}"
