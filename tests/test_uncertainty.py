"""Spread and calibration of score distributions, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from pronlm.evaluation.uncertainty import calibration, spread


def test_spread_of_a_sure_score_is_one_value_wide():
    probs = [0.0] * 11
    probs[7] = 1.0
    s = spread(probs)
    assert (s.mean, s.sd, s.low, s.high) == (7.0, 0.0, 7, 7)


def test_spread_of_two_values_is_hand_computed():
    probs = [0.0] * 11
    probs[7], probs[8] = 0.25, 0.75  # mean 7.75, variance 0.25*0.75 = 0.1875
    s = spread(probs)
    assert s.mean == pytest.approx(7.75) and s.sd == pytest.approx(math.sqrt(0.1875), abs=1e-4)
    assert (s.low, s.high) == (7, 8)  # cumulative 0.25 >= 0.10 at 7; 1.0 >= 0.90 at 8


def test_the_interval_is_the_10th_to_90th_percentile():
    # cumulative: 0.05 (v=4), 0.15 (5), 0.55 (6), 0.85 (7), 0.95 (8), 1.0 (9)
    probs = [0, 0, 0, 0, 0.05, 0.10, 0.40, 0.30, 0.10, 0.05, 0]
    s = spread(probs)
    assert (s.low, s.high) == (5, 8)
    assert s.mean == pytest.approx(4 * .05 + 5 * .1 + 6 * .4 + 7 * .3 + 8 * .1 + 9 * .05)
    # a percentile reached exactly: cumulative 0.10 at 3 and 0.90 at 6
    exact = [0, 0, 0, 0.10, 0.30, 0.30, 0.20, 0.10, 0, 0, 0]
    assert (spread(exact).low, spread(exact).high) == (3, 6)


def test_uniform_distribution_spread():
    s = spread([1.0] * 11)  # unnormalised weights are normalised
    assert s.mean == pytest.approx(5.0) and s.sd == pytest.approx(math.sqrt(10.0), abs=1e-4)
    assert (s.low, s.high) == (1, 9)  # cumulative 2/11 at 1 (1/11 < 0.1); 10/11 at 9 (9/11 < 0.9)


def test_calibration_coverage_and_width_on_set_intervals():
    pairs = [(7, (6, 8)), (9, (6, 8)), (5, (5, 5)), (3, (4, 9)), (8, (8, 10))]
    cal = calibration(pairs)  # inside: 7 in [6,8], 5 in [5,5], 8 in [8,10] -> 3 of 5
    assert cal == {"coverage": 0.6, "mean_width": (2 + 2 + 0 + 5 + 2) / 5, "n": 5}
    assert calibration([]) == {"coverage": None, "mean_width": None, "n": 0}


def test_coverage_is_the_interval_mass_when_humans_follow_the_model():
    """Human scores spread (exactly, by counts) as the model's own distribution fall inside an interval
    as often as the mass it holds: 0.9 for the percentile interval (a value straddles the 10th
    percentile), 0.8 for [6, 8]."""
    probs = [0, 0, 0, 0, 0, 0.1, 0.2, 0.4, 0.2, 0.1, 0]
    s = spread(probs)
    assert (s.low, s.high) == (5, 8)  # cumulative 0.1 at 5 reaches the 10th percentile exactly
    humans = [v for v, p in enumerate(probs) for _ in range(round(p * 100))]
    cal = calibration([(h, (s.low, s.high)) for h in humans])
    assert cal["coverage"] == pytest.approx(0.9)  # 5..8 holds 0.9 of the mass: percentiles on a grid
    narrow = calibration([(h, (6, 8)) for h in humans])
    assert narrow["coverage"] == pytest.approx(0.8)
