"""Intervals and rates against published values and their defining properties."""
from __future__ import annotations

import math

import pytest

from rapo_ray.eval.stats import bootstrap_interval, fmt_rate, rate, summary, wilson_interval, z_value


@pytest.mark.parametrize("k,n,conf,low,high", [
    # Published Wilson score intervals (e.g. Brown, Cai & DasGupta 2001; Newcombe 1998, Table I).
    (5, 10, 0.95, 0.2366, 0.7634),
    (0, 10, 0.95, 0.0, 0.2775),
    (10, 10, 0.95, 0.7225, 1.0),
    (81, 263, 0.95, 0.2553, 0.3662),  # Newcombe's 81/263 example: 0.2553 to 0.3662
    (15, 148, 0.95, 0.0624, 0.1605),  # Newcombe's 15/148 example: 0.0624 to 0.1605
    (1, 29, 0.95, 0.0061, 0.1718),  # Newcombe's 1/29 example: 0.0061 to 0.1718
])
def test_wilson_known_values(k, n, conf, low, high):
    lo, hi = wilson_interval(k, n, conf)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_properties():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_value(0.90) == pytest.approx(1.644854, abs=1e-6)
    lo95, hi95 = wilson_interval(30, 100, 0.95)
    lo90, hi90 = wilson_interval(30, 100, 0.90)
    assert lo95 < lo90 < 0.3 < hi90 < hi95  # a lower confidence gives a narrower interval around p
    assert wilson_interval(300, 1000)[1] - wilson_interval(300, 1000)[0] < hi95 - lo95  # more data, narrower
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        z_value(1.0)


def test_bootstrap_interval():
    values = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_interval(values, 0.95, 4000, seed=1)
    assert lo < 0.3 < hi
    assert lo == pytest.approx(0.21, abs=0.03) and hi == pytest.approx(0.39, abs=0.03)  # ~ normal approximation
    assert bootstrap_interval(values, 0.95, 4000, seed=1) == (lo, hi)  # seeded: reproducible
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_interval([]))


def test_rate_and_format():
    r = rate([True, False, True, True], method="wilson")
    assert (r.k, r.n, r.rate, r.method) == (3, 4, 0.75, "wilson")
    assert (r.low, r.high) == pytest.approx(wilson_interval(3, 4))
    b = rate([True, False, True, True], method="bootstrap", samples=500, seed=0)
    assert b.method == "bootstrap" and 0.0 <= b.low <= 0.75 <= b.high <= 1.0
    d = rate([], method="wilson").to_dict()
    assert d["n"] == 0 and d["rate"] is None and d["low"] is None  # JSON-safe: no NaN
    assert fmt_rate(d) == "-"
    assert fmt_rate(rate([True, False]).to_dict()) == "50.0% [9.5, 90.5] (n=2)"
    with pytest.raises(ValueError, match="unknown interval"):
        rate([True], method="exact")


def test_summary():
    assert summary([1, 2, 3, 10]) == {"n": 4, "mean": 4.0, "median": 2.5, "std": pytest.approx(3.5355, abs=1e-4),
                                      "p25": 1.75, "p75": 4.75, "min": 1.0, "max": 10.0}
    assert summary([])["mean"] is None
