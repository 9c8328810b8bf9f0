"""Confidence intervals and paired tests for comparing recipes item by item.

Every accuracy gets a Wilson 95 % interval (good at small n and near 0/1, where
the normal approximation is not). Two runs on the same items are compared
paired: the flips (right->wrong, wrong->right) and McNemar's exact test on them
for correct/incorrect items; for continuous per-item metrics (KL, NLL, ...) a
paired bootstrap, or below MIN_BOOTSTRAP_N pairs an exact sign-flip permutation
test (a bootstrap from 4 items reports "p < 0.001" for any consistent shift; the
exact test knows that 4 pairs can never reach p < 0.05). Pairing removes the
between-item variance that dominates an unpaired comparison, so small real
differences show up.

The numbers come from scipy.stats (binomtest, bootstrap, permutation_test); the
bootstrap draws the same resamples as the hand-written version it replaced, so
stored p-values and intervals are unchanged. Records are the suites' per-item
dicts; pairing is on "id".
"""

import math
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from scipy import stats as sps

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
BOOTSTRAP_CHUNK = 1000  # resamples per vectorised step (bounds memory; part of the resample stream)
MIN_BOOTSTRAP_N = 10  # fewer pairs: exact tests only (a bootstrap of a handful of items is overconfident)
EXACT_MAX_N = 20  # the exact permutation test enumerates 2**n sign patterns


def wilson_ci(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (95 % by default).

    n == 0 gives (0.0, 1.0): no items, no information.
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n, got k={k}, n={n}")
    level = 1 - 2 * sps.norm.sf(z)
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    lo = 0.0 if k == 0 else max(0.0, float(ci.low))  # exact ends, no rounding noise
    hi = 1.0 if k == n else min(1.0, float(ci.high))
    return (lo, hi)


def _bootstrap(values: Sequence[np.ndarray], statistic: Callable, n_boot: int, seed: int, level: float):
    """scipy's percentile bootstrap over item indices; batch=BOOTSTRAP_CHUNK keeps
    the resample stream (rng.integers per chunk) identical to the old code."""
    return sps.bootstrap(tuple(values), statistic, n_resamples=n_boot, batch=BOOTSTRAP_CHUNK,
                         confidence_level=level, method="percentile", rng=np.random.default_rng(seed),
                         vectorized=True, paired=len(values) > 1)


def bootstrap_ci(
    values: Iterable[float],
    statistic: Callable = np.mean,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(values) (mean by default).

    `statistic` must accept an axis argument (np.mean, np.median, ...).
    """
    v = np.asarray(list(values), dtype=np.float64)
    if len(v) == 0:
        return (float("nan"), float("nan"))
    if np.all(v == v[0]):  # scipy warns on a degenerate distribution; the interval is the value
        s = float(statistic(v[None, :], axis=1)[0])
        return (s, s)
    ci = _bootstrap([v], lambda x, axis: statistic(x, axis=axis), n_boot, seed, level).confidence_interval
    return (float(ci.low), float(ci.high))


def _by_id(records: Iterable[dict]) -> dict:
    return {r["id"]: r for r in records if "id" in r}


def paired_flips(a_records: Iterable[dict], b_records: Iterable[dict]) -> dict:
    """Count how items changed from run a to run b, on items both runs scored.

    right_to_wrong: correct in a, wrong in b (b lost it); wrong_to_right: the
    reverse. Items missing "correct" in either run are not paired.
    """
    a, b = _by_id(a_records), _by_id(b_records)
    counts = {"right_to_wrong": 0, "wrong_to_right": 0, "both_right": 0, "both_wrong": 0}
    for item_id, ra in a.items():
        rb = b.get(item_id)
        if rb is None or "correct" not in ra or "correct" not in rb:
            continue
        ca, cb = bool(ra["correct"]), bool(rb["correct"])
        key = {(True, False): "right_to_wrong", (False, True): "wrong_to_right",
               (True, True): "both_right", (False, False): "both_wrong"}[(ca, cb)]
        counts[key] += 1
    counts["n_paired"] = sum(counts.values())
    return counts


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs.

    Under H0 each discordant pair is a fair coin: p = 2 P(X <= min(b, c)),
    X ~ Binomial(b + c, 1/2), capped at 1. No discordant pairs -> 1.0.
    """
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, float(sps.binomtest(min(b, c), n, 0.5).pvalue))


def min_attainable_p(n: int) -> float:
    """The smallest two-sided p an exact paired test (McNemar, sign, sign-flip
    permutation) can give with n pairs: every pair moving the same way, 2 / 2**n.
    When it is >= alpha the test cannot tell anything, whatever the data."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2.0 ** n)


def sign_flip_exact(a_values: Sequence[float], b_values: Sequence[float]) -> float:
    """Exact two-sided permutation p of mean(b - a) == 0 under random sign flips of
    the paired differences (every one of the 2**n patterns enumerated)."""
    d = np.asarray(b_values, dtype=np.float64) - np.asarray(a_values, dtype=np.float64)
    if len(d) == 0 or np.all(d == 0):
        return 1.0
    if len(d) > EXACT_MAX_N:
        raise ValueError(f"sign_flip_exact enumerates 2**n patterns; n={len(d)} > {EXACT_MAX_N}")
    res = sps.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                               n_resamples=np.inf, vectorized=True, alternative="two-sided")
    return min(1.0, float(res.pvalue))


def paired_bootstrap(
    a_values: Sequence[float],
    b_values: Sequence[float],
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Paired bootstrap of mean(b) - mean(a) over items (a_values[i] pairs b_values[i]).

    Returns {mean_a, mean_b, delta, delta_ci95, p_value}; p_value is the
    two-sided percentile-bootstrap p: twice the share of resampled deltas on
    the far side of zero (1.0 when every item is unchanged). Callers that
    decide on the p-value use paired_test, which switches to an exact test
    below MIN_BOOTSTRAP_N pairs.
    """
    a = np.asarray(a_values, dtype=np.float64)
    b = np.asarray(b_values, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs equal lengths, got {a.shape} and {b.shape}")
    if len(a) == 0:
        return {"mean_a": None, "mean_b": None, "delta": None, "delta_ci95": None, "p_value": None, "n": 0}
    d = b - a
    if np.all(d == d[0]):  # every resample is the same delta (scipy warns on a degenerate distribution)
        deltas, lo, hi = np.full(n_boot, d.mean()), d.mean(), d.mean()
    else:
        res = _bootstrap([d], lambda x, axis: x.mean(axis=axis), n_boot, seed, level)
        deltas, lo, hi = res.bootstrap_distribution, res.confidence_interval.low, res.confidence_interval.high
    if np.all(d == 0):
        p = 1.0
    else:
        p = min(1.0, 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0)))
    return {
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "delta": float(d.mean()),
        "delta_ci95": [float(lo), float(hi)],
        "p_value": float(p),
        "n": int(len(a)),
    }


def paired_test(a_values: Sequence[float], b_values: Sequence[float], n_boot: int = 5000, seed: int = 0) -> dict:
    """The test a comparison reports for paired per-item values:

    binary values (0/1) -> exact McNemar on the flips; other values -> exact
    sign-flip permutation below MIN_BOOTSTRAP_N pairs, paired bootstrap from there.
    Returns {"p", "test", "n", "lost", "gained", "min_p"}; min_p is the smallest p
    the test could give at this n (>= alpha: too few items to tell).
    """
    a = [float(x) for x in a_values]
    b = [float(x) for x in b_values]
    n = len(a)
    if n == 0:
        return {"p": None, "test": "-", "n": 0, "lost": None, "gained": None, "min_p": 1.0}
    if all(x in (0.0, 1.0) for x in a + b):
        down = sum(1 for x, y in zip(a, b) if x > y)
        up = sum(1 for x, y in zip(a, b) if y > x)
        return {"p": mcnemar_exact(down, up), "test": "McNemar exact", "n": n, "down": down, "up": up,
                "min_p": min_attainable_p(n)}
    if n < MIN_BOOTSTRAP_N:
        return {"p": sign_flip_exact(a, b), "test": "exact permutation", "n": n, "min_p": min_attainable_p(n)}
    return {"p": paired_bootstrap(a, b, n_boot=n_boot, seed=seed)["p_value"], "test": "paired bootstrap", "n": n,
            "min_p": 0.0}


def compare_paired(
    a_records: Iterable[dict],
    b_records: Iterable[dict],
    metric: Optional[str] = None,
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict:
    """Everything a report shows for run b against run a (e.g. a recipe vs float).

    Correct/incorrect records (the "correct" key): accuracies with Wilson CIs,
    flips, McNemar exact p and a paired-bootstrap CI of the accuracy change.
    With `metric` (a numeric per-item key such as "kl"): a paired bootstrap of
    its mean change. Only items present in both runs are compared.
    """
    a, b = _by_id(a_records), _by_id(b_records)
    ids = sorted(set(a) & set(b))
    paired = [i for i in ids if "correct" in a[i] and "correct" in b[i]]
    out: dict = {"n_a": len(a), "n_b": len(b), "n_paired": len(paired)}
    if paired:
        flips = paired_flips([a[i] for i in paired], [b[i] for i in paired])
        ca = np.array([bool(a[i]["correct"]) for i in paired], dtype=np.float64)
        cb = np.array([bool(b[i]["correct"]) for i in paired], dtype=np.float64)
        n, ka, kb = len(paired), int(ca.sum()), int(cb.sum())
        boot = paired_bootstrap(ca, cb, n_boot=n_boot, seed=seed)
        out.update(
            {
                "acc_a": ka / n,
                "acc_a_ci95": list(wilson_ci(ka, n)),
                "acc_b": kb / n,
                "acc_b_ci95": list(wilson_ci(kb, n)),
                "delta_acc": boot["delta"],
                "delta_acc_ci95": boot["delta_ci95"],
                "right_to_wrong": flips["right_to_wrong"],
                "wrong_to_right": flips["wrong_to_right"],
                "mcnemar_p": mcnemar_exact(flips["right_to_wrong"], flips["wrong_to_right"]),
            }
        )
    if metric is not None:
        both = [
            i for i in ids
            if isinstance(a[i].get(metric), (int, float)) and isinstance(b[i].get(metric), (int, float))
        ]
        boot = paired_bootstrap(
            [a[i][metric] for i in both], [b[i][metric] for i in both], n_boot=n_boot, seed=seed
        )
        out[metric] = boot
    return out
