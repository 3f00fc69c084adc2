"""The records every stage after generation shares: one answer per (utterance, task), parsed.

A prediction record is `{"id", "task", "raw", "ok", "error", ...the task's fields}`: APA adds
`scores` (the greedy integers 0-10), `clamped` (aspects brought back into 0-10) and
`scores_expected` (probability-weighted scores, or null) with `scores_sd` and `scores_interval`
(each score's standard deviation and 80 % interval [low, high], or null); MDD adds `word_transcript`
and `phoneme_transcript`, and `phone_scores` where the canonical phones were known (one
`{"phone", "score", "p", "likely"}` per canonical phone, score on SpeechOcean762's 0-2 phone-accuracy
scale: `pronlm.evaluation.phone_scores`); the word task (WRD) adds `words` (one `{"word", "accuracy",
"stress", "total"}` per word of the text, integers 0-10), `clamped` and `words_expected` (each word's three
probability-weighted scores, or null). `pronlm.data.parse` makes them from the model's text, `predict` writes them
one JSON line each, `evaluate` reads them back through `check_record`, and `assess` and `serve`
read the two answers of one recording through `answer_fields`.
"""

from __future__ import annotations

from pronlm.data.prompts import TASKS
from pronlm.data.records import ASPECTS, WORD_ASPECTS
from pronlm.errors import PronlmError

ANSWER_KEYS = {"apa": ASPECTS, "mdd": ("word_transcript", "phoneme_transcript"), "wrd": ("words",)}  # what each answer holds
PHONE_SCORES = "phone_scores"  # an MDD record's per-canonical-phone scores (0-2), where computed
SCORE_RANGE = (0, 10)


class PredictionsError(PronlmError):
    """A prediction file is missing or unreadable, or has a line that is not a prediction record."""


def failure(task: str, error: str) -> dict:
    """The fields of a failed answer for `task`: the same keys as a parsed one, nothing in them."""
    if task == "apa":
        return {"ok": False, "error": error, "scores": None, "clamped": []}
    if task == "mdd":
        return {"ok": False, "error": error, "word_transcript": "", "phoneme_transcript": ""}
    if task == "wrd":
        return {"ok": False, "error": error, "words": None, "clamped": []}
    return {"ok": False, "error": error}


def check_record(obj, where: str) -> dict:
    """A record read back from a file, checked; raises `PredictionsError` naming `where`.

    A record without "ok" (raw text only) is returned as it is, for the caller to parse. An "ok" APA
    answer with a score outside 0-10 (a hand-edited or foreign file) becomes a failed answer.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or obj.get("task") not in TASKS:
        raise PredictionsError(f"{where}: expected an object with a string \"id\" and \"task\" in {TASKS}")
    if not obj.get("ok"):
        return obj
    if obj["task"] == "mdd":
        if not all(isinstance(obj.get(k), str) for k in ANSWER_KEYS["mdd"]):
            raise PredictionsError(f"{where}: \"ok\" MDD prediction without word_transcript and phoneme_transcript")
        return obj
    if obj["task"] == "wrd":
        return _check_words(obj, where)
    scores = obj.get("scores")
    if not valid_scores(scores):
        raise PredictionsError(f"{where}: \"ok\" APA prediction without integer scores for {', '.join(ASPECTS)}")
    outside = {a: v for a, v in scores.items() if a in ASPECTS and not SCORE_RANGE[0] <= v <= SCORE_RANGE[1]}
    if outside:
        return {**obj, "ok": False, "scores": None, "scores_expected": None, "scores_sd": None, "scores_interval": None,
                "error": f"score outside {SCORE_RANGE[0]}-{SCORE_RANGE[1]}: {outside}"}
    return obj


def _check_words(obj: dict, where: str) -> dict:
    """An "ok" WRD record: a list of word entries; one with a score outside 0-10 becomes a failed answer."""
    words = obj.get("words")
    if not isinstance(words, list) or not all(valid_word(w) for w in words):
        raise PredictionsError(f"{where}: \"ok\" WRD prediction without a list of words, each with \"word\" and "
                               f"integer {', '.join(WORD_ASPECTS)}")
    low, high = SCORE_RANGE
    outside = [f"{w['word']}.{a}" for w in words for a in WORD_ASPECTS if not low <= w[a] <= high]
    if outside:
        return {**obj, "ok": False, "words": None, "words_expected": None,
                "error": f"score outside {low}-{high}: {outside[:5]}"}
    return obj


def valid_word(entry) -> bool:
    """A word entry: its text and a number for each of the three word scores."""
    return (isinstance(entry, dict) and isinstance(entry.get("word"), str)
            and all(isinstance(entry.get(a), (int, float)) and not isinstance(entry.get(a), bool)
                    for a in WORD_ASPECTS))


def valid_scores(scores) -> bool:
    """A number for each of the four aspects."""
    return isinstance(scores, dict) and all(isinstance(scores.get(a), (int, float)) for a in ASPECTS)


def answer_fields(apa: dict | None, mdd: dict | None, wrd: dict | None = None) -> dict:
    """Scores, heard words and phones, word scores, and what failed, from one recording's APA, MDD and
    (when asked) WRD records (None: no answer came back; `wrd` None: the word task was not asked)."""
    apa = apa or failure("apa", "no APA prediction was returned")
    mdd = mdd or failure("mdd", "no MDD prediction was returned")
    words = {}
    if wrd is not None:
        words = {"words": wrd["words"] if wrd["ok"] else None,
                 "words_expected": wrd.get("words_expected") if wrd["ok"] else None}
    return {
        "scores": apa["scores"] if apa["ok"] else None,
        "scores_expected": apa.get("scores_expected") if apa["ok"] else None,
        "scores_sd": apa.get("scores_sd") if apa["ok"] else None,
        "scores_interval": apa.get("scores_interval") if apa["ok"] else None,
        "word_transcript": mdd["word_transcript"] if mdd["ok"] else "",
        "phoneme_transcript": " ".join(mdd["phoneme_transcript"].split()) if mdd["ok"] else "",
        "errors": [{"task": task, "error": rec["error"] or "unknown error"}
                   for task, rec in (("apa", apa), ("mdd", mdd), ("wrd", wrd)) if rec is not None and not rec["ok"]],
    } | words
