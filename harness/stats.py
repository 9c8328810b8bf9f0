"""Confidence intervals and paired tests for comparing recipes item by item.

Every accuracy gets a Wilson 95 % interval (good at small n and near 0/1, where
the normal approximation is not). Two runs on the same items are compared
paired: the flips (right->wrong, wrong->right) and McNemar's exact test on them
for correct/incorrect items, a paired bootstrap for continuous per-item metrics
(KL, NLL, ...). Pairing removes the between-item variance that dominates an
unpaired comparison, so small real differences show up.

Records are the suites' per-item dicts; pairing is on "id".
"""

import math
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
BOOTSTRAP_CHUNK = 1000  # resamples per vectorised step (bounds memory)


def wilson_ci(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (95 % by default).

    n == 0 gives (0.0, 1.0): no items, no information.
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, center - half)  # exact ends, no rounding noise
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def _bootstrap_stats(
    arrays: Sequence[np.ndarray], statistic: Callable, n_boot: int, seed: int
) -> np.ndarray:
    """`statistic` over n_boot resamples of item indices (shared by all arrays,
    which is what makes a paired bootstrap paired). statistic gets arrays of
    shape (boots, n) and reduces axis 1."""
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        out.append(statistic(*(a[idx] for a in arrays)))
    return np.concatenate(out)


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
    stats = _bootstrap_stats([v], lambda x: statistic(x, axis=1), n_boot, seed)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return (float(lo), float(hi))


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
    k = min(b, c)
    # Exact integer tail, divided once: no float underflow for large n.
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


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
    the far side of zero (1.0 when every item is unchanged).
    """
    a = np.asarray(a_values, dtype=np.float64)
    b = np.asarray(b_values, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs equal lengths, got {a.shape} and {b.shape}")
    if len(a) == 0:
        return {"mean_a": None, "mean_b": None, "delta": None, "delta_ci95": None, "p_value": None, "n": 0}
    d = b - a
    deltas = _bootstrap_stats([d], lambda x: x.mean(axis=1), n_boot, seed)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(deltas, [alpha, 1 - alpha])
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
