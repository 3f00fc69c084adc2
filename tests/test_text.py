"""Text normalisation: the words a reader says, for assess, serve and evaluate's WER."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pronlm.data.records import Utterance
from pronlm.data.text import TextError, fold_accents, sentence_words, spoken_form, words
from pronlm.evaluation.evaluate import mdd_section
from pronlm.evaluation.metrics import wer


@pytest.mark.parametrize("text, expected", [
    ("résumé", ["RESUME"]),  # before: R, SUM
    ("café", ["CAFE"]),  # before: CAF
    ("Naïve façade, Straße, Łódź, œuvre", ["NAIVE", "FACADE", "STRASSE", "LODZ", "OEUVRE"]),
    ("ﬁne ＡＢＣ", ["FINE", "ABC"]),  # ligature, full-width letters
])
def test_accents_are_folded(text, expected):
    assert sentence_words(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("42", "FORTY TWO"),  # before: one unknown word "42"
    ("1,000 cats", "ONE THOUSAND CATS"),
    ("3.14", "THREE POINT ONE FOUR"),
    ("the 2nd and 21st", "THE SECOND AND TWENTY FIRST"),
    ("in 1990 and 2024", "IN NINETEEN NINETY AND TWENTY TWENTY FOUR"),
    ("50% off", "FIFTY PERCENT OFF"),
    ("MP3", "MP THREE"),
])
def test_numbers_are_spelled_out(text, expected):
    assert " ".join(sentence_words(text)) == expected


def test_apostrophes_and_hyphens_stay_inside_words():
    assert sentence_words("Don’t stop — it's a well‑known rock-'n'-roll 'quote'") == [
        "DON'T", "STOP", "IT'S", "A", "WELL-KNOWN", "ROCK", "N", "ROLL", "QUOTE"]


def test_text_without_latin_letters_is_rejected():
    with pytest.raises(TextError, match="has no words in Latin letters"):  # before: the words disappeared
        sentence_words("東京")
    with pytest.raises(TextError, match=r"not in Latin letters \(東京, Москва\)"):
        sentence_words("From 東京 to Москва.")
    assert sentence_words(" ?! ") == []  # no words at all: the caller says so


def test_a_model_answer_is_never_rejected():
    assert words("WE 東京 CALL") == ["WE", "CALL"]


@given(st.text(alphabet=st.sampled_from([c for c in string.printable if not c.isdigit()])))
def test_plain_ascii_without_digits_is_unchanged(text):
    assert spoken_form(text) == text and fold_accents(text) == text


def test_evaluate_wer_reads_accents_and_numbers_as_assess_does():
    utts = [Utterance("a", "s", "Un café, 42 euros", None), Utterance("b", "s", "We call it bear", None)]
    preds = {("a", "mdd"): {"ok": True, "word_transcript": "UN CAFE FORTY TWO EUROS"},
             ("b", "mdd"): {"ok": True, "word_transcript": "we call it, bear."}}
    assert mdd_section(utts, preds, [])["wer"] == 0.0  # before: 3 errors in 8 words
    assert wer(["Un café, 42 euros", "We call it bear"], ["UN CAFE FORTY TWO EUROS", "we call it, bear."]) > 0
