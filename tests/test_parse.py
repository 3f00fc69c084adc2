"""parse_answer: variants a model really writes, malformed answers, and a fuzz test that it never raises."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pronlm.data.parse import normalise_phones, parse_answer, to_score

S8 = {"accuracy": 8, "fluency": 7, "prosodic": 9, "total": 8}
GOOD_APA = '{"accuracy": 8, "fluency": 7, "prosodic": 9, "total": 8}'

APA_OK = [
    (GOOD_APA, S8),
    ("<|user|><|APA|><|audio_1|>rate it<|end|><|assistant|>" + GOOD_APA + "<|end|>", S8),
    # only the text after the LAST <|assistant|> counts: the first answer is an echoed example
    ('<|assistant|>{"accuracy": 1, "fluency": 1, "prosodic": 1, "total": 1}<|end|><|assistant|>' + GOOD_APA, S8),
    # everything after the first end token is ignored, even a second object
    (GOOD_APA + '<|end|>{"accuracy": 0, "fluency": 0, "prosodic": 0, "total": 0}', S8),
    (GOOD_APA + "<|endoftext|>garbage {", S8),
    ("```json\n" + GOOD_APA + "\n```", S8),
    ("```\n" + GOOD_APA + "\n```", S8),
    ("Here are the scores: " + GOOD_APA + " Hope this helps!", S8),
    ("{'accuracy': 8, 'fluency': 7, 'prosodic': 9, 'total': 8}", S8),
    ('{"accuracy": "8", "fluency": "7", "prosodic": "9", "total": "8"}', S8),
    # floats round to nearest, halves up: 7.5 -> 8, 6.5 -> 7, 8.49 -> 8, 9.0 -> 9
    ('{"accuracy": 7.5, "fluency": 6.5, "prosodic": 9.0, "total": 8.49}',
     {"accuracy": 8, "fluency": 7, "prosodic": 9, "total": 8}),
    ('{"Accuracy": 8, "FLUENCY": 7, "Prosodic": 9, "Total": 8}', S8),
    ('{"accuracy score": 8, "fluency-score": 7, "prosody": 9, "overall": 8}', S8),
    ('{"scores": {"accuracy": 8, "fluency": 7, "prosodic": 9, "total": 8}}', S8),
    ('{"accuracy": 8, "fluency": 7, "prosodic": 9, "total": 8, "completeness": 10}', S8),
    ('{\n  "accuracy": 8,\n  "fluency": 7,\n  "prosodic": 9,\n  "total": 8\n}', S8),
    ("Accuracy: 8/10, Fluency: 7, Prosody = 9, Overall: 8", S8),  # prose: key: value pairs
    ('{"accuracy": "8 out of 10", "fluency": "7/10", "prosodic": " 9", "total": "+8"}', S8),
    # an object without the keys, then the real one
    ('{"note": "thinking"} then ' + GOOD_APA, S8),
    ('{"accuracy": 8, "fluency": 7, "prosodic": 9, "total": 8, "comment": "a } brace in a string"}', S8),
]


@pytest.mark.parametrize("raw,scores", APA_OK)
def test_apa_variants_parse(raw, scores):
    out = parse_answer("apa", raw)
    assert out == {"ok": True, "error": None, "scores": scores, "clamped": []}


def test_apa_out_of_range_is_clamped_and_named():
    out = parse_answer("apa", '{"accuracy": 12, "fluency": -1, "prosodic": 10, "total": 0}')
    assert out["ok"] is True
    assert out["scores"] == {"accuracy": 10, "fluency": 0, "prosodic": 10, "total": 0}
    assert out["clamped"] == ["accuracy", "fluency"]


APA_BAD = [
    ('{"accuracy": 8, "fluency": 7, "prosodic": 9}', "'total'"),
    ('{"fluency": 7, "prosodic": 9, "total": 8}', "'accuracy'"),
    ('{"accuracy": 8, "fluency": 7, "prosodic": 9', "'total'"),  # cut off before "total"
    ('{"accuracy": "good", "fluency": 7, "prosodic": 9, "total": 8}', "'accuracy' is not a number"),
    ('{"accuracy": true, "fluency": 7, "prosodic": 9, "total": 8}', "'accuracy' is not a number"),
    ('{"accuracy": null, "fluency": 7, "prosodic": 9, "total": 8}', "'accuracy' is not a number"),
    ('{"accuracy": NaN, "fluency": 7, "prosodic": 9, "total": 8}', "'accuracy' is not a number"),
    ('{"accuracy": [8], "fluency": 7, "prosodic": 9, "total": 8}', "'accuracy' is not a number"),
    ("", "empty answer"),
    ("<|assistant|><|end|>", "empty answer"),
    ("The speaker did well.", "no JSON object"),
    ('{"note": 1}', "missing aspect 'accuracy'"),
    ("[8, 7, 9, 8]", "no JSON object"),
]


@pytest.mark.parametrize("raw,reason", APA_BAD)
def test_apa_failures_say_why(raw, reason):
    out = parse_answer("apa", raw)
    assert out["ok"] is False and out["scores"] is None and out["clamped"] == []
    assert reason in out["error"]


MDD_OK = [
    ('{"word_transcript": "THE CAT", "phoneme_transcript": "DH AH K AE T"}', "THE CAT", "DH AH K AE T"),
    ("<|assistant|>{\"word_transcript\": \"THE CAT\", \"phoneme_transcript\": \"DH AH K AE T\"}<|end|><|endoftext|>",
     "THE CAT", "DH AH K AE T"),
    # lower case and stress digits normalised, whitespace collapsed
    ('{"word_transcript": "the  cat", "phoneme_transcript": " dh ah0  k\\tae1 t "}', "the cat", "DH AH K AE T"),
    # <unk> stays lower case whatever the model wrote
    ('{"word_transcript": "THE <unk>", "phoneme_transcript": "DH AH <UNK> <unk>"}', "THE <unk>", "DH AH <unk> <unk>"),
    ("{'word transcript': \"IT'S\", 'phoneme transcript': 'IH T S'}", "IT'S", "IH T S"),
    ('{"Word Transcript": "A", "Phoneme Transcript": "AH"}', "A", "AH"),
    ('{"word-transcript": "A", "PHONEME_TRANSCRIPT": "AH"}', "A", "AH"),
    ('{"words": "A", "phonemes": "AH"}', "A", "AH"),
    ('{"word_transcript": "A", "phonemes": ["AH0", "B"]}', "A", "AH B"),
    ("```json\n{\"word_transcript\": \"A\", \"phoneme_transcript\": \"AH\"}\n```", "A", "AH"),
    ('Transcript follows. {"word_transcript": "A", "phoneme_transcript": "AH, B."} Done.', "A", "AH B"),
    ('{"word_transcript": "", "phoneme_transcript": ""}', "", ""),  # empty but well-formed: ok
    # cut off after the phone string closed: the quoted pairs still read
    ('{"word_transcript": "A B", "phoneme_transcript": "AH B IY"', "A B", "AH B IY"),
]


@pytest.mark.parametrize("raw,words,phones", MDD_OK)
def test_mdd_variants_parse(raw, words, phones):
    assert parse_answer("mdd", raw) == {"ok": True, "error": None, "word_transcript": words,
                                        "phoneme_transcript": phones}


MDD_BAD = [
    ('{"word_transcript": "A"}', "missing 'phoneme_transcript'"),
    ('{"phoneme_transcript": "AH"}', "missing 'word_transcript'"),
    ('{"word_transcript": "A", "phoneme_transcript": "AH B', "missing 'phoneme_transcript'"),  # unterminated
    ('{"word_transcript": "A", "phoneme_transcript": 3}', "'phoneme_transcript' is int"),
    ("DH AH K AE T", "no JSON object"),
    ("   \n", "empty answer"),
]


@pytest.mark.parametrize("raw,reason", MDD_BAD)
def test_mdd_failures_say_why(raw, reason):
    out = parse_answer("mdd", raw)
    assert out == {"ok": False, "error": out["error"], "word_transcript": "", "phoneme_transcript": ""}
    assert reason in out["error"]


def test_unknown_task_and_non_text_do_not_raise():
    assert parse_answer("asr", GOOD_APA) == {"ok": False, "error": "unknown task 'asr': expected one of apa, mdd, wrd"}
    assert parse_answer("apa", None)["error"] == "answer is NoneType, not text"
    assert parse_answer("mdd", b"{}")["ok"] is False


@pytest.mark.parametrize("value,expected", [(8, 8), ("8", 8), (7.5, 8), (7.49, 7), ("-2", -2), (True, None),
                                            ("x", None), (float("inf"), None), (None, None)])
def test_to_score(value, expected):
    assert to_score(value) == expected


def test_normalise_phones():
    assert normalise_phones("dh ah0\n\nS IH1 <Unk> l*") == "DH AH S IH <unk> L*"


APA_KEYS = {"ok", "error", "scores", "clamped"}
MDD_KEYS = {"ok", "error", "word_transcript", "phoneme_transcript"}


def assert_schema(task: str, out: dict) -> None:
    assert isinstance(out["ok"], bool)
    assert "unexpected parser error" not in (out["error"] or "")
    assert (out["error"] is None) == out["ok"]
    if task == "apa":
        assert set(out) == APA_KEYS
        if out["ok"]:
            assert set(out["scores"]) == {"accuracy", "fluency", "prosodic", "total"}
            assert all(type(v) is int and 0 <= v <= 10 for v in out["scores"].values())
            assert set(out["clamped"]) <= set(out["scores"])
        else:
            assert out["scores"] is None and out["clamped"] == []
    else:
        assert set(out) == MDD_KEYS
        assert isinstance(out["word_transcript"], str) and isinstance(out["phoneme_transcript"], str)
        if not out["ok"]:
            assert out["word_transcript"] == out["phoneme_transcript"] == ""
        phones = out["phoneme_transcript"]
        assert phones == " ".join(phones.split())
        assert not re.search(r"[A-Z][012](\s|$)", phones)  # no stress digits left


JSONISH = st.text(alphabet='{}[]"\':,.0123456789 \n-_abcdeflnprstuyATUW<|>`', max_size=120)


def _mutate(text: str, cut: int, insert: str) -> str:
    cut = cut % (len(text) + 1)
    return text[:cut] + insert + text[cut + 1:]


VALID = [GOOD_APA, '{"word_transcript": "THE CAT", "phoneme_transcript": "DH AH0 K AE1 T"}',
         "{'accuracy': 8.5, 'fluency': '7', 'prosodic': 9, 'total': 8}"]


@settings(max_examples=2000, deadline=None)
@given(task=st.sampled_from(["apa", "mdd"]),
       raw=st.one_of(st.text(max_size=200), JSONISH,
                     st.builds(_mutate, st.sampled_from(VALID), st.integers(0, 200), JSONISH)))
def test_fuzz_never_raises_and_keeps_schema(task, raw):
    assert_schema(task, parse_answer(task, raw))


@settings(max_examples=300, deadline=None)
@given(scores=st.fixed_dictionaries({a: st.one_of(st.integers(-50, 50), st.floats(allow_nan=True))
                                     for a in ("accuracy", "fluency", "prosodic", "total")}),
       prefix=st.text(max_size=20), wrap=st.booleans())
def test_fuzz_serialised_scores_round_trip(scores, prefix, wrap):
    raw = json.dumps(scores)
    raw = prefix.replace("{", "") + ("```json\n" + raw + "\n```" if wrap else raw)
    out = parse_answer("apa", raw)
    assert_schema("apa", out)
    finite = all(v == v and abs(v) != float("inf") for v in scores.values())
    assert out["ok"] == finite


@pytest.mark.parametrize("phones, bad", [
    ('"phoneme_transcript": "L UH"', "PHONEME_TRANSCRIPT"),  # a key leaked into the value (seen from the tiny model)
    ('"AX L"', "AX"),  # TIMIT's schwa is not one of CMUdict's 39 phones
    ('"DH AH hello"', "HELLO"),
])
def test_symbols_that_are_not_arpabet_phones_fail_the_answer(phones, bad):
    got = parse_answer("mdd", '{"word_transcript": "THE", "phoneme_transcript": ' + phones + "}")
    assert got["ok"] is False and bad in got["error"] and got["phoneme_transcript"] == ""


def test_unk_separator_and_accented_phones_are_phone_symbols():
    got = parse_answer("mdd", '{"word_transcript": "A B", "phoneme_transcript": "AH1 | B* <UNK>"}')
    assert got == {"ok": True, "error": None, "word_transcript": "A B", "phoneme_transcript": "AH | B* <unk>"}


GOOD_WRD = '{"words": [{"word": "WE", "accuracy": 10, "stress": 10, "total": 9}, ' \
           '{"word": "CALL", "accuracy": 6, "stress": 5, "total": 6}]}'
WRD_WORDS = [{"word": "WE", "accuracy": 10, "stress": 10, "total": 9},
             {"word": "CALL", "accuracy": 6, "stress": 5, "total": 6}]


@pytest.mark.parametrize("raw", [
    GOOD_WRD, GOOD_WRD + "<|end|>", "<|assistant|>" + GOOD_WRD, "```json\n" + GOOD_WRD + "\n```",
    GOOD_WRD.replace('"word"', '"Word"').replace('"stress"', '"Stress"'),
    GOOD_WRD.replace(": 10,", ': "10",').replace('"total": 9', '"total": 9.0'),
    GOOD_WRD[len('{"words": '):-1],  # a bare list of entries
    "{'words': [{'word': 'WE', 'accuracy': 10, 'stress': 10, 'total': 9}, "
    "{'word': 'CALL', 'accuracy': 6, 'stress': 5, 'total': 6}]}",
])
def test_word_answers_parse(raw):
    out = parse_answer("wrd", raw)
    assert (out["ok"], out["words"], out["clamped"]) == (True, WRD_WORDS, [])


@pytest.mark.parametrize("raw, reason", [
    ("", "empty answer"),
    ('{"words": [{"word": "WE", "accuracy": 10, "stress": 10, "total": 9}', 'no JSON object with a "words" list'),
    ('{"words": [{"accuracy": 10, "stress": 10, "total": 9}]}', 'word entry 0 has no "word" text'),
    ('{"words": [{"word": "WE", "accuracy": "good", "stress": 10, "total": 9}]}',
     "word entry 0 (WE): 'accuracy' missing or not a number"),
    ('{"words": [{"word": "WE", "accuracy": 10, "total": 9}]}', "word entry 0 (WE): 'stress' missing"),
])
def test_word_failures_say_why(raw, reason):
    out = parse_answer("wrd", raw)
    assert not out["ok"] and out["words"] is None and reason in out["error"]


def test_word_scores_out_of_range_are_clamped_and_named():
    out = parse_answer("wrd", GOOD_WRD.replace('"stress": 5', '"stress": 12'))
    assert out["ok"] and out["words"][1]["stress"] == 10 and out["clamped"] == ["1.stress"]


@settings(max_examples=1000, deadline=None)
@given(raw=st.one_of(st.text(max_size=200), JSONISH, st.builds(_mutate, st.just(GOOD_WRD), st.integers(0, 200), JSONISH)))
def test_fuzz_word_answers_never_raise(raw):
    out = parse_answer("wrd", raw)
    assert set(out) == {"ok", "error", "words", "clamped"} and (out["error"] is None) == out["ok"]
    if out["ok"]:
        assert all(type(w[a]) is int and 0 <= w[a] <= 10 for w in out["words"] for a in ("accuracy", "stress", "total"))
    else:
        assert out["words"] is None
