"""`pronlm evaluate`: predictions JSONL + corpus -> report.json, and report.md beside the paper
(`markdown`) with its figures (`plots`); and GOPT's three granularities (`granularities`): phone
accuracy over every test phone, word scores over every test word, utterance scores.

Failed parses count as what they are: a failed MDD answer is an empty transcript (all deletions
in WER, PER and MDD); a failed APA answer has no score and is left out of the correlations. Both
are counted under "parse", as are utterances with no prediction at all (left out of everything).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pronlm.data.corpus import read_corpus
from pronlm.data.parse import normalise_phones, parse_answer
from pronlm.data.prompts import PAPER_TASKS
from pronlm.data.records import ASPECTS, WORD_ASPECTS, Utterance, UtteranceError
from pronlm.data.schema import PHONE_SCORES, PredictionsError, check_record, valid_scores
from pronlm.data.targets import (
    DELETED,
    WORD_SEPARATOR,
    AccentPolicy,
    aligned_word_phones,
    strip_stress,
)
from pronlm.data.text import spoken_form, words
from pronlm.errors import PronlmError
from pronlm.evaluation import metrics
from pronlm.evaluation.markdown import report_markdown
from pronlm.evaluation.metrics import MddRow
from pronlm.evaluation.plots import (
    PLOTS,
    plot_apa,
    plot_confusions,
    plot_per_vs_accuracy,
)
from pronlm.evaluation.uncertainty import calibration


class ReportError(PronlmError):
    """Evaluation cannot run (bad accent policy, no prediction matches the corpus)."""


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


def calibration_section(utts: list[Utterance], preds: dict) -> dict | None:
    """Per aspect, how often the human score lies inside the model's 80 % interval (`scores_interval`),
    and the intervals' mean width (`pronlm.evaluation.uncertainty.calibration`); None without intervals."""
    answers = [(u, preds[u.id, "apa"]) for u in utts if (u.id, "apa") in preds]
    good = [(u, a["scores_interval"]) for u, a in answers if a["ok"] and isinstance(a.get("scores_interval"), dict)]
    if not good:
        return None
    return {x: calibration([(getattr(u.scores, x), tuple(i[x])) for u, i in good if x in i]) for x in ASPECTS}


def phone_section(utts: list[Utterance], preds: dict) -> dict | None:
    """GOPT's phone protocol: MSE and PCC of the phone scores (0-2, `phone_scores` of the MDD records)
    against the annotation's phones-accuracy, over every canonical phone; None when no record has them.

    An utterance whose scores are unreadable or do not match its canonical phones one for one is left out
    (`skipped_utterances`).
    """
    pred, human, skipped = [], [], 0
    for u in utts:
        scores = (preds.get((u.id, "mdd")) or {}).get(PHONE_SCORES)
        if scores is None:
            continue
        accuracies = [a for w in u.words for a in w.phone_accuracies]
        canonical = [strip_stress(p) for w in u.words for p in w.canonical_phones]
        readable = isinstance(scores, list) and all(isinstance(s, dict) and isinstance(s.get("score"), (int, float))
                                                    for s in scores)
        if not readable or [s.get("phone") for s in scores] != canonical or len(accuracies) != len(canonical):
            skipped += 1
            continue
        pred += [s["score"] for s in scores]
        human += accuracies
    if not pred and not skipped:
        return None
    r, p = metrics.pcc(pred, human)
    return {"mse": metrics.mse(pred, human), "pcc": r, "p_value": p, "ci95": metrics.pcc_ci(pred, human),
            "n": len(pred), "skipped_utterances": skipped}


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


def word_section(utts: list[Utterance], preds: dict, key: str = "words") -> tuple[dict | None, int]:
    """Word accuracy / stress / total agreement over every word of the answered utterances (GOPT's
    protocol), and how many answers were left out because their words are not the text's.

    `key`: "words" (the greedy integers) or "words_expected"; None when no answer has them.
    """
    pairs = {a: ([], []) for a in WORD_ASPECTS}
    found, misaligned = False, 0
    for utt in utts:
        answer = preds.get((utt.id, "wrd"))
        if not answer or not answer["ok"] or not answer.get(key):
            continue
        found = True
        said = [e.get("word") for e in answer["words"]]
        if said != [w.text for w in utt.words] or len(answer[key]) != len(utt.words):
            misaligned += 1  # free text that lists other words: no word of it can be paired
            continue
        for entry, word in zip(answer[key], utt.words):
            for aspect in WORD_ASPECTS:
                pairs[aspect][0].append(entry[aspect])
                pairs[aspect][1].append(getattr(word, aspect))
    if not found:
        return None, misaligned
    return {a: metrics.agreement(pred, human) for a, (pred, human) in pairs.items()}, misaligned


def completeness_section(utts: list[Utterance], preds: dict) -> dict | None:
    """Utterance completeness, derived (neither the paper nor the model predicts it): 10 x the share of
    the text's words that the MDD word transcript holds in order (`metrics.completeness`)."""
    pred, human = [], []
    for utt in utts:
        answer = preds.get((utt.id, "mdd"))
        if answer is None or utt.scores.completeness is None:
            continue
        heard = words(answer["word_transcript"]) if answer["ok"] else []
        pred.append(metrics.completeness(words(utt.text), heard))
        human.append(float(utt.scores.completeness))
    return metrics.agreement(pred, human) if pred else None


def granularities(utts: list[Utterance], preds: dict, apa: dict, phone: dict | None) -> dict:
    """GOPT's table (Gong et al. 2022): phone (`phone_section`), word and utterance agreement; a
    granularity the predictions do not hold is None (the report says so), never zeros."""
    mismatched = phone["skipped_utterances"] if phone else 0
    word, misaligned = word_section(utts, preds)
    utterance = {a: {k: apa[a][k] for k in ("pcc", "p_value", "mse", "n")} for a in ASPECTS
                 if apa[a]["n"]}
    completeness = completeness_section(utts, preds)
    if completeness:
        utterance["completeness"] = completeness
    return {"phone": phone, "word": word, "word_expected": word_section(utts, preds, "words_expected")[0],
            "utterance": utterance or None, "phone_length_mismatch": mismatched, "word_misaligned": misaligned}


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
    if not Path(predictions).is_file():  # before the corpus: a missing file must not wait on the hub
        raise ReportError(f"predictions file {predictions} not found: give the file `pronlm predict --out` wrote")
    corpus_errors: list[UtteranceError] = []
    utts = [u for u in read_corpus(corpus, split, corpus_errors)
            if u.labelled and (speakers is None or u.speaker in speakers)]
    preds, repeated = read_predictions(predictions, duplicates)
    known = {u.id for u in utts}
    if not any(i in known for i, _ in preds):
        raise ReportError(f"no prediction in {predictions} has the id of a labelled {split} utterance of {corpus} "
                          "(wrong --split or --corpus?)")
    apa, pairs = apa_section(utts, preds)
    phone = phone_section(utts, preds)
    tasks = PAPER_TASKS + (("wrd",) if any(t == "wrd" for _, t in preds) else ())
    has_expected = any(valid_scores(a.get("scores_expected")) for (_, t), a in preds.items() if t == "apa")
    rows = [mdd_row(u, preds[u.id, "mdd"], policy) for u in utts if (u.id, "mdd") in preds]
    report = {
        "n_utterances": len(utts), "split": split, "accent_policy": policy.value,
        "apa": apa, "apa_expected": apa_section(utts, preds, "scores_expected")[0] if has_expected else None,
        "calibration": calibration_section(utts, preds), "phone": phone,
        "mdd": mdd_section(utts, preds, rows), "granularities": granularities(utts, preds, apa, phone),
        "parse": {f"{t}_{k}": v for t in tasks for k, v in _parse_counts(utts, preds, t).items()}
        | {"unknown_ids": sum(i not in known for i, _ in preds), "corpus_errors": len(corpus_errors),
           "out_of_range": sum((a.get("error") or "").startswith("score outside") for a in preds.values()),
           "repeated_agreeing": repeated["agreeing"], "repeated_conflicting": repeated["conflicting"]},
    }
    report = _finite(report)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(report_markdown(report, predictions))
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
