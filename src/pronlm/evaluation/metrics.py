"""Metrics of SPEC §4, as pure functions: APA correlations, WER, PER, MDD counts, bootstrap CIs, and
the pieces of GOPT's three-granularity protocol (`agreement`, `completeness`).

Everything comes from a library (scipy, jiwer, rapidfuzz - jiwer's own edit-distance engine)
except the MDD alignment and counting, which no library provides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import jiwer
import numpy as np
from rapidfuzz.distance import Levenshtein
from scipy import stats

from pronlm.data.targets import DELETED

NAN = float("nan")


class RemovePunctuation(jiwer.RemovePunctuation):
    """jiwer's transform (its own list: every Unicode character of category P) in one `str.translate`.

    jiwer calls `str.replace` once per punctuation character (about 800) on every sentence: a third
    of `evaluate`'s time on the 2,500-utterance test set. Deleting single characters by table is the same.
    """

    def __init__(self):
        super().__init__()
        self.table = str.maketrans("", "", "".join(self.tokens_to_remove))

    def process_string(self, s: str) -> str:
        return s.translate(self.table)


# WER normalisation (SPEC §4): case and punctuation do not count as errors.
WORD_TRANSFORM = jiwer.Compose([
    jiwer.ToLowerCase(), RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
    jiwer.ReduceToListOfListOfWords(),
])


def _varies(pred: Sequence[float], human: Sequence[float]) -> bool:
    return len(pred) >= 2 and np.ptp(pred) > 0 and np.ptp(human) > 0


def pcc(pred: Sequence[float], human: Sequence[float]) -> tuple[float, float]:
    """Pearson r and its two-sided p-value; (nan, nan) for fewer than 2 pairs or a constant side."""
    if len(pred) != len(human):
        raise ValueError(f"pcc: {len(pred)} predictions but {len(human)} human scores")
    if not _varies(pred, human):
        return NAN, NAN
    result = stats.pearsonr(np.asarray(pred, float), np.asarray(human, float))
    return float(result.statistic), float(result.pvalue)


def pearson_r(pred: Sequence[float], human: Sequence[float]) -> float:
    """Pearson r alone via np.corrcoef (same value as `pcc`, far cheaper inside a 1,000-resample bootstrap)."""
    if not _varies(pred, human):
        return NAN
    return float(np.corrcoef(pred, human)[0, 1])


def spearman(pred: Sequence[float], human: Sequence[float]) -> float:
    """Spearman's rho; nan for fewer than 2 pairs or a constant side."""
    if not _varies(pred, human):
        return NAN
    return float(stats.spearmanr(pred, human).statistic)


def mse(pred: Sequence[float], human: Sequence[float]) -> float:
    """Mean squared error; nan when empty."""
    if len(pred) == 0:
        return NAN
    return float(np.mean((np.asarray(pred, float) - np.asarray(human, float)) ** 2))


def agreement(pred: Sequence[float], human: Sequence[float]) -> dict:
    """PCC (p-value) and MSE of paired scores, and how many pairs: one cell group of GOPT's protocol
    (Gong et al. 2022), where every test phone, word or utterance is one pair."""
    r, p = pcc(pred, human)
    return {"pcc": r, "p_value": p, "mse": mse(pred, human), "n": len(pred)}


def completeness(reference: Sequence[str], heard: Sequence[str], scale: float = 10.0) -> float:
    """Share of the reference words that the heard words contain, in order, times `scale` (0-10 as
    SpeechOcean762's completeness): the reference words paired as equal in a minimum edit alignment.
    Neither the paper nor the model predicts completeness; this derives it from the MDD word
    transcript. nan for an empty reference."""
    if not reference:
        return NAN
    matched = sum(op.src_end - op.src_start for op in Levenshtein.opcodes(list(reference), list(heard))
                  if op.tag == "equal")
    return scale * matched / len(reference)


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus WER: word edits over reference words, case and punctuation ignored."""
    return float(jiwer.wer(list(refs), list(hyps), reference_transform=WORD_TRANSFORM,
                           hypothesis_transform=WORD_TRANSFORM))


def phone_errors(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Edit distance between two phone lists (substitutions, deletions, insertions cost 1)."""
    return Levenshtein.distance(list(ref), list(hyp))


def per(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> float:
    """Corpus PER: total phone edit distance over total reference (human, heard) phones."""
    if len(refs) != len(hyps):
        raise ValueError(f"per: {len(refs)} references but {len(hyps)} hypotheses")
    total = sum(len(r) for r in refs)
    return sum(phone_errors(r, h) for r, h in zip(refs, hyps)) / total if total else NAN


def _ratio(num: int, den: int) -> float:
    return num / den if den else NAN


@dataclass(frozen=True)
class MddCounts:
    """Per-canonical-phone outcomes of the standard protocol (Li et al. 2016); TR = CD + DE."""

    ta: int = 0  # true acceptance: pronounced right, accepted
    fr: int = 0  # false rejection: pronounced right, flagged
    fa: int = 0  # false acceptance: mispronounced, accepted
    cd: int = 0  # correct diagnosis: mispronounced, flagged with the phone heard
    de: int = 0  # diagnosis error: mispronounced, flagged with another phone

    @property
    def tr(self) -> int:
        return self.cd + self.de

    @property
    def precision(self) -> float:
        return _ratio(self.tr, self.tr + self.fr)

    @property
    def recall(self) -> float:
        return _ratio(self.tr, self.tr + self.fa)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r):
            return NAN
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def far(self) -> float:
        return _ratio(self.fa, self.fa + self.tr)

    @property
    def frr(self) -> float:
        return _ratio(self.fr, self.ta + self.fr)

    @property
    def der(self) -> float:
        return _ratio(self.de, self.cd + self.de)

    def __add__(self, other: MddCounts) -> MddCounts:
        return MddCounts(self.ta + other.ta, self.fr + other.fr, self.fa + other.fa,
                         self.cd + other.cd, self.de + other.de)

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> MddCounts:
        """Count the labels of `mdd_labels`."""
        return cls(*(labels.count(k) for k in ("TA", "FR", "FA", "CD", "DE")))

    def as_dict(self) -> dict[str, int]:
        return {"TA": self.ta, "FR": self.fr, "FA": self.fa, "TR": self.tr, "CD": self.cd, "DE": self.de}


def align_to_canonical(canonical: Sequence[str], predicted: Sequence[str],
                       human: Sequence[str | None] | None = None) -> list[str | None]:
    """The predicted phone aligned with each canonical phone (None: not produced); insertions dropped.

    A minimum-cost alignment that uses the annotation (SPEC §4): pairing a predicted phone with
    canonical position i costs 0 when it equals the canonical or the heard (`human`) phone there,
    else 1; leaving position i unproduced costs 0 when the annotators deleted it (None or `<DEL>`),
    else 1; an inserted predicted phone costs 1. So a prediction equal to the heard phones, or to the
    canonical ones, aligns position by position. Without `human` the canonical phones count as heard.
    Among equally cheap alignments, the one that leaves the fewest annotated deletions unproduced:
    a phone the model wrote where nothing was heard pairs with that position (a diagnosis error)
    rather than passing as an insertion beside a "correctly diagnosed" deletion. Remaining ties: the
    backtrace runs from the end and at each step prefers pairing a phone that agrees with the
    position (or, at an annotated deletion, any phone), then leaving the canonical phone unproduced,
    then an insertion, then a substitution; so "X Y" where Y is the canonical phone at i reads as X
    inserted, Y correct, i + 1 skipped, not two substitutions. On perturbed utterances this tie
    rule gave the true counts more often than preferring any pairing.
    """
    canonical = list(canonical)
    human = canonical if human is None else _deleted_as_none(human)
    if len(human) != len(canonical):
        raise ValueError(f"align: {len(canonical)} canonical phones but {len(human)} human phones")
    return _align(canonical, human, list(predicted))


def _deleted_as_none(human: Sequence[str | None]) -> list[str | None]:
    """The human phones as a list, `<DEL>` read as None (the form `pronlm.data.targets` gives)."""
    return [None if h == DELETED else h for h in human] if DELETED in human else list(human)


def _align(canonical: list[str], human: list[str | None], predicted: list[str]) -> list[str | None]:
    """`align_to_canonical` on lists of equal length, deletions as None."""
    if predicted == canonical:
        return canonical
    if predicted == [h for h in human if h is not None]:
        return human
    if not predicted:
        return [None] * len(canonical)
    if None in human:
        return _align_with_deletions(canonical, human, predicted)
    aligned: list[str | None] = [None] * len(canonical)
    rows = _cost_rows(canonical, human, predicted)
    i, j = len(canonical), len(predicted)
    here = _cost(rows[i], j)
    while i and j:
        p, c, h = predicted[j - 1], canonical[i - 1], human[i - 1]
        up = _cost(rows[i - 1], j)
        diag = up - _step(rows[i - 1], j)
        left = here - _step(rows[i], j)
        if here == diag and (p == c or p == h):
            i, j, here = i - 1, j - 1, diag
            aligned[i] = p
        elif here == up + 1:
            i, here = i - 1, up
        elif here == left + 1:
            j, here = j - 1, left
        else:  # here == diag + 1: a substitution
            i, j, here = i - 1, j - 1, diag
            aligned[i] = p
    return aligned


def _align_with_deletions(canonical: list[str], human: list[str | None], predicted: list[str]) -> list[str | None]:
    """`_align` where some phones were deleted: the costs above scaled by `unit`, plus 1 for each annotated
    deletion left unproduced, so the cheapest alignment is also the one that leaves the fewest of them.

    Cell by cell (the deletion-free table is bit-parallel, `_cost_rows`): SpeechOcean762 marks few deletions.
    """
    unit = len(canonical) + 1  # more than all the deletions' 1s together: the alignment cost comes first
    skip = [1 if h is None else unit for h in human]
    cost = [[j * unit for j in range(len(predicted) + 1)]]
    for i, (c, h) in enumerate(zip(canonical, human)):
        row = [cost[i][0] + skip[i]]
        for j, p in enumerate(predicted):
            row.append(min(cost[i][j] + (0 if p in (c, h) else unit), cost[i][j + 1] + skip[i], row[j] + unit))
        cost.append(row)
    aligned: list[str | None] = [None] * len(canonical)
    i, j = len(canonical), len(predicted)
    while i and j:
        p, c, h = predicted[j - 1], canonical[i - 1], human[i - 1]
        here, diag, up, left = cost[i][j], cost[i - 1][j - 1], cost[i - 1][j], cost[i][j - 1]
        if (here == diag and p in (c, h)) or (here == diag + unit and h is None):
            i, j = i - 1, j - 1
            aligned[i] = p
        elif here == up + skip[i - 1]:
            i -= 1
        elif here == left + unit:
            j -= 1
        else:  # here == diag + unit: a substitution
            i, j = i - 1, j - 1
            aligned[i] = p
    return aligned


def _cost_rows(canonical: list[str], human: list[str], predicted: list[str]) -> list[tuple[int, int, int]]:
    """Rows of the alignment's cost table D[i][j] (canonical[:i] against predicted[:j]) without deletions.

    Row i is (D[i][0], vp, vn): bit j-1 of vp (vn) is set where D[i][j] - D[i][j-1] is +1 (-1): Hyyrö's
    step of Myers' algorithm for global edit distance (Hyyrö 2001, "Explaining and extending the
    bit-parallel approximate string matching algorithm of Myers"), its match mask holding the canonical
    and the heard phone. Three times faster than a cell-by-cell loop, which the tests keep as the reference.
    """
    mask = (1 << len(predicted)) - 1
    match: dict[str, int] = {}
    for j, p in enumerate(predicted):
        match[p] = match.get(p, 0) | 1 << j
    first, vp, vn = 0, mask, 0
    rows = [(first, vp, vn)]
    for c, h in zip(canonical, human):
        eq = match.get(c, 0) | match.get(h, 0)
        d0 = (((eq & vp) + vp) ^ vp) | eq | vn
        hp = (vn | ~(d0 | vp)) << 1 | 1
        hn = (vp & d0) << 1
        vp, vn = (hn | ~(hp | d0)) & mask, hp & d0 & mask
        first += 1
        rows.append((first, vp, vn))
    return rows


def _cost(row: tuple[int, int, int], j: int) -> int:
    """D[i][j] from row i of `_cost_rows`."""
    first, vp, vn = row
    low = (1 << j) - 1
    return first + (vp & low).bit_count() - (vn & low).bit_count()


def _step(row: tuple[int, int, int], j: int) -> int:
    """D[i][j] - D[i][j-1] from row i of `_cost_rows`."""
    return (row[1] >> (j - 1) & 1) - (row[2] >> (j - 1) & 1)


def mdd_labels(canonical: Sequence[str], human: Sequence[str | None], predicted: Sequence[str]) -> list[str]:
    """One of TA, FR, FA, CD, DE per canonical phone (SPEC §4).

    Hand-written because no library implements the three-way canonical/human/predicted comparison
    of Li et al. (2016), and the paper released no code. `human` aligns with `canonical` by index
    (None or `<DEL>` = deleted; SpeechOcean762 annotates no insertions); `predicted` is aligned to
    both by `align_to_canonical`, which uses the annotation, so a prediction equal to the heard
    phones scores CD on every error and no FR, FA or DE. A deletion counts as "differs"; human and
    prediction both deleted is a correct diagnosis. Predicted insertions sit between canonical
    phones and are ignored, as in the standard protocol (they still count in PER).
    """
    if len(canonical) != len(human):
        raise ValueError(f"mdd: {len(canonical)} canonical phones but {len(human)} human phones")
    canonical, human = list(canonical), _deleted_as_none(human)
    labels = []
    for c, h, p in zip(canonical, human, _align(canonical, human, list(predicted))):
        if h == c:
            labels.append("TA" if p == c else "FR")
        elif p == c:
            labels.append("FA")
        else:
            labels.append("CD" if p == h else "DE")
    return labels


def mdd_counts(canonical: Sequence[str], human: Sequence[str | None], predicted: Sequence[str]) -> MddCounts:
    """TA/FR/FA/CD/DE counts of one utterance; sum utterances with `+` or `sum(..., MddCounts())`."""
    return MddCounts.from_labels(mdd_labels(canonical, human, predicted))


def bootstrap_ci(statistic: Callable[..., np.ndarray], *columns: Sequence, resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of a statistic with rows (utterances) resampled; resamples giving nan are dropped.

    `statistic` takes every resample at once: each column as an array [resamples, rows, ...], and
    returns one value per resample (a 2,500-utterance report draws 6,000 resamples: no Python loop).
    """
    arrays = [np.asarray(c) for c in columns]
    n = len(arrays[0]) if arrays else 0
    if n == 0:
        return NAN, NAN
    idx = np.random.default_rng(seed).integers(0, n, (resamples, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(statistic(*(a[idx] for a in arrays)), float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return NAN, NAN
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair; nan where a row is constant (as `pearson_r`)."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    return (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))


def pcc_ci(pred: Sequence[float], human: Sequence[float], **kw) -> tuple[float, float]:
    return bootstrap_ci(_pearson_rows, np.asarray(pred, float), np.asarray(human, float), **kw)


def per_ci(errors: Sequence[int], ref_lengths: Sequence[int], **kw) -> tuple[float, float]:
    """CI of corpus PER from per-utterance edit distances and reference lengths."""
    return bootstrap_ci(lambda e, n: e.sum(axis=1) / n.sum(axis=1), errors, ref_lengths, **kw)


def _f1_rows(counts: np.ndarray) -> np.ndarray:
    """Corpus F1 of each resample from summed (TA, FR, FA, CD, DE) counts, as `MddCounts.f1`."""
    _, fr, fa, cd, de = counts.sum(axis=1).T.astype(float)
    tr = cd + de
    precision, recall = tr / (tr + fr), tr / (tr + fa)
    return np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)


def f1_ci(counts: Sequence[MddCounts], **kw) -> tuple[float, float]:
    """CI of corpus MDD F1 from per-utterance counts."""
    return bootstrap_ci(_f1_rows, [(c.ta, c.fr, c.fa, c.cd, c.de) for c in counts], **kw)


@dataclass
class MddRow:
    """One utterance's MDD outcome: what PER, WER, the counts and the plots need."""

    id: str
    human_accuracy: int
    errors: int
    heard: int
    counts: MddCounts
    confusions: list[tuple[str, str, str]] = field(default_factory=list)  # (canonical, heard, label)
