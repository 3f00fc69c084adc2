"""Metrics against values computed by hand (SPEC §4)."""

from __future__ import annotations

import math
import warnings

import pytest

from pronlm.metrics import (MddCounts, align_to_canonical, bootstrap_ci, f1_ci, mdd_counts, mdd_labels, mse, pcc,
                            pcc_ci, per, per_ci, phone_errors, spearman, wer)

# ---------------------------------------------------------------- APA


def test_pcc_by_hand():
    # pred 1 2 3, human 1 3 2: deviations (-1,0,1) and (-1,1,0); r = 1 / sqrt(2*2) = 0.5.
    # t = 0.5*sqrt(1)/sqrt(0.75) = 1/sqrt(3); df 1 is Cauchy: p = 1 - 2/pi*atan(1/sqrt 3) = 1 - 1/3 = 2/3.
    r, p = pcc([1, 2, 3], [1, 3, 2])
    assert r == pytest.approx(0.5)
    assert p == pytest.approx(2 / 3)


def test_spearman_and_mse_by_hand():
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)  # ranks equal the values
    assert mse([1, 2, 3], [1, 3, 2]) == pytest.approx(2 / 3)  # (0 + 1 + 1) / 3


def test_constant_input_gives_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r, p = pcc([5, 5, 5], [1, 2, 3])
        assert math.isnan(r) and math.isnan(p)
        assert math.isnan(spearman([1, 2, 3], [7, 7, 7]))
        assert math.isnan(pcc([1], [2])[0])
        assert math.isnan(mse([], []))


def test_pcc_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="2 predictions but 3"):
        pcc([1, 2], [1, 2, 3])


# ---------------------------------------------------------------- WER, PER


def test_wer_normalises_case_and_punctuation():
    # "the cat sat" vs "the cat sit": 1 substitution; "hello world" vs "hello": 1 deletion; 2 / 5 words
    assert wer(["The cat sat.", "hello world"], ["the CAT sit", "Hello"]) == pytest.approx(0.4)
    assert wer(["It's fine!"], ["its fine"]) == 0.0


def test_wer_empty_hypothesis_is_all_deletions():
    assert wer(["a b c"], [""]) == 1.0


def test_per_is_corpus_level():
    # 1 deletion (AH) + 1 insertion (S) over 2 + 3 reference phones
    assert per([["DH", "AH"], ["K", "AE", "T"]], [["DH"], ["K", "AE", "T", "S"]]) == pytest.approx(0.4)
    assert phone_errors(["<unk>", "AH"], ["<unk>", "AA"]) == 1
    assert per([["DH", "AH"]], [[]]) == 1.0


# ---------------------------------------------------------------- MDD

ROAD = ["R", "OW", "D"]  # canonical; the speaker said L for R (003060259 in the real subset)
ROAD_HEARD = ["L", "OW", "D"]


def test_correct_diagnosis():
    assert mdd_labels(ROAD, ROAD_HEARD, ["L", "OW", "D"]) == ["CD", "TA", "TA"]


def test_diagnosis_error():
    assert mdd_labels(ROAD, ROAD_HEARD, ["W", "OW", "D"]) == ["DE", "TA", "TA"]


def test_missed_error_is_false_acceptance():
    assert mdd_labels(ROAD, ROAD_HEARD, ["R", "OW", "D"]) == ["FA", "TA", "TA"]


def test_false_rejection_substituted_or_deleted():
    assert mdd_labels(ROAD, ROAD, ["R", "AO", "D"]) == ["TA", "FR", "TA"]
    assert mdd_labels(ROAD, ROAD, ["OW", "D"]) == ["FR", "TA", "TA"]  # R not produced: differs


def test_human_deletion():
    canonical, human = ["AH", "R", "OW"], ["AH", None, "OW"]
    assert mdd_labels(canonical, human, ["AH", "OW"]) == ["TA", "CD", "TA"]  # both deleted
    assert mdd_labels(canonical, human, ["AH", "R", "OW"]) == ["TA", "FA", "TA"]
    assert mdd_labels(canonical, human, ["AH", "L", "OW"]) == ["TA", "DE", "TA"]


def test_predicted_insertions_are_ignored_by_mdd_but_count_in_per():
    assert mdd_labels(ROAD, ROAD_HEARD, ["L", "OW", "D", "Z"]) == ["CD", "TA", "TA"]
    assert mdd_labels(ROAD, ROAD_HEARD, ["AH", "L", "OW", "D"]) == ["CD", "TA", "TA"]
    assert align_to_canonical(ROAD, ["AH", "L", "OW", "D"]) == ["L", "OW", "D"]
    assert per([ROAD_HEARD], [["AH", "L", "OW", "D"]]) == pytest.approx(1 / 3)


def test_unk_is_a_phone_like_any_other():
    assert mdd_labels(["L"], ["<unk>"], ["<unk>"]) == ["CD"]
    assert mdd_labels(["L"], ["<unk>"], ["W"]) == ["DE"]


def test_counts_and_rates_by_hand():
    c = MddCounts(ta=5, fr=1, fa=2, cd=3, de=1)
    # TR = 4; P = 4/5; R = 4/6; F1 = 2PR/(P+R) = (16/15)/(22/15) = 8/11
    assert c.tr == 4
    assert c.precision == pytest.approx(0.8)
    assert c.recall == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(8 / 11)
    assert c.far == pytest.approx(2 / 6)
    assert c.frr == pytest.approx(1 / 6)
    assert c.der == pytest.approx(1 / 4)
    assert c.as_dict() == {"TA": 5, "FR": 1, "FA": 2, "TR": 4, "CD": 3, "DE": 1}
    assert c + MddCounts(ta=1, de=2) == MddCounts(ta=6, fr=1, fa=2, cd=3, de=3)
    assert sum([c, c], MddCounts()) == MddCounts(10, 2, 4, 6, 2)


def test_no_detections_gives_zero_f1_and_undefined_rates_give_nan():
    assert MddCounts(ta=3, fr=1, fa=2).f1 == 0.0  # P = 0/1, R = 0/2
    assert math.isnan(MddCounts(ta=3).f1)
    assert math.isnan(MddCounts(ta=3).der)


# two utterances: "THE ROAD" with R->L, "AN ORE" with R deleted
CANON = [["DH", "AH", "R", "OW", "D"], ["AE", "N", "AO", "R"]]
HUMAN = [["DH", "AH", "L", "OW", "D"], ["AE", "N", "AO", None]]


def _corpus(preds):
    return sum((mdd_counts(c, h, p) for c, h, p in zip(CANON, HUMAN, preds)), MddCounts())


def test_predicting_the_human_phones_is_perfect():
    heard = [[p for p in h if p is not None] for h in HUMAN]
    counts = _corpus(heard)
    assert counts == MddCounts(ta=7, cd=2)
    assert counts.precision == 1.0 and counts.recall == 1.0 and counts.f1 == 1.0
    assert per(heard, heard) == 0.0


def test_predicting_the_canonical_phones_finds_nothing():
    counts = _corpus(CANON)
    assert counts == MddCounts(ta=7, fa=2)
    assert counts.recall == 0.0
    assert math.isnan(counts.precision)  # nothing flagged: 0/0


def test_mdd_rejects_misaligned_human_phones():
    with pytest.raises(ValueError, match="3 canonical phones but 2 human"):
        mdd_counts(ROAD, ["L", "OW"], ROAD)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_of_a_constant_ratio_is_a_point():
    # every utterance has PER 0.5, so every resample has PER 0.5
    assert per_ci([1, 2, 3], [2, 4, 6]) == (0.5, 0.5)
    same = [MddCounts(ta=5, fr=1, fa=2, cd=3, de=1)] * 4
    lo, hi = f1_ci(same)
    assert lo == pytest.approx(8 / 11) and hi == pytest.approx(8 / 11)


def test_bootstrap_pcc_of_a_line_is_one_and_constant_resamples_are_dropped():
    lo, hi = pcc_ci([1, 2, 3, 4], [2, 4, 6, 8])
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    data = list(range(100))
    ci = bootstrap_ci(lambda x: x.mean(), data)
    assert ci == bootstrap_ci(lambda x: x.mean(), data)
    assert ci[0] < 49.5 < ci[1]
    assert ci != bootstrap_ci(lambda x: x.mean(), data, seed=1)
    assert all(math.isnan(v) for v in bootstrap_ci(lambda x: x.mean(), []))
