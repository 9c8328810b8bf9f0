"""harness.stats against hand-computed values."""

import math

import numpy as np
import pytest

from harness.stats import (
    bootstrap_ci,
    compare_paired,
    mcnemar_exact,
    paired_bootstrap,
    paired_flips,
    wilson_ci,
)


def test_wilson_ci_hand_values():
    # 50/100: center 0.5, half-width z/(1+z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2)) = 0.096170
    lo, hi = wilson_ci(50, 100)
    assert lo == pytest.approx(0.403830, abs=1e-5) and hi == pytest.approx(0.596170, abs=1e-5)
    # 0/10: lower bound exactly 0, upper z^2/(n+z^2) = 3.8415/13.8415 = 0.27753
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-5)
    lo, hi = wilson_ci(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.277533, abs=1e-5)
    assert wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_ci(11, 10)


def test_mcnemar_exact_hand_values():
    # b=1, c=9: 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375, abs=1e-12)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5) == 1.0  # capped
    assert mcnemar_exact(0, 0) == 1.0
    # large n stays finite and matches the normal approximation's order
    p = mcnemar_exact(400, 500)
    z = (500 - 400) / math.sqrt(900)
    assert 0.5 * math.erfc(z / math.sqrt(2)) * 2 == pytest.approx(p, rel=0.15)


def _recs(correct, prefix="q"):
    return [{"id": f"{prefix}{i}", "correct": c} for i, c in enumerate(correct)]


def test_paired_flips_counts_and_pairing():
    a = _recs([True, True, False, False, True]) + [{"id": "only_a", "correct": True}]
    b = _recs([True, False, True, False, False]) + [{"id": "only_b", "correct": False}]
    f = paired_flips(a, b)
    assert f == {"right_to_wrong": 2, "wrong_to_right": 1, "both_right": 1, "both_wrong": 1, "n_paired": 5}
    # order of records does not matter, only ids
    assert paired_flips(list(reversed(a)), b) == f


def test_bootstrap_ci_constant_and_binary():
    assert bootstrap_ci([2.0] * 20) == (2.0, 2.0)
    lo, hi = bootstrap_ci([1] * 50 + [0] * 50, n_boot=4000)
    # close to the Wilson / normal interval 0.5 +- 0.098
    assert lo == pytest.approx(0.40, abs=0.02) and hi == pytest.approx(0.60, abs=0.02)
    assert bootstrap_ci([1, 0, 1], seed=3) == bootstrap_ci([1, 0, 1], seed=3)


def test_paired_bootstrap():
    a = np.zeros(30)
    r = paired_bootstrap(a, a + 0.5)
    assert r["delta"] == 0.5 and r["delta_ci95"] == [0.5, 0.5] and r["p_value"] == 0.0
    r = paired_bootstrap(a, a)
    assert r["delta"] == 0.0 and r["p_value"] == 1.0
    # noisy: the CI width follows sd/sqrt(n) of the differences (paired, not of the raw values)
    rng = np.random.default_rng(0)
    base = rng.normal(0, 10, 400)  # large between-item variance, removed by pairing
    d = rng.normal(0.1, 1.0, 400)
    r = paired_bootstrap(base, base + d, n_boot=4000)
    half = (r["delta_ci95"][1] - r["delta_ci95"][0]) / 2
    assert half == pytest.approx(1.96 * d.std() / math.sqrt(400), rel=0.1)
    assert r["delta"] == pytest.approx(d.mean())
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1])


def test_compare_paired_summary():
    # 100 items: a right on 60; b loses 9 of those and gains 1 -> b=9, c=1 flips
    a_c = [True] * 60 + [False] * 40
    b_c = [True] * 51 + [False] * 9 + [True] + [False] * 39
    a = [dict(r, kl=0.0) for r in _recs(a_c)]
    b = [dict(r, kl=0.1 + 0.01 * i) for i, r in enumerate(_recs(b_c))]
    out = compare_paired(a, b, metric="kl", n_boot=2000)
    assert out["n_paired"] == 100
    assert out["acc_a"] == 0.6 and out["acc_b"] == 0.52
    assert out["right_to_wrong"] == 9 and out["wrong_to_right"] == 1
    assert out["mcnemar_p"] == pytest.approx(0.021484375)
    assert out["delta_acc"] == pytest.approx(-0.08)
    assert out["delta_acc_ci95"][0] < -0.08 < out["delta_acc_ci95"][1] < 0
    assert out["acc_a_ci95"] == pytest.approx(list(wilson_ci(60, 100)))
    assert out["kl"]["delta"] == pytest.approx(0.1 + 0.01 * 99 / 2)
    # records without "correct": only the metric is compared
    out = compare_paired([{"id": 1, "kl": 0.0}], [{"id": 1, "kl": 1.0}], metric="kl")
    assert out["n_paired"] == 0 and out["kl"]["delta"] == 1.0
