"""One record schema for every stage after generation: parse makes it, evaluate checks it, assess reads it."""

from __future__ import annotations

import pytest

from pronlm.data.parse import parse_answer
from pronlm.data.schema import (
    ANSWER_KEYS,
    PredictionsError,
    answer_fields,
    check_record,
    failure,
)

APA = '{"accuracy": 8, "fluency": 9, "prosodic": 7, "total": 8}'
MDD = '{"word_transcript": "WE CALL IT", "phoneme_transcript": "W IY K AO L IH T"}'
WRD = '{"words": [{"word": "WE", "accuracy": 10, "stress": 10, "total": 9}]}'


@pytest.mark.parametrize("task, raw", [("apa", APA), ("mdd", MDD), ("wrd", WRD)])
def test_a_failed_answer_has_exactly_the_keys_of_a_parsed_one(task, raw):
    parsed = parse_answer(task, raw)
    assert parsed["ok"] and set(failure(task, "x")) == set(parsed)
    assert set(ANSWER_KEYS[task]) <= set(parsed) | set(parsed.get("scores") or {})


def test_check_record_refuses_what_is_not_a_record_and_fails_out_of_range_scores():
    with pytest.raises(PredictionsError, match="f:1: expected an object"):
        check_record({"id": 7, "task": "apa"}, "f:1")
    with pytest.raises(PredictionsError, match="f:2: \"ok\" MDD prediction without"):
        check_record({"id": "a", "task": "mdd", "ok": True, "word_transcript": "A"}, "f:2")
    bad = check_record({"id": "a", "task": "apa", "ok": True, "error": None, "clamped": [], "scores_expected": None,
                        "scores": {"accuracy": 11, "fluency": 9, "prosodic": 7, "total": 8}}, "f:3")
    assert (bad["ok"], bad["scores"], bad["error"]) == (False, None, "score outside 0-10: {'accuracy': 11}")


def test_answer_fields_of_one_recording():
    apa = {**parse_answer("apa", APA), "scores_expected": {"accuracy": 7.6, "fluency": 8.9, "prosodic": 7.0,
                                                             "total": 8.1},
           "scores_sd": {"accuracy": 0.5, "fluency": 0.3, "prosodic": 0.0, "total": 0.4},
           "scores_interval": {"accuracy": [7, 8], "fluency": [8, 9], "prosodic": [7, 7], "total": [8, 9]}}
    got = answer_fields(apa, parse_answer("mdd", MDD))
    assert got == {"scores": {"accuracy": 8, "fluency": 9, "prosodic": 7, "total": 8},
                   "scores_expected": apa["scores_expected"], "scores_sd": apa["scores_sd"],
                   "scores_interval": apa["scores_interval"], "word_transcript": "WE CALL IT",
                   "phoneme_transcript": "W IY K AO L IH T", "errors": []}
    none = answer_fields(None, parse_answer("mdd", "nonsense"))
    assert (none["scores"], none["word_transcript"]) == (None, "")
    assert none["errors"] == [{"task": "apa", "error": "no APA prediction was returned"},
                              {"task": "mdd", "error": "no JSON object or key: value pairs found in the answer"}]


def test_word_records_are_checked_and_reach_answer_fields():
    wrd = {"id": "a", "task": "wrd", **parse_answer("wrd", WRD), "words_expected": [{"accuracy": 9.5, "stress": 9.9,
                                                                                      "total": 8.7}]}
    assert check_record(wrd, "f:1") is wrd
    with pytest.raises(PredictionsError, match="f:2: \"ok\" WRD prediction without a list of words"):
        check_record({**wrd, "words": [{"word": "WE", "accuracy": 10}]}, "f:2")
    high = check_record({**wrd, "words": [{"word": "WE", "accuracy": 10, "stress": 12, "total": 9}]}, "f:3")
    assert (high["ok"], high["words"], high["error"]) == (False, None, "score outside 0-10: ['WE.stress']")
    got = answer_fields(parse_answer("apa", APA), parse_answer("mdd", MDD), wrd)
    assert got["words"] == [{"word": "WE", "accuracy": 10, "stress": 10, "total": 9}]
    assert got["words_expected"] == wrd["words_expected"] and got["errors"] == []
    assert "words" not in answer_fields(parse_answer("apa", APA), parse_answer("mdd", MDD))  # not asked
    failed = answer_fields(None, None, parse_answer("wrd", "no"))
    assert failed["words"] is None and failed["errors"][-1]["task"] == "wrd"
