"""The assessment schema shared by `pronlm assess` and the HTTP service: scores, heard words and
phones, per-word feedback, and what failed, built from one APA and one MDD prediction record."""

from __future__ import annotations

from dataclasses import asdict

from pronlm.app.alignment import NOT_JUDGED, WordResult, word_feedback
from pronlm.app.lexicon import Lexicon, expected_words, normalise_words
from pronlm.data.schema import answer_fields


def feedback(text: str, apa: dict | None, mdd: dict | None, lexicon: Lexicon | None = None) -> dict:
    """The assessment schema from one utterance's APA and MDD prediction records."""
    lexicon = lexicon or Lexicon()
    words = expected_words(text, lexicon)
    answers = answer_fields(apa, mdd)
    if any(e["task"] == "mdd" for e in answers["errors"]):
        # what was heard is unknown: no word is judged, and none is called omitted
        results = [WordResult(w, NOT_JUDGED, p is not None, list(p or ()), variant=0 if p else None,
                              variants=[list(v) for v in lexicon.variants(w)] if p else []) for w, p in words]
    else:
        heard = [p for p in answers["phoneme_transcript"].split() if p != "|"]
        results = word_feedback(words, heard, normalise_words(answers["word_transcript"]), lexicon)
    return {"text": text, "scores": answers["scores"], "scores_expected": answers["scores_expected"],
            "scores_sd": answers["scores_sd"], "scores_interval": answers["scores_interval"],
            "word_transcript": answers["word_transcript"],
            "phoneme_transcript": answers["phoneme_transcript"], "words": [asdict(r) for r in results],
            "errors": answers["errors"], "unknown_words": list(dict.fromkeys(w for w, p in words if p is None))}
