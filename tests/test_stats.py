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


# Values of the hand-written implementation these functions replaced (commit e2a0c67), pinned: the
# scipy-backed versions must give the same numbers (bootstrap: the same resamples, bit for bit).
OLD_WILSON = {(0, 1): (0.0, 0.7934506856227626), (1, 1): (0.20654931437723745, 1.0),
              (3, 7): (0.15821985525146975, 0.7495416354723428), (50, 100): (0.4038315303659956, 0.5961684696340044),
              (0, 10): (0.0, 0.2775327998628892), (10, 10): (0.7224672001371107, 1.0),
              (123, 456): (0.23104962756216274, 0.3122712366796905), (1, 3): (0.06149194472039615, 0.7923403991979523)}
OLD_MCNEMAR = {(0, 1): 1.0, (1, 9): 0.021484375, (3, 4): 1.0, (0, 6): 0.03125, (20, 35): 0.058064146792409066,
               (400, 500): 0.0009564441369189461, (7, 0): 0.015625}


def test_values_identical_to_the_hand_written_versions():
    for (k, n), (lo, hi) in OLD_WILSON.items():
        got = wilson_ci(k, n)
        assert got[0] == pytest.approx(lo, rel=1e-12, abs=1e-15) and got[1] == pytest.approx(hi, rel=1e-12)
    for (b, c), p in OLD_MCNEMAR.items():
        assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)
    rng = np.random.default_rng(5)
    v = rng.normal(0, 1, 37)
    assert bootstrap_ci(v, n_boot=3000, seed=2) == (-0.5474530415452328, -0.02045015577756749)
    assert bootstrap_ci(v, statistic=np.median, n_boot=2500, seed=1) == (-0.7133133716322436, -0.03788574104406823)
    a = rng.normal(3, 1, 50)
    b = a + rng.normal(0.1, 0.3, 50)
    r = paired_bootstrap(a, b, n_boot=5000, seed=0)
    assert r["delta_ci95"] == [0.030261281105523605, 0.17266178125946413] and r["p_value"] == 0.0076
    assert r["delta"] == pytest.approx(0.09937648913022926, rel=1e-12)
    r = paired_bootstrap(a[:12], b[:12], n_boot=10000, seed=0)
    assert r["delta_ci95"] == [-0.12116653645960887, 0.1284779952342349] and r["p_value"] == 0.9536


def test_small_n_uses_exact_tests():
    from harness.stats import MIN_BOOTSTRAP_N, min_attainable_p, paired_test, sign_flip_exact

    # 4 pairs, the same shift on every item: a bootstrap says p = 0 ("p < 0.001"); the exact
    # sign-flip test knows only 2 of the 16 sign patterns are this extreme: p = 0.125
    a = [20.0, 21.0, 19.5, 22.0]
    b = [x + 0.5 for x in a]
    assert paired_bootstrap(a, b)["p_value"] == 0.0
    t = paired_test(a, b)
    assert t["test"] == "exact permutation" and t["p"] == pytest.approx(0.125) and t["min_p"] == 0.125
    assert paired_test(a, a)["p"] == 1.0  # identical numbers: nothing to see
    # exact permutation p by hand: d = [1, 2, 3, -1]; |mean| >= 1.25 for the patterns with sums >= 5 or <= -5
    d = [1.0, 2.0, 3.0, -1.0]
    sums = [sum(s * x for s, x in zip(signs, d)) for signs in
            [[(m >> i & 1) * 2 - 1 for i in range(4)] for m in range(16)]]
    expected = sum(abs(s) >= 5 - 1e-12 for s in sums) / 16
    assert sign_flip_exact([0.0] * 4, d) == pytest.approx(expected)
    assert min_attainable_p(5) == 2 / 32 and min_attainable_p(6) == 2 / 64  # 6 pairs: first n that can tell
    # binary values: exact McNemar; from MIN_BOOTSTRAP_N pairs on, the bootstrap as before
    assert paired_test([1, 1, 0, 1], [0, 1, 0, 0])["test"] == "McNemar exact"
    many = paired_test(list(range(MIN_BOOTSTRAP_N)), [x + 0.1 * (x % 3) for x in range(MIN_BOOTSTRAP_N)])
    assert many["test"] == "paired bootstrap" and many["min_p"] == 0.0
