"""Does attention decay predict the wrong digit? Per-sample scores against correctness.

Language Takeover (counting paper §5.2) says a later digit is wrong *because* its
attention to the image has decayed. The study's averages cannot show that; these
functions ask it sample by sample:

- `digit_correct`: whether the k-th generated digit matches the count's k-th digit.
- `auroc`: how well a score (the digit's sparsity, entropy, image mass) separates right
  from wrong digits, rank-based (Mann-Whitney U), with a bootstrap interval.
- `logistic_fit`: maximum-likelihood logistic regression (Newton's method), for
  correctness on the score with the count as a covariate.
- `decay_vs_error`: both for one score, ready for a summary.

Not for: the paired before/after tests (`vlm_lens.studies.stats`), the attention
metrics themselves (`vlm_lens.metrics.attention`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from jaxtyping import Bool, Float
from scipy import special, stats

__all__ = [
    "Auroc",
    "LogisticFit",
    "auroc",
    "decay_vs_error",
    "digit_correct",
    "logistic_fit",
]


def digit_correct(digits: Sequence[str], count: int, k: int) -> bool | None:
    """Whether generated digit `k` (0 = first) is the count's digit `k`, read left to right.

    `digits` are the generated digit strings in order (the study's `digits`). None when
    the answer has no digit `k` (nothing was generated there to be right or wrong); a
    digit beyond the count's length is wrong.
    """
    if k < 0:
        raise ValueError(f"digit index must be >= 0, got {k}")
    if k >= len(digits):
        return None
    truth = str(int(count))
    return k < len(truth) and digits[k] == truth[k]


def _pairs(score, positive) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    y = np.asarray(positive).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores but {len(y)} outcomes")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("outcomes must be booleans or 0/1")
    finite = np.isfinite(s)
    return s[finite], y[finite].astype(bool)


@dataclass(frozen=True)
class Auroc:
    """Area under the ROC curve of a score for a binary outcome, with a bootstrap interval.

    Attributes:
        auroc: P(score of a random positive > score of a random negative), ties 1/2.
            0.5 is chance; below 0.5 the score is LOWER for positives.
        ci_low, ci_high: percentile bootstrap interval at `level` (resampling items);
            resamples holding one class only are dropped (`n_boot_used`).
        p_value: two-sided Mann-Whitney U test of "no difference" (asymptotic).
        n_pos, n_neg: items with a finite score in each class.
    """

    auroc: float
    ci_low: float
    ci_high: float
    level: float
    p_value: float
    n_pos: int
    n_neg: int
    n_boot: int
    n_boot_used: int

    def as_dict(self) -> dict:
        return asdict(self)


def _auc_rows(scores: Float[np.ndarray, "b n"], positive: Bool[np.ndarray, "b n"]) -> np.ndarray:
    """AUROC of every row, from average ranks (NaN where a row lacks a class)."""
    ranks = stats.rankdata(scores, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    u = (ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def auroc(
    score: Float[np.ndarray, " n"] | Sequence[float],
    positive: Bool[np.ndarray, " n"] | Sequence[bool],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Auroc:
    """AUROC of `score` for `positive` (e.g. a digit's sparsity for "that digit is right").

    Items with a non-finite score are left out. With one class only every number is NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    s, y = _pairs(score, positive)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        nan = math.nan
        return Auroc(nan, nan, nan, level, nan, n_pos, n_neg, n_boot, 0)
    point = float(_auc_rows(s[None], y[None])[0])
    p = float(stats.mannwhitneyu(s[y], s[~y], alternative="two-sided").pvalue)
    low = high = math.nan
    used = 0
    if n_boot:
        idx = np.random.default_rng(seed).integers(0, len(s), size=(n_boot, len(s)))
        boot = _auc_rows(s[idx], y[idx])
        boot = boot[np.isfinite(boot)]
        used = len(boot)
        if used:
            tail = (1 - level) / 2 * 100
            low, high = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    return Auroc(point, low, high, level, p, n_pos, n_neg, n_boot, used)


@dataclass(frozen=True)
class LogisticFit:
    """Maximum-likelihood logistic regression `P(y = 1) = sigmoid(X @ coef)`.

    Attributes:
        names: one per coefficient (`"intercept"` first when one was added).
        coef, se: estimates and standard errors (from the inverse Fisher information).
        z, p_value: Wald statistics and two-sided p-values.
        converged: False when Newton's method did not settle, e.g. under (quasi-)complete
            separation, where the maximum-likelihood estimate does not exist; do not read
            the coefficients then.
    """

    names: tuple[str, ...]
    coef: tuple[float, ...]
    se: tuple[float, ...]
    z: tuple[float, ...]
    p_value: tuple[float, ...]
    n: int
    log_likelihood: float
    converged: bool
    iterations: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __getitem__(self, name: str) -> dict[str, float]:
        """`fit["score"]` -> that coefficient's `coef`, `se`, `z`, `p_value`."""
        i = self.names.index(name)
        return {"coef": self.coef[i], "se": self.se[i], "z": self.z[i], "p_value": self.p_value[i]}


def logistic_fit(
    x: Float[np.ndarray, "n k"],
    y: Bool[np.ndarray, " n"] | Sequence[bool],
    names: Sequence[str] | None = None,
    *,
    intercept: bool = True,
    max_iter: int = 50,
    tol: float = 1e-10,
) -> LogisticFit:
    """Fit `y ~ x` by Newton's method (iteratively reweighted least squares).

    Args:
        x: `[n, k]` predictors (a 1-d array is one predictor). Rows with a non-finite
            value are left out.
        y: `[n]` outcomes, booleans or 0/1.
        names: one per column of `x` (default `x0, x1, ...`).
        intercept: prepend a column of ones.

    Raises:
        ValueError: mismatched lengths, non-binary outcomes, fewer rows than
            coefficients, or predictors that are collinear (a singular information
            matrix at the start).
    """
    a = np.asarray(x, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2:
        raise ValueError(f"x must be [n, k], got shape {a.shape}")
    names = [f"x{i}" for i in range(a.shape[1])] if names is None else list(names)
    if len(names) != a.shape[1]:
        raise ValueError(f"{len(names)} names for {a.shape[1]} predictors")
    t = np.asarray(y).reshape(-1)
    if len(t) != len(a):
        raise ValueError(f"{len(a)} rows of x but {len(t)} outcomes")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("outcomes must be booleans or 0/1")
    rows = np.isfinite(a).all(axis=1)
    a, t = a[rows], t[rows].astype(np.float64)
    if intercept:
        a = np.hstack([np.ones((len(a), 1)), a])
        names = ["intercept", *names]
    k = a.shape[1]
    if len(a) <= k:
        raise ValueError(f"{len(a)} usable rows cannot fit {k} coefficients")
    if np.linalg.matrix_rank(a) < k:
        raise ValueError(f"predictors {names} are collinear; drop one")
    beta = np.zeros(k)
    converged = False
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        prob = special.expit(a @ beta)
        w = prob * (1 - prob)
        info = a.T @ (a * w[:, None])
        try:
            step = np.linalg.solve(info, a.T @ (t - prob))
        except np.linalg.LinAlgError:
            break  # the weights vanished: fitted probabilities at 0 or 1 (separation)
        beta = beta + step
        if np.max(np.abs(step)) < tol * (1 + np.max(np.abs(beta))):
            converged = True
            break
    eta = a @ beta
    # log-likelihood sum(y * eta - log(1 + e^eta)), stably
    log_lik = float(np.sum(t * eta - np.logaddexp(0, eta)))
    prob = special.expit(eta)
    info = a.T @ (a * (prob * (1 - prob))[:, None])
    try:
        se = np.sqrt(np.diag(np.linalg.inv(info)))
    except np.linalg.LinAlgError:
        se = np.full(k, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = beta / se
    p = 2 * stats.norm.sf(np.abs(z))
    return LogisticFit(
        tuple(names),
        tuple(map(float, beta)),
        tuple(map(float, se)),
        tuple(map(float, z)),
        tuple(map(float, p)),
        len(a),
        log_lik,
        converged,
        iterations,
    )


def _zscore(v: np.ndarray) -> np.ndarray:
    sd = np.nanstd(v)
    return (v - np.nanmean(v)) / sd if sd > 0 else v - np.nanmean(v)


def decay_vs_error(
    score: Float[np.ndarray, " n"] | Sequence[float],
    correct: Bool[np.ndarray, " n"] | Sequence[bool],
    count: Sequence[int] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """One score against one digit's correctness: AUROC with interval, and a logistic fit.

    The fit is `correct ~ 1 + z(score) + z(count)`, both predictors z-scored over the
    samples used, so `score`'s coefficient is the change in log-odds of a right digit per
    standard deviation of the score at a fixed count. When the count does not vary it
    is left out of the fit. Samples with a missing score (or a missing outcome, None) are
    left out.

    Returns:
        `{"n", "accuracy", "auroc": Auroc.as_dict(), "logistic": LogisticFit.as_dict() | None,
        "score_coef", "score_p"}`; the fit is None when it cannot be made (one class only,
        too few samples), and the two numbers are NaN then or when it did not converge
        (separation: e.g. one wrong digit in 256 that has the lowest score).
    """
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    raw = list(correct)
    c = np.asarray(count, dtype=np.float64).reshape(-1)
    if not len(s) == len(raw) == len(c):
        raise ValueError(f"{len(s)} scores, {len(raw)} outcomes and {len(c)} counts")
    keep = np.array([v is not None for v in raw]) & np.isfinite(s) & np.isfinite(c)
    y = np.array([bool(v) for v, k in zip(raw, keep) if k], dtype=bool)
    s, c = s[keep], c[keep]
    result = auroc(s, y, n_boot=n_boot, level=level, seed=seed)
    fit = None
    if 0 < y.sum() < len(y):
        columns, names = [_zscore(s)], ["score"]
        if np.ptp(c) > 0:
            columns.append(_zscore(c))
            names.append("count")
        try:
            fit = logistic_fit(np.stack(columns, axis=1), y, names)
        except ValueError:
            fit = None
    usable = fit is not None and fit.converged
    return {
        "n": int(len(y)),
        "accuracy": float(y.mean()) if len(y) else math.nan,
        "auroc": result.as_dict(),
        "logistic": None if fit is None else fit.as_dict(),
        "score_coef": fit["score"]["coef"] if usable else math.nan,
        "score_p": fit["score"]["p_value"] if usable else math.nan,
    }
