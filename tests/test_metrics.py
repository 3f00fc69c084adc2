"""Metrics against values computed by hand (SPEC §4)."""

from __future__ import annotations

import dataclasses
import math
import random
import warnings

import numpy as np
import pytest

from pronlm.data.corpus import read_corpus
from pronlm.data.records import Mispronunciation
from pronlm.data.targets import (
    ARPABET,
    DELETED,
    UNK,
    AccentPolicy,
    aligned_word_phones,
    canonical_phones,
    heard_phones,
    strip_stress,
)
from pronlm.evaluation.metrics import (
    agreement,
    completeness,
    MddCounts,
    align_to_canonical,
    bootstrap_ci,
    f1_ci,
    mdd_counts,
    mdd_labels,
    mse,
    pcc,
    pcc_ci,
    per,
    per_ci,
    phone_errors,
    spearman,
    wer,
)

PHONES = sorted(ARPABET)


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
    assert align_to_canonical(ROAD, ["AH", "L", "OW", "D"], ROAD_HEARD) == ["L", "OW", "D"]
    assert per([ROAD_HEARD], [["AH", "L", "OW", "D"]]) == pytest.approx(1 / 3)


def test_alignment_uses_the_annotation():
    # R deleted and OW heard as R: the heard R belongs to OW's position, not to the canonical R
    canonical, human = ["R", "OW", "D"], [None, "R", "D"]
    assert mdd_labels(canonical, human, ["R", "D"]) == ["CD", "CD", "TA"]  # plain edit distance: FA, DE, TA
    assert align_to_canonical(canonical, ["R", "D"], human) == [None, "R", "D"]
    # WHALE in 014350017 (train): W deleted, EY heard as OW, L unclear
    assert mdd_labels(["W", "EY", "L"], [None, "OW", UNK], ["OW", UNK]) == ["CD", "CD", "CD"]  # was DE x3
    assert mdd_labels(["AH", "R", "OW"], ["AH", DELETED, "OW"], ["AH", "OW"]) == ["TA", "CD", "TA"]
    with pytest.raises(ValueError, match="3 canonical phones but 2 human"):
        align_to_canonical(ROAD, ROAD, ["L", "OW"])


def test_a_phone_written_where_a_deletion_was_annotated_is_a_diagnosis_error():
    """T deleted, S heard as Z; the model wrote OY K. Reading OY as an insertion and T as "not produced"
    costs the same as pairing OY with T, and would credit the model with diagnosing the deletion."""
    assert mdd_labels(["N", "T", "S"], ["N", DELETED, "Z"], ["N", "OY", "K"]) == ["TA", "DE", "DE"]
    assert align_to_canonical(["N", "T", "S"], ["N", "OY", "K"], ["N", None, "Z"]) == ["N", "OY", "K"]
    assert mdd_labels(["N", "T", "S"], ["N", DELETED, "Z"], ["N", "Z"]) == ["TA", "CD", "CD"]  # nothing there
    assert mdd_labels(["N", "T", "S"], ["N", DELETED, "Z"], ["N", "K"]) == ["TA", "CD", "DE"]


def test_alignment_ties():
    # "AE T" for "K AE": K left out, AE right, T inserted (cost 2) rather than two substitutions (cost 2)
    assert mdd_labels(["K", "AE"], ["K", "AE"], ["AE", "T"]) == ["FR", "TA"]  # plain edit distance: FR, FR
    assert align_to_canonical(["K", "AE"], ["S", "K"]) == ["K", None]
    # a wrong phone where the annotators heard nothing is a diagnosis error, not an insertion
    assert mdd_labels(["DH", "AH"], [None, "AH"], ["Z", "AH"]) == ["DE", "TA"]
    assert mdd_labels(["DH", "AH"], [None, "AH"], ["DH", "AH"]) == ["FA", "TA"]


def _reference_alignment(canonical, human, predicted):
    """align_to_canonical's costs and tie rule, cell by cell, each cost a pair (alignment cost, annotated
    deletions left unproduced) compared in that order: what the faster tables must reproduce."""
    def add(a, b):
        return a[0] + b[0], a[1] + b[1]

    one = (1, 0)
    drop = [(0, 1) if h is None else one for h in human]
    cost = [[(j, 0) for j in range(len(predicted) + 1)]]
    for i, (c, h) in enumerate(zip(canonical, human)):
        row = [add(cost[i][0], drop[i])]
        for j, p in enumerate(predicted):
            row.append(min(add(cost[i][j], (0, 0) if p in (c, h) else one), add(cost[i][j + 1], drop[i]),
                           add(row[j], one)))
        cost.append(row)
    aligned, i, j = [None] * len(canonical), len(canonical), len(predicted)
    while i and j:
        here, agrees = cost[i][j], predicted[j - 1] in (canonical[i - 1], human[i - 1])
        diag, up, left = cost[i - 1][j - 1], cost[i - 1][j], cost[i][j - 1]
        if (agrees and here == diag) or (human[i - 1] is None and here == add(diag, one)):
            pair = True
        elif here == add(up, drop[i - 1]):
            i, pair = i - 1, False
        elif here == add(left, one):
            j, pair = j - 1, False
        else:
            pair = True
        if pair:
            i, j = i - 1, j - 1
            aligned[i] = predicted[j]
    return aligned


def test_fast_alignment_equals_the_cell_by_cell_one():
    rng = random.Random(0)
    for k in range(3000):
        longest = 80 if k % 10 == 0 else 10  # beyond 64 bits now and then
        canonical = rng.choices("ABCDE", k=rng.randint(0, longest))
        human = [rng.choice("ABCDE") if rng.random() < 0.2 else None if rng.random() < 0.2 else c for c in canonical]
        predicted = rng.choices("ABCDE", k=rng.randint(0, longest))
        assert align_to_canonical(canonical, predicted, human) == _reference_alignment(canonical, human, predicted)
        assert align_to_canonical(canonical, predicted) == _reference_alignment(canonical, canonical, predicted)


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


def _annotated(utt, policy=AccentPolicy.UNK):
    """Canonical and human (heard, None = deleted) phone per position, as report.mdd_row builds them."""
    pairs = [pair for w in utt.words for pair in aligned_word_phones(w, policy, utt.id)]
    return [c for c, _ in pairs], [h for _, h in pairs]


def _with_injected_errors(utt, rng, rate=0.3):
    """A copy of `utt` with about `rate` of its phones annotated again: substituted, deleted, <unk> or accented."""
    words = []
    for w in utt.words:
        mis = {m.index: m for m in w.mispronunciations}
        for i, phone in enumerate(w.canonical_phones):
            if rng.random() < rate:
                base = strip_stress(phone)
                mis[i] = Mispronunciation(i, base, rng.choice([rng.choice(PHONES), DELETED, UNK, base + "*"]))
        words.append(dataclasses.replace(w, mispronunciations=tuple(mis[i] for i in sorted(mis))))
    return dataclasses.replace(utt, words=tuple(words))


@pytest.fixture(scope="module")
def utterances(corpus_dir):
    """The real labelled subset (train and test) and five seeded copies of it with many injected errors."""
    real = [u for split in ("train", "test") for u in read_corpus(str(corpus_dir), split) if u.labelled]
    rng = random.Random(0)
    return real + [_with_injected_errors(u, rng) for _ in range(5) for u in real]


def test_predicting_the_heard_phones_diagnoses_every_error(utterances):
    for n, utt in enumerate(utterances):
        for policy in AccentPolicy:
            canonical, human = _annotated(utt, policy)
            wrong = sum(h != c for c, h in zip(canonical, human))
            counts = mdd_counts(canonical, human, heard_phones(utt, policy))
            assert counts == MddCounts(ta=len(canonical) - wrong, cd=wrong), (n, utt.id, policy)


def test_predicting_the_canonical_phones_accepts_every_error(utterances):
    for n, utt in enumerate(utterances):
        canonical, human = _annotated(utt)
        wrong = sum(h != c for c, h in zip(canonical, human))
        assert mdd_counts(canonical, human, canonical_phones(utt)) == MddCounts(ta=len(canonical) - wrong, fa=wrong), n


def _perturbed(canonical, human, rng):
    """A prediction whose true outcome per canonical phone is known, and those true counts.

    Each canonical phone is produced as canonical, as heard, as another phone, or left out; about
    one gap in fifty gets a random inserted phone (no outcome of its own).
    """
    predicted, truth = [], []
    for c, h in zip(canonical, human):
        if rng.random() < 0.02:
            predicted.append(rng.choice(PHONES))
        kind = rng.choices(("canonical", "heard", "other", "left out"), (0.3, 0.55, 0.075, 0.075))[0]
        if kind == "canonical":
            predicted.append(c)
            truth.append("TA" if h == c else "FA")
        elif kind == "heard":
            predicted += [h] if h is not None else []
            truth.append("TA" if h == c else "CD")
        elif kind == "other":
            predicted.append(rng.choice([p for p in PHONES if p not in (c, h)]))
            truth.append("FR" if h == c else "DE")
        else:
            truth.append("FR" if h == c else "CD" if h is None else "DE")
    return predicted, MddCounts.from_labels(truth)


def test_perturbed_predictions_get_their_true_counts(utterances):
    rng = random.Random(1)
    got, true = [], []
    for utt in utterances:
        canonical, human = _annotated(utt)
        for _ in range(4):
            predicted, truth = _perturbed(canonical, human, rng)
            got.append(mdd_counts(canonical, human, predicted))
            true.append(truth)
    exact = sum(g == t for g, t in zip(got, true)) / len(got)
    assert exact >= 0.9  # the rest: readings as cheap as the truth, or cheaper
    assert sum(got, MddCounts()).f1 == pytest.approx(sum(true, MddCounts()).f1, abs=0.005)


def _in_place(canonical, human, rng):
    """A prediction with a phone at every canonical position, nothing inserted, nothing left out: the
    canonical, the heard or a foreign phone (one the utterance never has), a foreign one at every
    annotated deletion. Foreign phones keep the prediction from reading as a cheaper shift."""
    foreign = [p for p in PHONES if p not in set(canonical) | set(human)]
    predicted = []
    for c, h in zip(canonical, human):
        kind = "other" if h is None else rng.choices(("canonical", "heard", "other"), (0.3, 0.55, 0.15))[0]
        predicted.append(c if kind == "canonical" else h if kind == "heard" else rng.choice(foreign))
    return predicted


def test_a_deletion_is_diagnosed_only_where_nothing_was_written(utterances):
    """SPEC §4: a phone the model wrote at an annotated deletion is DE, whatever the tie-break."""
    rng = random.Random(2)
    deletions, credited = 0, 0
    for utt in utterances:
        canonical, human = _annotated(utt)
        labels = mdd_labels(canonical, human, _in_place(canonical, human, rng))
        deletions += human.count(None)
        credited += sum(label == "CD" for label, h in zip(labels, human) if h is None)
    assert deletions > 150 and credited == 0


def test_mdd_rejects_misaligned_human_phones():
    with pytest.raises(ValueError, match="3 canonical phones but 2 human"):
        mdd_counts(ROAD, ["L", "OW"], ROAD)


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
    ci = bootstrap_ci(lambda x: x.mean(axis=1), data)
    assert ci == bootstrap_ci(lambda x: x.mean(axis=1), data)
    assert ci[0] < 49.5 < ci[1]
    assert ci != bootstrap_ci(lambda x: x.mean(axis=1), data, seed=1)
    assert all(math.isnan(v) for v in bootstrap_ci(lambda x: x.mean(axis=1), []))


def test_vectorised_bootstrap_cis_equal_one_resample_at_a_time():
    """Each CI equals the plain loop: the same seeded draws, the statistic of each resample."""
    rng = np.random.default_rng(3)
    pred, human = rng.integers(0, 11, 60).astype(float), rng.integers(0, 11, 60).astype(float)
    counts = [MddCounts(*map(int, rng.integers(0, 6, 5))) for _ in range(40)]
    errors, lengths = rng.integers(0, 5, 40), rng.integers(5, 30, 40)

    def loop(statistic, *columns):
        arrays = [np.asarray(c) for c in columns]
        idx = np.random.default_rng(0).integers(0, len(arrays[0]), (1000, len(arrays[0])))
        values = np.array([statistic(*(a[i] for a in arrays)) for i in idx], float)
        return tuple(np.percentile(values[np.isfinite(values)], [2.5, 97.5]))

    rows = [(c.ta, c.fr, c.fa, c.cd, c.de) for c in counts]
    assert pcc_ci(pred, human) == pytest.approx(loop(lambda p, h: np.corrcoef(p, h)[0, 1], pred, human))
    assert f1_ci(counts) == pytest.approx(loop(lambda m: MddCounts(*m.sum(axis=0).tolist()).f1, rows))
    assert per_ci(errors, lengths) == pytest.approx(loop(lambda e, n: e.sum() / n.sum(), errors, lengths))


def test_punctuation_removal_is_jiwers_own():
    import random

    import jiwer

    from pronlm.evaluation.metrics import RemovePunctuation

    ours, theirs = RemovePunctuation(), jiwer.RemovePunctuation()
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20, 0x3000)] + list("¡¿«»—…“”‘’")
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(40))
        assert ours.process_string(text) == theirs.process_string(text)
    assert ours.process_string("Don't—stop! «Now»…") == "Dontstop Now"


def test_agreement_by_hand():
    # pred deviations (-1, 0, 1), human (-4/3, -1/3, 5/3): r = 3 / sqrt(2 * 42/9); MSE (0 + 0 + 1) / 3
    got = agreement([1, 2, 3], [1, 2, 4])
    assert got["pcc"] == pytest.approx(3 / math.sqrt(2 * 42 / 9)) and got["mse"] == pytest.approx(1 / 3)
    assert got["n"] == 3 and 0 < got["p_value"] < 1
    constant = agreement([1.5, 1.5], [2, 0])
    assert math.isnan(constant["pcc"]) and constant["mse"] == pytest.approx((0.25 + 2.25) / 2)


@pytest.mark.parametrize("reference, heard, expected", [
    ("WE CALL IT BEAR", "WE CALL IT BEAR", 10.0),
    ("WE CALL IT BEAR", "WE CALL BEAR", 7.5),  # IT not heard
    ("WE CALL IT BEAR", "", 0.0),
    ("WE CALL IT BEAR", "WE UH CALL CALL IT BEAR", 10.0),  # insertions and repeats take nothing away
    ("A B C D", "X B C Y", 5.0),  # substituted words were not heard
    ("A B A", "A A B A X", 10.0),
])
def test_completeness_by_hand(reference, heard, expected):
    assert completeness(reference.split(), heard.split()) == pytest.approx(expected)


def test_completeness_of_no_reference_is_undefined():
    assert math.isnan(completeness([], ["A"]))
