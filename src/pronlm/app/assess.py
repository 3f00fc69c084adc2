"""Feedback for one recording of a known sentence: scores plus Azure-style per-word errors.

The model gives sentence scores (APA) and the phones it heard as one flat list (MDD). The words
of the sentence (normalised by `pronlm.data.text`: résumé -> RESUME, 42 -> FORTY TWO) give the phones
that were expected (CMUdict, or a lexicon file). Aligning the two says, per word, which phones
were right, substituted, deleted or inserted, and so each word's `error_type`: None /
Mispronunciation / Omission / Insertion, as Azure Pronunciation Assessment, or `NotJudged` when
the MDD answer could not be read (the word may well have been said: `errors` says why; its
`phones` are then empty). `assess` returns the one schema that the CLI and the HTTP service
share; `assess_long` adds `chunks` (one per piece of a long recording cut at pauses).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pronlm.app.alignment import (
    CORRECT,
    DELETED,
    INSERTED,
    INSERTION,
    MISPRONUNCIATION,
    NONE,
    NOT_JUDGED,
    OMISSION,
    SUBSTITUTED,
)
from pronlm.app.feedback import REFERENCE_MODEL, score_words_phones, feedback, judged_words
from pronlm.app.lexicon import AssessError, Lexicon, check_text_fits, expected_words
from pronlm.data.audio import SAMPLE_RATE
from pronlm.data.prompts import PAPER_TASKS
from pronlm.data.records import ASPECTS
from pronlm.data.schema import answer_fields
from pronlm.data.text import sentence_words


def assess_batch(predictor, items: list[tuple[np.ndarray, str | None]], lexicon: Lexicon | None = None,
                 batch_size: int = 8) -> list[dict]:
    """Assess several (16 kHz samples, sentence or None for free speech) pairs with one `predictor.predict`
    call, then score each judged word's phones (`Predictor.phone_scores`, where the backend has it)."""
    lexicon = lexicon or Lexicon()
    for _, text in items:
        if text is not None:
            expected_words(text, lexicon)  # reject a sentence without words before spending inference
    # the word task when the model has it, for recordings with a text (its prompt carries the words)
    words = {str(i): sentence_words(text) for i, (_, text) in enumerate(items) if text is not None}
    tasks = [t for t in getattr(predictor, "tasks", PAPER_TASKS) if t != "wrd" or len(words) == len(items)]
    records = predictor.predict([(str(i), samples) for i, (samples, _) in enumerate(items)],
                                tasks=tasks, batch_size=batch_size, **({"words": words} if "wrd" in tasks else {}))
    by_key = {(str(r["id"]), r["task"]): r for r in records}
    results = [feedback(text, by_key.get((str(i), "apa")), by_key.get((str(i), "mdd")), lexicon,
                        wrd=by_key.get((str(i), "wrd"))) for i, (_, text) in enumerate(items)]
    score = getattr(predictor, "phone_scores", None)
    if score is not None:
        todo = [(samples, result) for (samples, _), result in zip(items, results) if judged_words(result)[1]]
        for (_, result), scores in zip(todo, score([(samples, *judged_words(r)[:2]) for samples, r in todo])):
            score_words_phones(result, scores)
    return results


def assess(predictor, samples: np.ndarray, text: str | None, lexicon: Lexicon | None = None) -> dict:
    """Scores and per-word feedback for one recording (16 kHz float32 mono) of `text` (None: free speech)."""
    return assess_batch(predictor, [(samples, text)], lexicon)[0]


def assess_long(predictor, samples: np.ndarray, text: str, lexicon: Lexicon | None = None,
                batch_size: int = 8) -> dict:
    """A recording of `text` of any length, cut at pauses into pieces the model takes (`speech_chunks`).

    Each piece gets its own scores and heard words and phones (`chunks`, with its start and end in
    seconds). The text is not split: its words are judged against the pieces' heard phones joined
    in order, and `scores` is the pieces' scores averaged by duration (one decimal). When a piece's
    heard phones cannot be read, no word is judged (which words it held is unknown).
    """
    from pronlm.data.audio import speech_chunks

    lexicon = lexicon or Lexicon()
    expected_words(text, lexicon)
    spans = speech_chunks(samples, predictor.max_audio_seconds)
    if not spans:
        raise AssessError("no speech found in the recording: check the microphone and the file")
    records = predictor.predict([(str(k), samples[a:b]) for k, (a, b) in enumerate(spans)], tasks=PAPER_TASKS,
                                batch_size=batch_size)
    by_key = {(str(r["id"]), r["task"]): r for r in records}
    chunks = [{"start": round(a / SAMPLE_RATE, 2), "end": round(b / SAMPLE_RATE, 2),
               **answer_fields(by_key.get((str(k), "apa")), by_key.get((str(k), "mdd")))} for k, (a, b) in enumerate(spans)]
    errors = [{"task": e["task"], "error": f"piece {k + 1} ({c['start']:.1f}-{c['end']:.1f} s): {e['error']}"}
              for k, c in enumerate(chunks) for e in c["errors"]]
    scored = [(c["scores"], c["end"] - c["start"]) for c in chunks if c["scores"]]
    apa = {"ok": True, "scores": _weighted(scored)} if scored else None
    expected = [(c["scores_expected"], c["end"] - c["start"]) for c in chunks if c["scores"]]
    if apa and all(s for s, _ in expected):
        apa["scores_expected"] = _weighted(expected)
    mdd = {"ok": not any(e["task"] == "mdd" for e in errors), "error": "see the pieces' errors",
           "word_transcript": " ".join(c["word_transcript"] for c in chunks if c["word_transcript"]),
           "phoneme_transcript": " ".join(c["phoneme_transcript"] for c in chunks if c["phoneme_transcript"])}
    return {**feedback(text, apa, mdd, lexicon), "errors": errors, "chunks": chunks}


def _weighted(scored: list[tuple[dict, float]]) -> dict:
    """Scores averaged by the pieces' durations, one decimal."""
    return {a: round(sum(s[a] * d for s, d in scored) / sum(d for _, d in scored), 1) for a in ASPECTS}


_COLOURS = {NONE: "32", MISPRONUNCIATION: "31", OMISSION: "35", INSERTION: "33", NOT_JUDGED: "90"}


def _paint(text: str, code: str | None, colour: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if colour and code else text


def _phone_cell(p: dict, colour: bool) -> str:
    if p["status"] == CORRECT:
        return p["heard"]
    shown = {SUBSTITUTED: f"{p['expected']}>{p['heard']}", DELETED: f"-{p['expected']}",
             INSERTED: f"+{p['heard']}"}[p["status"]]
    return _paint(shown, "31", colour)


def format_table(result: dict, colour: bool = False) -> str:
    """A readable report: scores ± their spread, then one line per word (`AO>AA` substituted, `-T` deleted,
    `+S` inserted) and, where known, a line of its phone scores (0-100, coloured by score) and word scores."""
    lines = ["scores:   " + _scores(result["scores"], result.get("scores_expected"), result.get("scores_sd"),
                                    result.get("scores_interval"))]
    if result.get("reference") == REFERENCE_MODEL:
        lines.append("no text given: judged against the model's own transcript (a word left out cannot be told)")
    for k, c in enumerate(result.get("chunks", []), 1):
        unread = any(e["task"] == "mdd" for e in c["errors"])
        scores = _scores(c["scores"], c.get("scores_expected"))
        lines.append(f"piece {k:<3}{c['start']:6.1f}-{c['end']:.1f} s  {scores}  heard: "
                     f"{c['word_transcript'] or ('(not read)' if unread else '(nothing)')}")
    lines.append(f"heard:    {result['phoneme_transcript'] or '(nothing)'}")
    width = max([len(w["word"]) for w in result["words"]] + [4]) + 2
    lines.append(f"{'word':<{width}}{'result':<18}{'expected':<24}heard")
    for w in result["words"]:
        kind = w["error_type"] if w["known"] else f"{w['error_type']} (unknown)"
        heard = " ".join(_phone_cell(p, colour) for p in w["phones"]) or "-"
        lines.append(_paint(f"{w['word']:<{width}}{kind:<18}", _COLOURS.get(w["error_type"]), colour)
                     + f"{' '.join(w['expected_phones']) or ('-' if w['known'] else '?'):<24}{heard}")
        detail = _word_detail(w, colour)
        if detail:
            lines.append(" " * width + detail)
    if result["unknown_words"]:  # no phones to compare: such a word is only found said or omitted
        lines.append("not in the lexicon (said or omitted, its phones not compared; --lexicon FILE adds them): "
                     + ", ".join(result["unknown_words"]))
    if any(e["task"] == "mdd" for e in result["errors"]):
        lines.append("no word is judged: the phones heard could not be read (below)"
                     + ("; the scores stand" if result["scores"] else "; no scores either"))
    lines += [_paint(f"{e['task'].upper()} answer not understood: {e['error']}", "33", colour)
              for e in result["errors"]]
    return "\n".join(lines)


def phone_colour(accuracy: int) -> str:
    """Green from 80, yellow from 50, red below: the web page's bands (`static/app.js`)."""
    return "32" if accuracy >= 80 else "33" if accuracy >= 50 else "31"


def _word_detail(w: dict, colour: bool) -> str:
    """`phones DH 97 AH 41  (pronunciation 2 of 2)  word accuracy 8 stress 10 total 8`, what of it is known."""
    parts = []
    if w.get("phone_scores"):
        parts.append("phones " + " ".join(_paint(f"{p['phone']} {p['accuracy']}", phone_colour(p["accuracy"]), colour)
                                          for p in w["phone_scores"]))
    if len(w.get("variants") or ()) > 1:
        parts.append(f"(pronunciation {w['variant'] + 1} of {len(w['variants'])})")
    if w.get("scores"):
        parts.append("word " + " ".join(f"{k} {v}" for k, v in w["scores"].items()))
    return "  ".join(parts)


def _scores(scores: dict | None, expected: dict | None = None, sd: dict | None = None,
            interval: dict | None = None) -> str:
    """`accuracy 7.8 ± 0.4 [7-8]`: the expected score, its standard deviation and 80 % interval; without
    a spread `accuracy 7.8 (8)` (the model's integer beside it), without expected scores the integers."""
    if not scores:
        return "unavailable"
    if not expected:
        return "  ".join(f"{k} {v}" for k, v in scores.items())
    if sd and interval:
        return "  ".join(f"{k} {expected[k]:.1f} ± {sd[k]:.1f} [{interval[k][0]}-{interval[k][1]}]" for k in scores)
    return "  ".join(f"{k} {expected[k]:.1f} ({v})" for k, v in scores.items())


def assess_command(cfg, audio: str, text: str | None, adapter: str | None = None, fmt: str = "table",
                   lexicon: str | None = None, split_long: bool = False) -> int:
    """`pronlm assess`: print the assessment of one audio file as JSON or as a table, by the model `cfg`
    (and `adapter`) describe.

    A clip over `cfg.max_audio_seconds` is refused, unless `split_long` cuts it at pauses (`assess_long`).
    `text` None: free speech, judged against the model's own transcript (not with `split_long`).
    """
    from pronlm.data.audio import load_audio

    lex = Lexicon.load(lexicon)
    if text is None and split_long:
        raise AssessError("--split-long needs --text: a long recording is judged against the text that was read")
    if text is not None:
        expected_words(text, lex)  # a bad sentence or clip fails before the model loads
    samples = load_audio(audio, utt_id=Path(audio).name)
    seconds = len(samples) / SAMPLE_RATE
    if text is not None:
        check_text_fits(len(expected_words(text, lex)), seconds)
    if seconds > cfg.max_audio_seconds and not split_long:
        raise AssessError(f"{audio} lasts {seconds:.1f} s, over the limit of {cfg.max_audio_seconds:g} s: pass "
                          "--split-long to cut it at pauses and assess each piece, or record one sentence at a time")
    from pronlm.evaluation.predict import load_predictor

    predictor = load_predictor(cfg, adapter)
    if split_long:
        result = assess_long(predictor, samples, text, lex)
    else:
        result = assess(predictor, samples, text, lex)
    if fmt == "json":
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result, colour=sys.stdout.isatty()))
    return 0
