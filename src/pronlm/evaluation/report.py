"""`pronlm evaluate`: predictions JSONL + corpus -> report.json, report.md beside the paper, plots.

Failed parses count as what they are: a failed MDD answer is an empty transcript (all deletions
in WER, PER and MDD); a failed APA answer has no score and is left out of the correlations. Both
are counted under "parse", as are utterances with no prediction at all (left out of everything).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pronlm.data.corpus import read_corpus
from pronlm.data.parse import normalise_phones, parse_answer
from pronlm.data.prompts import TASKS
from pronlm.data.records import ASPECTS, Utterance, UtteranceError
from pronlm.data.schema import PredictionsError, check_record, valid_scores
from pronlm.data.targets import (
    DELETED,
    WORD_SEPARATOR,
    AccentPolicy,
    aligned_word_phones,
)
from pronlm.data.text import spoken_form
from pronlm.errors import PronlmError
from pronlm.evaluation import metrics

PAPER_TEST_SIZE = 2500
PLOTS = ("apa_scatter.png", "per_vs_accuracy.png", "confusions.png")

# SPEC §1, paper Table 3: acc, flu, pro, total PCC, WER, PER, F1, P, R
PAPER_TABLE3 = [
    ("no training", 0, -0.041, -0.017, -0.049, -0.104, 0.97, 0.792, 0.143, 0.154, 0.134),
    ("LoRA", 1, 0.547, 0.585, 0.567, 0.544, 0.150, 0.137, 0.686, 0.689, 0.682),
    ("LoRA", 2, 0.637, 0.726, 0.709, 0.662, 0.139, 0.118, 0.722, 0.725, 0.719),
    ("LoRA", 3, 0.656, 0.727, 0.711, 0.675, 0.140, 0.114, 0.724, 0.728, 0.721),
    ("LoRA", 4, 0.645, 0.733, 0.714, 0.668, 0.148, 0.121, 0.721, 0.723, 0.720),
    ("Unfreeze", 4, 0.743, 0.717, 0.704, 0.666, 0.142, 0.142, 0.667, 0.671, 0.663),
]
# SPEC §1, other systems: sentence PCC acc, flu, pro, total; PER; MDD F1 (standard protocol)
OTHER_SYSTEMS = [
    ("GOPT", 0.714, 0.753, 0.760, 0.742, None, None),
    ("Joint-CAPT-L1", 0.719, 0.775, 0.773, 0.743, 0.099, 0.415),
    ("Azure Pronunciation Assessment", 0.70, 0.715, 0.842, 0.782, None, None),
    ("3M", 0.760, 0.828, 0.827, 0.796, None, None),
    ("HMamba", 0.807, 0.848, 0.843, 0.829, None, 0.639),
    ("MuFFIN", None, None, None, None, None, 0.660),
]


class ReportError(PronlmError):
    """Evaluation cannot run (bad accent policy, no prediction matches the corpus)."""


@dataclass
class MddRow:
    """One utterance's MDD outcome: what PER, WER, the counts and the plots need."""

    id: str
    human_accuracy: int
    errors: int
    heard: int
    counts: metrics.MddCounts
    confusions: list[tuple[str, str, str]] = field(default_factory=list)  # (canonical, heard, label)


# ---------------------------------------------------------------- reading


DUPLICATE_POLICIES = ("error", "first", "last")
COMPARED = ("ok", "scores", "word_transcript", "phoneme_transcript")  # what two answers agree on


def read_predictions(path: str | Path, duplicates: str = "error") -> tuple[dict[tuple[str, str], dict], dict]:
    """(id, task) -> the parse schema of that answer, and what was done with repeated (id, task) lines.

    `predict` writes each (id, task) once, so a repeat means files were joined: repeats that agree
    count once; repeats that disagree are an error naming them, unless `duplicates` is "first" or
    "last" (which one to keep).
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ReportError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, not {duplicates!r}")
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"cannot read predictions {path}: {exc}") from exc
    out, agreeing, conflicting = {}, [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = prediction_record(line, f"{path}:{number}")
        key = record["id"], record["task"]
        if key in out:
            same = all(out[key].get(k) == record.get(k) for k in COMPARED)
            (agreeing if same else conflicting).append(f"{key[0]}/{key[1]} (line {number})")
            if same or duplicates == "first":
                continue
        out[key] = record
    if conflicting and duplicates == "error":
        raise PredictionsError(f"{path}: {len(conflicting)} (id, task) repeated with a different answer, e.g. "
                               f"{', '.join(conflicting[:5])}; keep one with --duplicates first|last")
    return out, {"agreeing": len(agreeing), "conflicting": len(conflicting), "kept": duplicates}


def prediction_record(line: str, where: str) -> dict:
    """One JSONL line checked (`pronlm.data.schema.check_record`); a line without "ok" is parsed again
    from its "raw" text."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise PredictionsError(f"{where}: not JSON ({exc}); expected one prediction object per line") from exc
    obj = check_record(obj, where)
    if "ok" not in obj:
        return {"id": obj["id"], "task": obj["task"], **parse_answer(obj["task"], obj.get("raw"))}
    return obj


# ---------------------------------------------------------------- metrics


def apa_section(utts: list[Utterance], preds: dict, key: str = "scores") -> tuple[dict, dict[str, tuple[list, list]]]:
    """Per aspect PCC (p-value, CI), Spearman, MSE over the parsed answers; and the pairs for the plot.

    `key`: "scores" (the greedy integers: the paper's protocol) or "scores_expected" (the
    probability-weighted scores, `pronlm.evaluation.grammar.expected_scores`: ours), over the answers that have them.
    """
    answers = [(u, preds[u.id, "apa"]) for u in utts if (u.id, "apa") in preds]
    good = [(u, a[key]) for u, a in answers if a["ok"] and valid_scores(a.get(key))]
    pairs = {x: ([s[x] for _, s in good], [getattr(u.scores, x) for u, _ in good]) for x in ASPECTS}
    section = {}
    for aspect, (pred, human) in pairs.items():
        r, p = metrics.pcc(pred, human)
        section[aspect] = {"pcc": r, "p_value": p, "spearman": metrics.spearman(pred, human),
                           "mse": metrics.mse(pred, human), "n": len(pred), "ci95": metrics.pcc_ci(pred, human)}
    return section, pairs


def mdd_row(utt: Utterance, answer: dict, policy: AccentPolicy) -> MddRow:
    """Score one MDD answer (a failed one as an empty transcript) on stress-free phones."""
    aligned = [pair for w in utt.words for pair in aligned_word_phones(w, policy, utt.id)]
    canonical = [c for c, _ in aligned]
    human = [h for _, h in aligned]
    heard = [h for h in human if h is not None]
    transcript = normalise_phones(answer["phoneme_transcript"]) if answer["ok"] else ""
    predicted = [p for p in transcript.split() if p != WORD_SEPARATOR]  # word separators are not phones
    labels = metrics.mdd_labels(canonical, human, predicted)
    confusions = [(c, h or DELETED, lab) for c, h, lab in zip(canonical, human, labels) if h != c]
    return MddRow(utt.id, utt.scores.accuracy, metrics.phone_errors(heard, predicted), len(heard),
                  metrics.MddCounts.from_labels(labels), confusions)


def mdd_section(utts: list[Utterance], preds: dict, rows: list[MddRow]) -> dict:
    """Corpus WER, PER, MDD rates and counts, with bootstrap CIs for PER and F1."""
    answered = [(u, preds[u.id, "mdd"]) for u in utts if (u.id, "mdd") in preds]
    refs = [spoken_form(u.text) for u, _ in answered]  # accents folded, numbers spelled out, as assess reads them
    hyps = [spoken_form(a["word_transcript"]) if a["ok"] else "" for _, a in answered]
    total = sum((r.counts for r in rows), metrics.MddCounts())
    heard = sum(r.heard for r in rows)
    return {
        "n": len(rows), "wer": metrics.wer(refs, hyps) if refs else math.nan,
        "per": sum(r.errors for r in rows) / heard if heard else math.nan,
        "precision": total.precision, "recall": total.recall, "f1": total.f1,
        "far": total.far, "frr": total.frr, "der": total.der, "counts": total.as_dict(),
        "per_ci95": metrics.per_ci([r.errors for r in rows], [r.heard for r in rows]),
        "f1_ci95": metrics.f1_ci([r.counts for r in rows]),
    }


def evaluate(predictions: str, corpus: str, split: str, out: str, accent_policy: str = "unk",
             duplicates: str = "error", speakers=None) -> dict:
    """Score a prediction file against `split` of `corpus`; write report.json, report.md and plots to `out`.

    `speakers`: only their utterances count (a development split carved from train, `pronlm.evaluation.table`).
    """
    try:
        policy = AccentPolicy(accent_policy)
    except ValueError:
        raise ReportError(f"unknown accent policy {accent_policy!r}: use one of "
                          f"{', '.join(p.value for p in AccentPolicy)}") from None
    corpus_errors: list[UtteranceError] = []
    utts = [u for u in read_corpus(corpus, split, corpus_errors)
            if u.labelled and (speakers is None or u.speaker in speakers)]
    preds, repeated = read_predictions(predictions, duplicates)
    known = {u.id for u in utts}
    if not any(i in known for i, _ in preds):
        raise ReportError(f"no prediction in {predictions} has the id of a labelled {split} utterance of {corpus} "
                          "(wrong --split or --corpus?)")
    apa, pairs = apa_section(utts, preds)
    has_expected = any(valid_scores(a.get("scores_expected")) for (_, t), a in preds.items() if t == "apa")
    rows = [mdd_row(u, preds[u.id, "mdd"], policy) for u in utts if (u.id, "mdd") in preds]
    report = {
        "n_utterances": len(utts), "split": split, "accent_policy": policy.value,
        "apa": apa, "apa_expected": apa_section(utts, preds, "scores_expected")[0] if has_expected else None,
        "mdd": mdd_section(utts, preds, rows),
        "parse": {f"{t}_{k}": v for t in TASKS for k, v in _parse_counts(utts, preds, t).items()}
        | {"unknown_ids": sum(i not in known for i, _ in preds), "corpus_errors": len(corpus_errors),
           "out_of_range": sum((a.get("error") or "").startswith("score outside") for a in preds.values()),
           "repeated_agreeing": repeated["agreeing"], "repeated_conflicting": repeated["conflicting"]},
    }
    report = _finite(report)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report, predictions))
    plot_apa(pairs, out_dir / PLOTS[0])
    plot_per_vs_accuracy(rows, out_dir / PLOTS[1])
    plot_confusions(rows, out_dir / PLOTS[2])
    return report


def _parse_counts(utts: list[Utterance], preds: dict, task: str) -> dict[str, int]:
    answers = [preds.get((u.id, task)) for u in utts]
    return {"failed": sum(a is not None and not a["ok"] for a in answers), "missing": answers.count(None)}


def _finite(obj):
    """nan/inf -> None and tuples -> lists, so report.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


# ---------------------------------------------------------------- report.md


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(report: dict, predictions: str) -> str:
    """Our numbers beside the paper's Table 3 and the other systems, with what compares and what does not."""
    apa, mdd, parse = report["apa"], report["mdd"], report["parse"]
    ours = [apa[a]["pcc"] for a in ASPECTS] + [mdd[k] for k in ("wer", "per", "f1", "precision", "recall")]
    lines = [
        f"# pronlm evaluation: SpeechOcean762 {report['split']}, {report['n_utterances']} utterances", "",
        f"Predictions `{predictions}`; heard phones with accent policy `{report['accent_policy']}`; "
        f"{apa['accuracy']['n']} APA answers scored, {mdd['n']} MDD answers scored.", "",
        "## Against the paper (Ahn & Nam 2025, Table 3, SpeechOcean762 test, 2,500 utterances)", "",
        "| system | epoch | acc PCC | flu PCC | pro PCC | total PCC | WER | PER | F1 | P | R |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| paper {s} | {e} | " + " | ".join(_num(v) for v in vals) + " |" for s, e, *vals in PAPER_TABLE3],
        "| **this run** | | " + " | ".join(f"**{_num(v)}**" for v in ours) + " |",
        *_expected_row(report, 5), "", *_which_scores(report),
        "## Other systems on SpeechOcean762", "",
        "| system | acc PCC | flu PCC | pro PCC | total PCC | PER | MDD F1 (standard protocol) |",
        "|---|---|---|---|---|---|---|",
        *["| " + name + " | " + " | ".join(_num(v) for v in vals) + " |" for name, *vals in OTHER_SYSTEMS],
        "| **this run** | " + " | ".join(f"**{_num(v)}**" for v in ours[:4] + [mdd["per"], mdd["f1"]]) + " |",
        *_expected_row(report, 2), "",
        "## What compares", "",
        "PCC (Pearson r per aspect), WER and PER are defined as in the paper and compare directly when this run "
        "covers the 2,500 test utterances. Our precision, recall and F1 follow the standard MDD protocol "
        "(Li et al. 2016: per canonical phone, TR/(TR+FR) and TR/(TR+FA)) and compare with Joint-CAPT-L1, HMamba "
        "and MuFFIN. The predicted phones are aligned with the canonical ones using the annotation: a predicted "
        "phone pairs at no cost with the canonical or the heard phone of a position, and a phone the annotators "
        "marked deleted may be left out at no cost (ties go to the reading with more agreeing pairs), so a "
        "transcript equal to the heard phones scores every error as a correct diagnosis; predicted insertions are "
        "left out of these counts and count in PER. The paper does not state how its P/R/F1 were counted "
        "(P≈R≈F1≈0.72 with PER 0.11 does not look like the standard protocol), so its F1/P/R columns are not "
        "comparable with ours." + _coverage(report), "",
        "## Details", "",
        "| aspect | PCC | 95% CI | p-value | Spearman | MSE | n |", "|---|---|---|---|---|---|---|",
        *[f"| {a} | {_num(v['pcc'])} | {_ci(v['ci95'])} | {_num(v['p_value'], 4)} | {_num(v['spearman'])} "
          f"| {_num(v['mse'], 2)} | {v['n']} |" for a, v in apa.items()],
        *[f"| {a} (expected) | {_num(v['pcc'])} | {_ci(v['ci95'])} | {_num(v['p_value'], 4)} | "
          f"{_num(v['spearman'])} | {_num(v['mse'], 2)} | {v['n']} |"
          for a, v in (report["apa_expected"] or {}).items()],
        "",
        f"MDD: PER {_num(mdd['per'])} (95% CI {_ci(mdd['per_ci95'])}), F1 {_num(mdd['f1'])} "
        f"(95% CI {_ci(mdd['f1_ci95'])}), FAR {_num(mdd['far'])}, FRR {_num(mdd['frr'])}, DER {_num(mdd['der'])}; "
        "counts " + ", ".join(f"{k} {v}" for k, v in mdd["counts"].items()) + ". "
        "CIs: 1,000 bootstrap resamples of utterances.", "",
        f"Parsing: {parse['apa_failed']} APA and {parse['mdd_failed']} MDD answers failed to parse (failed MDD "
        f"answers count as empty transcripts; failed APA answers are left out of the PCC); "
        f"{parse['apa_missing']} APA and {parse['mdd_missing']} MDD predictions missing (left out); "
        f"{parse['unknown_ids']} prediction lines with ids not in the corpus skipped; {parse['out_of_range']} "
        f"APA answers failed with a score outside 0-10; {parse['repeated_agreeing']} repeated lines agreed and "
        f"counted once, {parse['repeated_conflicting']} disagreed.", "",
        *[f"![{Path(p).stem}]({p})" for p in PLOTS], "",
    ]
    return "\n".join(lines)


def _expected_row(report: dict, blanks: int) -> list[str]:
    """The row of PCCs on the expected scores, when the predictions have them; `blanks` columns after."""
    expected = report.get("apa_expected")
    if not expected:
        return []
    return ["| **this run, expected scores** | " + ("| " if blanks == 5 else "")
            + " | ".join(f"**{_num(expected[a]['pcc'])}**" for a in ASPECTS) + " |" + " – |" * blanks]


def _which_scores(report: dict) -> list[str]:
    if not report.get("apa_expected"):
        return ["APA PCCs are on the greedy integer scores (the paper's protocol).", ""]
    return ["Two sets of APA PCCs: **this run** on the greedy integer scores (`scores`, the paper's protocol); "
            "**this run, expected scores** on the probability-weighted scores (`scores_expected`: for each aspect "
            "Σ v·p(v) over the 11 value tokens at the score's position; ours, not the paper's).", ""]


def _coverage(report: dict) -> str:
    n = report["mdd"]["n"]
    if report["split"] == "test" and n == PAPER_TEST_SIZE:
        return ""
    return (f" This run scored {n} MDD answers of the {report['split']} split, not the paper's "
            f"{PAPER_TEST_SIZE:,} test utterances, so none of its numbers compare directly.")


def _ci(ci) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]"


# ---------------------------------------------------------------- plots


def _jitter(values, rng) -> np.ndarray:
    """Integer scores overlap; a little noise shows how many points sit on each."""
    return np.asarray(values, float) + rng.uniform(-0.15, 0.15, len(values))


def plot_apa(pairs: dict[str, tuple[list, list]], path: Path) -> None:
    """Predicted vs human score, one panel per aspect."""
    fig = Figure(figsize=(9, 8), layout="constrained")
    rng = np.random.default_rng(0)
    for ax, aspect in zip(fig.subplots(2, 2).ravel(), ASPECTS):
        pred, human = pairs[aspect]
        ax.scatter(_jitter(human, rng), _jitter(pred, rng), s=8, alpha=0.4)
        ax.plot([0, 10], [0, 10], color="grey", lw=0.8)
        r = metrics.pcc(pred, human)[0]
        ax.set(title=f"{aspect} (r = {_num(r if math.isfinite(r) else None)}, n = {len(pred)})",
               xlabel="human score", ylabel="predicted score", xlim=(-0.5, 10.5), ylim=(-0.5, 10.5))
    fig.savefig(path, dpi=100)


def plot_per_vs_accuracy(rows: list[MddRow], path: Path) -> None:
    """Utterance PER against the human accuracy score, with the mean per score (paper Fig. 5)."""
    rows = [r for r in rows if r.heard]
    acc = np.array([r.human_accuracy for r in rows], float)
    per = np.array([r.errors / r.heard for r in rows], float)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(_jitter(acc, np.random.default_rng(0)), per, s=8, alpha=0.4, label="utterance")
    levels = np.unique(acc)
    ax.plot(levels, [per[acc == v].mean() for v in levels], "o-", color="C3", label="mean per score")
    ax.set(xlabel="human accuracy score", ylabel="PER", title="PER vs human accuracy")
    ax.legend()
    fig.savefig(path, dpi=100)


def plot_confusions(rows: list[MddRow], path: Path, top: int = 15) -> None:
    """The most frequent canonical->heard errors, split by what the model did (CD, DE, FA)."""
    by_pair = Counter((c, h) for r in rows for c, h, _ in r.confusions)
    outcome = Counter((c, h, lab) for r in rows for c, h, lab in r.confusions)
    pairs = [p for p, _ in by_pair.most_common(top)][::-1]
    fig = Figure(figsize=(7, 1 + 0.35 * max(len(pairs), 3)), layout="constrained")
    ax = fig.subplots()
    left = np.zeros(len(pairs))
    for label, name in (("CD", "correct diagnosis"), ("DE", "wrong diagnosis"), ("FA", "missed")):
        widths = np.array([outcome[c, h, label] for c, h in pairs], float)
        ax.barh([f"{c} → {h}" for c, h in pairs], widths, left=left, label=name)
        left += widths
    if not pairs:
        ax.text(0.5, 0.5, "no mispronounced phones", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="phones", title="most frequent mispronunciations (canonical → heard)")
    fig.legend(loc="outside lower center", ncols=3)
    fig.savefig(path, dpi=100)
