"""The assessment schema shared by `pronlm assess` and the HTTP service: scores with their spread, heard
words and phones, per-word feedback (the pronunciation judged against, word scores where the run has
the word task, a score per phone), and what failed, built from one recording's prediction records.

Without a text (free speech) the model's own word transcript stands in for it (`reference`:
"model"): scores and phone feedback stand, but a word cannot be called omitted (it was recognised),
so such a word is `NotJudged`.
"""

from __future__ import annotations

from dataclasses import asdict

from pronlm.app.alignment import INSERTION, NOT_JUDGED, OMISSION, WordResult, word_feedback
from pronlm.app.lexicon import Lexicon, expected_words, normalise_words
from pronlm.data.schema import answer_fields
from pronlm.data.targets import UNK
from pronlm.evaluation.phone_scores import user_score

REFERENCE_TEXT, REFERENCE_MODEL = "text", "model"  # what the words were judged against


def model_text(word_transcript: str) -> str:
    """The model's recognised words as a sentence (`<unk>`, an unclear word, is no word: left out)."""
    return " ".join(normalise_words(" ".join(w for w in word_transcript.split() if w != UNK)))


def feedback(text: str | None, apa: dict | None, mdd: dict | None, lexicon: Lexicon | None = None,
             wrd: dict | None = None) -> dict:
    """The assessment schema from one utterance's APA, MDD (and word-task) prediction records.

    `text` None: free speech, judged against the model's word transcript.
    """
    lexicon = lexicon or Lexicon()
    answers = answer_fields(apa, mdd)
    reference = REFERENCE_TEXT if text is not None else REFERENCE_MODEL
    if text is None:
        text = model_text(answers["word_transcript"])
    words = expected_words(text, lexicon) if text else []
    if any(e["task"] == "mdd" for e in answers["errors"]):
        # what was heard is unknown: no word is judged, and none is called omitted
        results = [WordResult(w, NOT_JUDGED, p is not None, list(p or ()), variant=0 if p else None,
                              variants=[list(v) for v in lexicon.variants(w)] if p else []) for w, p in words]
    else:
        heard = [p for p in answers["phoneme_transcript"].split() if p != "|"]
        results = word_feedback(words, heard, model_text(answers["word_transcript"]).split(), lexicon)
    if reference == REFERENCE_MODEL:
        for r in results:
            r.error_type = NOT_JUDGED if r.error_type == OMISSION else r.error_type
    _word_scores(results, wrd)
    return {"text": text, "reference": reference, "scores": answers["scores"],
            "scores_expected": answers["scores_expected"], "scores_sd": answers["scores_sd"],
            "scores_interval": answers["scores_interval"], "word_transcript": answers["word_transcript"],
            "phoneme_transcript": answers["phoneme_transcript"], "words": [asdict(r) for r in results],
            "errors": answers["errors"], "unknown_words": list(dict.fromkeys(w for w, p in words if p is None))}


def _word_scores(results: list[WordResult], wrd: dict | None) -> None:
    """Each text word's accuracy/stress/total from a word-task answer, paired in order by the word itself."""
    entries = (wrd or {}).get("words") if (wrd or {}).get("ok") else None
    if not entries:
        return
    expected = wrd.get("words_expected") or [None] * len(entries)
    names = [normalise_words(str(e.get("word", ""))) for e in entries]
    k = 0
    for r in results:
        found = next((j for j in range(k, len(entries)) if names[j] == [r.word]), None)
        if r.error_type == INSERTION or found is None:  # a word the answer skipped keeps no scores
            continue
        r.scores = {a: entries[found][a] for a in ("accuracy", "stress", "total") if a in entries[found]}
        r.scores_expected = expected[found] if found < len(expected) else None
        k = found + 1


def judged_words(result: dict) -> tuple[str, list[list[str]], list[dict]]:
    """What phone scoring teacher-forces for an assessment: the text, the expected phones of each of its
    known words (the variant judged against), and those words' entries (to receive the scores)."""
    words = [w for w in result["words"] if w["error_type"] != INSERTION]
    known = [w for w in words if w["known"] and w["expected_phones"]]
    return " ".join(w["word"] for w in words), [w["expected_phones"] for w in known], known


def score_words_phones(result: dict, scores: list[dict]) -> None:
    """Each known word's `phone_scores`: its expected phones' scores in order, 0-2 (`score`) and 0-100 (`accuracy`)."""
    _, _, known = judged_words(result)
    at = 0
    for w in known:
        mine = scores[at:at + len(w["expected_phones"])]
        at += len(w["expected_phones"])
        w["phone_scores"] = [{"phone": s["phone"], "accuracy": user_score(s["score"]), "score": s["score"],
                              "likely": s["likely"]} for s in mine]
