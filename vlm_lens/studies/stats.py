"""Small paired tests for study summaries, on scipy, returning one JSON-able record.

`wilcoxon_signed_rank` is the test the counting study uses for the sparsity drop from
the first to the second digit: the same sample measured twice, so a paired test. An
exact null distribution is used for small samples without ties, the normal
approximation (tie-corrected, with continuity correction) otherwise. `sign_test` is the
distribution-free fallback with fewer assumptions (no symmetry of the differences);
`mcnemar_exact` is the sign test on paired right/wrong outcomes.

Not for: anything a study reports without a pairing (use the summaries' means and stds).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["PairedTest", "mcnemar_exact", "sign_test", "wilcoxon_signed_rank"]

_EXACT_MAX_N = 50


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired test of `x - y` against a zero median (two-sided).

    Attributes:
        statistic: Wilcoxon: `min(W+, W-)` (as scipy reports it); sign test: the number
            of positive differences.
        p_value: two-sided p-value (NaN when no non-zero difference is left).
        n: pairs used (non-zero, finite differences).
        n_zero: pairs dropped because the difference is exactly zero.
        w_plus: sum of the ranks of the positive differences (Wilcoxon) / positives (sign).
        method: "exact", "normal" or "binomial".
        mean_diff, median_diff: of the finite differences (zeros included).
    """

    statistic: float
    p_value: float
    n: int
    n_zero: int
    w_plus: float
    method: str
    mean_diff: float
    median_diff: float

    def as_dict(self) -> dict:
        return asdict(self)


def _differences(x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    d = np.asarray(x, dtype=np.float64)
    if y is not None:
        y = np.asarray(y, dtype=np.float64)
        if y.shape != d.shape:
            raise ValueError(f"paired samples need equal shapes, got {d.shape} and {y.shape}")
        d = d - y
    return d[np.isfinite(d)].ravel()


def _split(x, y) -> tuple[np.ndarray, float, float, int]:
    """Non-zero finite differences, the mean and median of all finite ones, zeros dropped."""
    d_all = _differences(x, y)
    mean_diff = float(d_all.mean()) if len(d_all) else math.nan
    median_diff = float(np.median(d_all)) if len(d_all) else math.nan
    d = d_all[d_all != 0]
    return d, mean_diff, median_diff, len(d_all) - len(d)


def wilcoxon_signed_rank(x, y=None) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of the paired differences `x - y` (or of `x`).

    Zero differences are dropped (Wilcoxon's convention) and non-finite pairs ignored.
    Exact p-value for `n <= 50` without tied magnitudes, otherwise the normal
    approximation with tie correction and a continuity correction of 0.5
    (`scipy.stats.wilcoxon` with the method chosen here, so the rule does not move with
    scipy's own "auto").
    """
    d, mean_diff, median_diff, n_zero = _split(x, y)
    n = len(d)
    if n == 0:
        return PairedTest(math.nan, math.nan, 0, n_zero, math.nan, "exact", mean_diff, median_diff)
    ranks = stats.rankdata(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    exact = n <= _EXACT_MAX_N and len(np.unique(np.abs(d))) == n
    result = stats.wilcoxon(
        d, zero_method="wilcox", correction=True, method="exact" if exact else "asymptotic"
    )
    p = min(1.0, float(result.pvalue))
    method = "exact" if exact else "normal"
    return PairedTest(float(result.statistic), p, n, n_zero, w_plus, method, mean_diff, median_diff)


def sign_test(x, y=None) -> PairedTest:
    """Two-sided exact sign test of the paired differences `x - y` (zeros dropped)."""
    d, mean_diff, median_diff, n_zero = _split(x, y)
    n = len(d)
    if n == 0:
        return PairedTest(
            math.nan, math.nan, 0, n_zero, math.nan, "binomial", mean_diff, median_diff
        )
    k = int((d > 0).sum())
    p = min(1.0, float(stats.binomtest(k, n, 0.5).pvalue))
    return PairedTest(float(k), p, n, n_zero, float(k), "binomial", mean_diff, median_diff)


def mcnemar_exact(before, after) -> PairedTest:
    """McNemar's exact test of paired right/wrong outcomes (e.g. without / with an intervention).

    Only discordant pairs carry information: `b` right before and wrong after, `c` wrong
    before and right after; under the null each discordant pair is `c` with probability
    1/2. That is the sign test of `after - before` on 0/1 outcomes, so the record reads:
    `statistic` = `c` (pairs that turned right), `n` = `b + c`, `n_zero` = concordant
    pairs, `mean_diff` = change in accuracy over all pairs.

    Args:
        before, after: `[n]` booleans (or 0/1), the same items in the same order.
    """
    b = np.asarray(before)
    a = np.asarray(after)
    if b.shape != a.shape or b.ndim != 1:
        raise ValueError(
            f"mcnemar_exact needs two 1-d outcome vectors of equal length, got {b.shape} and {a.shape}"
        )
    for name, v in (("before", b), ("after", a)):
        if not np.isin(v, (0, 1)).all():
            raise ValueError(f"mcnemar_exact: {name!r} must hold booleans or 0/1 only")
    return sign_test(a.astype(np.float64), b.astype(np.float64))
