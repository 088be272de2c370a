"""Statistics for human judgements: Krippendorff's alpha and the Wilson score interval.

Krippendorff's alpha follows K. Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011,
repository.upenn.edu/asc_papers/43), section C (any number of coders, missing values, any metric):

    alpha = 1 - (n - 1) * sum_ck o_ck d2_ck / sum_ck n_c n_k d2_ck

where o_ck is the coincidence matrix (each unit with m_u >= 2 values adds every ordered pair of
its values with weight 1 / (m_u - 1)), n_c its row sums, n the number of pairable values, and
d2_ck the squared difference of the metric. Higher is better; 1 is perfect agreement, 0 is
chance, and Krippendorff suggests relying on alpha >= 0.8 and drawing tentative conclusions from
0.667 on.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Literal

import numpy as np

from feedbackgen.errors import ConfigError

Metric = Literal["nominal", "ordinal", "interval", "ratio"]


def _squared_differences(values: list, marginals: np.ndarray, metric: Metric) -> np.ndarray:
    """d2_ck for every pair of the (sorted) distinct values."""
    v = len(values)
    if metric == "nominal":
        return 1.0 - np.eye(v)
    if metric == "ordinal":
        # (sum of n_g for g from c to k) - (n_c + n_k) / 2, squared: ranks, not distances, count
        cum = np.concatenate([[0.0], np.cumsum(marginals)])
        c, k = np.meshgrid(np.arange(v), np.arange(v), indexing="ij")
        lo, hi = np.minimum(c, k), np.maximum(c, k)
        return (cum[hi + 1] - cum[lo] - (marginals[c] + marginals[k]) / 2.0) ** 2
    x = np.asarray(values, dtype=np.float64)
    diff = x[:, None] - x[None, :]
    if metric == "interval":
        return diff ** 2
    if metric == "ratio":
        total = x[:, None] + x[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total == 0, 0.0, (diff / np.where(total == 0, 1.0, total)) ** 2)
    raise ConfigError(f"unknown metric {metric!r}; expected nominal, ordinal, interval or ratio")


def coincidences(units: Iterable[Sequence[Hashable]]) -> tuple[list, np.ndarray]:
    """(sorted distinct values, coincidence matrix o_ck) over the units with at least two values."""
    pairable = [list(u) for u in units if len(u) >= 2]
    values = sorted({x for u in pairable for x in u})
    index = {x: i for i, x in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for unit in pairable:
        counts = np.bincount([index[x] for x in unit], minlength=len(values)).astype(np.float64)
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    return values, o


def krippendorff_alpha(units: Iterable[Sequence[Hashable]], metric: Metric = "nominal") -> float | None:
    """Krippendorff's alpha for `units`: per unit, the values its coders gave (missing ones left out).

    Units with fewer than two values cannot be paired and are ignored. Returns None when alpha is
    undefined: no unit was coded twice, or every pairable value is the same (no variation to agree on).
    """
    values, o = coincidences(units)
    marginals = o.sum(axis=1)
    n = marginals.sum()
    if n < 2:
        return None
    d2 = _squared_differences(values, marginals, metric)
    expected = float((np.outer(marginals, marginals) * d2).sum())
    if expected == 0.0:
        return None
    observed = float((o * d2).sum())
    return 1.0 - (n - 1.0) * observed / expected


Z_95 = 1.959963984540054


def wilson_interval(successes: float, trials: float, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (E. B. Wilson, JASA 1927); None when `trials` is 0."""
    if trials <= 0:
        return None
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(xs: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean; None with fewer than two values."""
    if len(xs) < 2:
        return None
    from scipy.stats import t

    a = np.asarray(xs, dtype=np.float64)
    half = float(t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return float(a.mean()) - half, float(a.mean()) + half
