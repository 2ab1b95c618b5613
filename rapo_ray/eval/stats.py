"""Rates with confidence intervals (Wilson score; percentile bootstrap) and simple summaries. Pure functions."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of a confidence level (0.95 -> 1.95996...)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k/n; (nan, nan) when n == 0."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return math.nan, math.nan
    z = z_value(confidence)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, samples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeded); (nan, nan) when empty."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


@dataclass(frozen=True)
class Rate:
    """k successes out of n, with an interval (``method``: wilson or bootstrap) at ``confidence``."""

    k: int
    n: int
    rate: float
    low: float
    high: float
    method: str
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (nan becomes None)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}



def rate(flags: Sequence[bool], confidence: float = 0.95, method: str = "wilson", samples: int = 2000,
         seed: int = 0) -> Rate:
    """The share of true ``flags`` with its interval; rate and bounds are nan when there are no flags."""
    k, n = sum(bool(f) for f in flags), len(flags)
    if method == "wilson":
        low, high = wilson_interval(k, n, confidence)
    elif method == "bootstrap":
        low, high = bootstrap_interval([float(bool(f)) for f in flags], confidence, samples, seed)
    else:
        raise ValueError(f"unknown interval method {method!r} (wilson or bootstrap)")
    return Rate(k=k, n=n, rate=k / n if n else math.nan, low=low, high=high, method=method, confidence=confidence)


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """n, mean, median, std (population), quartiles (linear interpolation) and min/max of ``values``; None
    statistics when empty."""
    if not values:
        return {"n": 0, **dict.fromkeys(("mean", "median", "std", "p25", "p75", "min", "max"))}
    q25, q75 = np.quantile(np.asarray(values, dtype=float), [0.25, 0.75])
    return {"n": len(values), "mean": float(statistics.fmean(values)), "median": float(statistics.median(values)),
            "std": float(statistics.pstdev(values)), "p25": float(q25), "p75": float(q75),
            "min": float(min(values)), "max": float(max(values))}


def fmt_rate(d: dict[str, Any] | None) -> str:
    """A rate dict (``Rate.to_dict``) as ``41.0% [31.2, 51.5] (n=100)``; ``-`` when absent or n == 0."""
    if not d or not d.get("n"):
        return "-"
    return f"{100 * d['rate']:.1f}% [{100 * d['low']:.1f}, {100 * d['high']:.1f}] (n={d['n']})"
