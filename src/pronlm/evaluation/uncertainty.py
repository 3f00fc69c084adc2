"""How sure each score is: the spread of a score's 11-value distribution, and calibration against humans.

The model gives, where it writes a score, a probability for each value 0..10 (the softmax over the
11 value tokens, `pronlm.evaluation.grammar.score_distributions`). Its mean is `scores_expected`;
this module adds the standard deviation and an 80 % interval, and measures on a split how often the
human score falls inside that interval (pure functions: values in, values out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INTERVAL = 0.80  # the central interval reported beside every expected score
_TAIL = (1 - INTERVAL) / 2  # 0.10 below, 0.10 above


@dataclass(frozen=True)
class Spread:
    """Mean, standard deviation and the 80 % interval [low, high] of one score's distribution."""

    mean: float
    sd: float
    low: int
    high: int


def spread(probs, values=None) -> Spread:
    """The spread of a discrete score distribution (`probs[k]` for the value `values[k]`, default k).

    The interval is [10th percentile, 90th percentile] of the discrete distribution: `low` is the
    smallest value whose cumulative probability reaches 0.10, `high` the smallest whose cumulative
    probability reaches 0.90. It holds at least 80 % of the mass (more when a value straddles a
    percentile), and is one value wide when the model is sure. `probs` need not sum to 1 (normalised).
    """
    values = list(range(len(probs))) if values is None else list(values)
    total = float(sum(probs))
    p = [float(x) / total for x in probs]
    mean = sum(v * q for v, q in zip(values, p))
    sd = math.sqrt(max(0.0, sum(q * (v - mean) ** 2 for v, q in zip(values, p))))
    return Spread(round(mean, 4), round(sd, 4), _percentile(values, p, _TAIL), _percentile(values, p, 1 - _TAIL))


def _percentile(values: list, p: list[float], level: float) -> int:
    cumulative = 0.0
    for v, q in zip(values, p):
        cumulative += q
        if cumulative >= level - 1e-9:  # float sums of probabilities that reach the level exactly
            return v
    return values[-1]


def calibration(pairs: list[tuple[float, tuple[float, float]]]) -> dict:
    """Coverage and width of 80 % intervals over (human score, (low, high)) pairs of one aspect.

    `coverage`: the share of human scores inside their interval, ends included (ideal 0.80: lower
    means over-confident, higher under-confident); `mean_width`: the mean of high - low (0 for an
    interval of one value); `n`: the pairs counted. None values when there are no pairs.
    """
    if not pairs:
        return {"coverage": None, "mean_width": None, "n": 0}
    inside = sum(low <= human <= high for human, (low, high) in pairs)
    width = sum(high - low for _, (low, high) in pairs)
    return {"coverage": round(inside / len(pairs), 4), "mean_width": round(width / len(pairs), 4), "n": len(pairs)}
