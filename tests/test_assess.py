"""Expected phones, the alignment of heard phones to words, and the shared assessment schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from pronlm.app.alignment import UNKNOWN, align_phones, word_feedback
from pronlm.app.assess import assess, assess_long, format_table
from pronlm.app.feedback import feedback
from pronlm.app.lexicon import (
    AssessError,
    Lexicon,
    expected_words,
    normalise_words,
    read_lexicon,
)
from pronlm.config import Config

SCORES = {"accuracy": 8, "fluency": 7, "prosodic": 9, "total": 8}
WORD_KEYS = {"word", "error_type", "known", "expected_phones", "heard_phones", "phones", "variant", "variants",
             "scores", "scores_expected", "phone_scores"}
ERROR_TYPES = {"None", "Mispronunciation", "Omission", "Insertion", "NotJudged"}
STATUSES = {"correct", "substituted", "deleted", "inserted"}
KEYS = {"text", "reference", "scores", "scores_expected", "scores_sd", "scores_interval", "word_transcript", "phoneme_transcript", "words", "errors",
        "unknown_words"}


def check_schema(result: dict) -> None:
    """The assessment schema shared by `assess`, the CLI and the service (`assess_long` adds `chunks`)."""
    assert set(result) == KEYS | ({"chunks"} & set(result))
    assert result["scores"] is None or set(result["scores"]) == set(SCORES)
    assert result["scores_expected"] is None or set(result["scores_expected"]) == set(SCORES)
    assert result["scores"] is not None or result["scores_expected"] is None
    assert isinstance(result["word_transcript"], str) and isinstance(result["phoneme_transcript"], str)
    assert result["reference"] in ("text", "model")
    assert result["words"] or result["reference"] == "model", "every sentence has at least one word"
    for w in result["words"]:
        assert set(w) == WORD_KEYS and w["error_type"] in ERROR_TYPES
        assert [p["heard"] for p in w["phones"] if p["heard"] is not None] == w["heard_phones"]
        assert all(p["status"] in STATUSES for p in w["phones"])
    for e in result["errors"]:
        assert e["task"] in ("apa", "mdd") and e["error"]
    assert result["errors"] or result["scores"] is not None


def ok(words: str, phones: str) -> tuple[dict, dict]:
    apa = {"id": "0", "task": "apa", "ok": True, "error": None, "scores": SCORES}
    mdd = {"id": "0", "task": "mdd", "ok": True, "error": None, "word_transcript": words, "phoneme_transcript": phones}
    return apa, mdd


def run(text: str, heard_words: str, heard_phones: str, lexicon: Lexicon | None = None) -> dict:
    result = feedback(text, *ok(heard_words, heard_phones), lexicon)
    check_schema(result)
    return result


def summary(result: dict) -> list[tuple[str, str, str]]:
    """(word, error type, heard phones) per word."""
    return [(w["word"], w["error_type"], " ".join(w["heard_phones"])) for w in result["words"]]


def test_canonical_phones_of_a_known_sentence():
    words = expected_words("We call it bear.")
    assert [w for w, _ in words] == ["WE", "CALL", "IT", "BEAR"]
    assert " ".join(p for _, phones in words for p in phones) == "W IY K AO L IH T B EH R"


def test_words_are_normalised_keeping_apostrophes_and_hyphens():
    assert normalise_words("Don’t stop, it's   WELL-known!") == ["DON'T", "STOP", "IT'S", "WELL-KNOWN"]
    assert dict(expected_words("don't"))["DON'T"] == ("D", "OW", "N", "T")  # first pronunciation


def test_hyphenated_word_is_one_word_with_its_parts_phones():
    assert expected_words("well-known") == [("WELL-KNOWN", ("W", "EH", "L", "N", "OW", "N"))]
    assert expected_words("ad-hoc") == [("AD-HOC", ("AE", "D", "HH", "AA", "K"))]  # CMUdict's own entry
    assert expected_words("well-zorblax") == [("WELL-ZORBLAX", None)]


def test_a_hyphenated_word_matches_its_parts_heard_as_two_words():
    result = run("A well-known bear", "A WELL KNOWN BEAR", "AH W EH L N OW N B EH R")
    assert summary(result) == [("A", "None", "AH"), ("WELL-KNOWN", "None", "W EH L N OW N"), ("BEAR", "None", "B EH R")]
    result = run("A well-known bear", "A WELL THE KNOWN BEAR", "AH W EH L DH AH N OW N B EH R")
    assert [(w, e) for w, e, _ in summary(result)] == [("A", "None"), ("WELL-KNOWN", "Mispronunciation"),
                                                       ("THE", "Insertion"), ("BEAR", "None")]


def test_accented_words_are_folded_not_split():
    # before: résumé -> R, SUM (two judged words); café -> CAF (unknown)
    assert expected_words("Résumé") == [("RESUME", ("R", "IH", "Z", "UW", "M"))]
    assert expected_words("un café") == [("UN", ("AH", "N")), ("CAFE", ("K", "AH", "F", "EY"))]


def test_numbers_are_spelled_out():
    # before: 42 -> one unknown word "42"
    assert [w for w, _ in expected_words("I am 42")] == ["I", "AM", "FORTY", "TWO"]
    assert all(phones for _, phones in expected_words("the 2nd of May 1990, 3.5%"))


def test_text_without_latin_letters_is_rejected():
    # before: 東京 disappeared, and with it the only word: "has no words"
    with pytest.raises(AssessError, match="no words in Latin letters"):
        expected_words("東京")
    with pytest.raises(AssessError, match=r"not in Latin letters \(東京\)"):
        expected_words("I live in 東京")


def test_lexicon_headwords_are_normalised_like_the_text(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text("Résumé R EH1 Z AH0 M EY2\n", encoding="utf-8")
    assert dict(expected_words("my résumé", Lexicon.load(path)))["RESUME"] == ("R", "EH", "Z", "AH", "M", "EY")


def test_text_without_words_is_rejected():
    with pytest.raises(AssessError, match="no words"):
        expected_words(" ?! ")


def test_lexicon_file_strips_stress_and_keeps_the_first_pronunciation(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text("ZORBLAX\tZ AO1 R B L AE0 K S\nZORBLAX Z AO1 R\nWE W AY1\n")
    lexicon = Lexicon.load(path)
    assert lexicon.phones("ZORBLAX") == ("Z", "AO", "R", "B", "L", "AE", "K", "S")
    assert lexicon.phones("WE") == ("W", "AY")  # the file overrides CMUdict
    assert lexicon.phones("CALL") == ("K", "AO", "L")  # CMUdict still answers the rest


def test_bad_lexicon_files_name_the_problem(tmp_path):
    with pytest.raises(AssessError, match="not found"):
        read_lexicon(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("GOOD G UH1 D\nLONELY\n")
    with pytest.raises(AssessError, match=r"bad.txt:2: 'LONELY' has no phones"):
        read_lexicon(bad)


def test_speechocean_lexicon_reads(corpus_dir):
    lexicon = Lexicon.load(corpus_dir / "resource" / "lexicon.txt")
    assert lexicon.phones("A") == ("AH",)  # "A AH0" comes before "A EY0"
    assert lexicon.phones("ABILITY") == ("AH", "B", "IH", "L", "AH", "T", "IY")


def test_align_phones_by_edit_distance():
    steps = [(i, p.expected, p.heard, p.status) for i, p in align_phones(["K", "AO", "L"], ["S", "K", "AA", "L", "Z"])]
    assert steps == [(-1, None, "S", "inserted"), (0, "K", "K", "correct"), (1, "AO", "AA", "substituted"),
                     (2, "L", "L", "correct"), (2, None, "Z", "inserted")]
    assert [(i, p.status) for i, p in align_phones(["A", "B"], [])] == [(0, "deleted"), (1, "deleted")]


def test_an_unknown_word_takes_the_phones_heard_in_its_place():
    # plain edit distance would rather match CALL's AO and L inside the unknown word's phones
    expected = ["K", "AO", "L", UNKNOWN, "B"]
    steps = [(i, p.heard, p.status) for i, p in align_phones(expected, "K AA L Z AO R B L B".split())]
    assert steps == [(0, "K", "correct"), (1, "AA", "substituted"), (2, "L", "correct"),
                     *[(3, h, "inserted") for h in "Z AO R B L".split()], (4, "B", "correct")]


def test_all_correct():
    result = run("We call it bear", "WE CALL IT BEAR", "W IY K AO L IH T B EH R")
    assert summary(result) == [("WE", "None", "W IY"), ("CALL", "None", "K AO L"), ("IT", "None", "IH T"),
                               ("BEAR", "None", "B EH R")]
    assert result["scores"] == SCORES and result["errors"] == [] and result["unknown_words"] == []


def test_substituted_phone_is_a_mispronunciation():
    result = run("We call it bear", "WE CALL IT BEAR", "W IY K AA L IH T B EH R")
    call = result["words"][1]
    assert call["error_type"] == "Mispronunciation"
    assert call["phones"][1] == {"expected": "AO", "heard": "AA", "status": "substituted"}
    assert [w["error_type"] for w in result["words"]] == ["None", "Mispronunciation", "None", "None"]


def test_deleted_phone_is_a_mispronunciation():
    result = run("We call it bear", "WE CALL IT BEAR", "W IY K AO L IH B EH R")
    it = result["words"][2]
    assert it["error_type"] == "Mispronunciation" and it["heard_phones"] == ["IH"]
    assert it["phones"][1] == {"expected": "T", "heard": None, "status": "deleted"}


def test_inserted_phone_goes_to_the_word_before():
    result = run("We call it bear", "WE CALL IT BEAR", "W IY K AO L IH T AH B EH R")
    assert summary(result)[2] == ("IT", "Mispronunciation", "IH T AH")
    assert result["words"][3]["error_type"] == "None"


def test_missing_word_is_an_omission():
    result = run("We call it bear", "WE CALL BEAR", "W IY K AO L B EH R")
    assert summary(result) == [("WE", "None", "W IY"), ("CALL", "None", "K AO L"), ("IT", "Omission", ""),
                               ("BEAR", "None", "B EH R")]
    assert [p["status"] for p in result["words"][2]["phones"]] == ["deleted", "deleted"]


def test_extra_word_is_an_insertion_with_its_phones():
    result = run("We call it bear", "WE CALL THAT IT BEAR", "W IY K AO L DH AE T IH T B EH R")
    assert summary(result) == [("WE", "None", "W IY"), ("CALL", "None", "K AO L"), ("THAT", "Insertion", "DH AE T"),
                               ("IT", "None", "IH T"), ("BEAR", "None", "B EH R")]
    that = result["words"][2]
    assert that["expected_phones"] == [] and {p["status"] for p in that["phones"]} == {"inserted"}


def test_unknown_word_is_flagged_and_gets_the_phones_heard_in_its_place():
    result = run("We call zorblax bear", "WE CALL ZORBLAX BEAR", "W IY K AO L Z AO R B L AE K S B EH R")
    assert result["unknown_words"] == ["ZORBLAX"]
    zorblax = result["words"][2]
    assert zorblax["known"] is False and zorblax["expected_phones"] == []
    assert zorblax["heard_phones"] == "Z AO R B L AE K S".split()
    assert [w["error_type"] for w in result["words"]] == ["None"] * 4  # neighbours unaffected


def test_inserted_word_beside_an_unknown_word_keeps_its_own_phones():
    result = run("We call zorblax bear", "WE CALL THAT ZORBLAX BEAR", "W IY K AA L DH AE T Z AO R B L AE K S B EH R")
    assert summary(result) == [("WE", "None", "W IY"), ("CALL", "Mispronunciation", "K AA L"),
                               ("THAT", "Insertion", "DH AE T"), ("ZORBLAX", "None", "Z AO R B L AE K S"),
                               ("BEAR", "None", "B EH R")]


def test_unknown_word_found_in_a_lexicon_file(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text("ZORBLAX Z AO1 R B L AE0 K S\n")
    result = run("We call zorblax bear", "WE CALL ZORBLAX BEAR", "W IY K AO L Z AO R B L AA K S B EH R",
                 Lexicon.load(path))
    assert result["unknown_words"] == []
    zorblax = result["words"][2]
    assert zorblax["known"] is True and zorblax["error_type"] == "Mispronunciation"
    assert zorblax["phones"][5] == {"expected": "AE", "heard": "AA", "status": "substituted"}


def test_alignment_is_deterministic():
    words = expected_words("we call it bear")
    heard = "W K AA L AH T B EH".split()
    first = word_feedback(words, heard, ["WE", "CALL"])
    assert all(word_feedback(words, heard, ["WE", "CALL"]) == first for _ in range(5))


class RecordingPredictor:
    """Test double of `pronlm.evaluation.predict.Predictor`: canned answers, remembers its calls."""

    def __init__(self, phones: str, words: str):
        self.phones, self.words, self.calls = phones, words, []

    def predict(self, items, tasks=("apa", "mdd"), batch_size=8):
        self.calls.append(([i for i, _ in items], tuple(tasks)))
        out = []
        for item_id, _ in items:
            apa, mdd = ok(self.words, self.phones)
            out += [{**apa, "id": item_id, "raw": ""}, {**mdd, "id": item_id, "raw": ""}]
        return out


def test_assess_asks_for_both_tasks_once():
    predictor = RecordingPredictor("W IY K AO L IH T B EH R", "WE CALL IT BEAR")
    result = assess(predictor, np.zeros(16000, np.float32), "We call it bear")
    check_schema(result)
    assert predictor.calls == [(["0"], ("apa", "mdd"))]
    assert result["text"] == "We call it bear" and result["scores"] == SCORES


def test_unparsed_answers_still_give_the_schema():
    apa = {"id": "0", "task": "apa", "ok": False, "error": "empty answer", "scores": None}
    mdd = {"id": "0", "task": "mdd", "ok": False, "error": "no JSON object", "word_transcript": "",
           "phoneme_transcript": ""}
    result = feedback("We call it bear", apa, mdd)
    check_schema(result)
    assert result["scores"] is None
    assert result["errors"] == [{"task": "apa", "error": "empty answer"}, {"task": "mdd", "error": "no JSON object"}]
    assert {w["error_type"] for w in result["words"]} == {"NotJudged"}
    assert feedback("We call it bear", None, None)["errors"][0]["error"] == "no APA prediction was returned"


def test_a_failed_mdd_answer_judges_no_word_and_keeps_the_scores():
    # before: every word an Omission with its phones struck through (deleted)
    apa, _ = ok("", "")
    mdd = {"id": "0", "task": "mdd", "ok": False, "error": "no JSON object", "word_transcript": "",
           "phoneme_transcript": ""}
    result = feedback("We call zorblax", apa, mdd)
    check_schema(result)
    assert result["scores"] == SCORES and result["errors"] == [{"task": "mdd", "error": "no JSON object"}]
    assert [(w["word"], w["error_type"], w["known"], w["expected_phones"], w["phones"]) for w in result["words"]] == [
        ("WE", "NotJudged", True, ["W", "IY"], []), ("CALL", "NotJudged", True, ["K", "AO", "L"], []),
        ("ZORBLAX", "NotJudged", False, [], [])]
    table = format_table(result)
    assert "Omission" not in table and "-W" not in table
    assert "no word is judged: the phones heard could not be read (below); the scores stand" in table
    assert "no JSON object" in table


def test_the_table_never_says_the_scores_stand_when_there_are_none():
    # before: "scores:   unavailable" and then "...could not be read (below); the scores stand"
    apa = {"id": "0", "task": "apa", "ok": False, "error": "empty answer", "scores": None}
    mdd = {"id": "0", "task": "mdd", "ok": False, "error": "no JSON object", "word_transcript": "",
           "phoneme_transcript": ""}
    lines = format_table(feedback("We call it bear", apa, mdd)).splitlines()
    assert lines[0] == "scores:   unavailable"
    assert "no word is judged: the phones heard could not be read (below); no scores either" in lines
    assert not any("scores stand" in line for line in lines)


def test_an_unknown_word_is_said_to_be_judged_only_as_said_or_omitted():
    # before: a row "ZORBLAX  Omission (unknown)" above the line "not in the lexicon (not judged): ZORBLAX"
    apa, mdd = ok("WE CALL", "W IY K AO L")
    table = format_table(feedback("We call zorblax", apa, mdd))
    assert "ZORBLAX  Omission (unknown)" in table
    assert table.splitlines()[-1] == ("not in the lexicon (said or omitted, its phones not compared; --lexicon FILE "
                                      "adds them): ZORBLAX")
    assert "not judged" not in table


def test_format_table_marks_errors_and_colours_only_when_asked():
    result = run("We call it bear", "WE CALL BEAR", "W IY K AA L B EH R")
    plain = format_table(result, colour=False)
    assert "K AO>AA L" in plain and "-IH -T" in plain and "Omission" in plain and "\033[" not in plain
    assert "\033[31m" in format_table(result, colour=True)
    json.dumps(result)  # the schema is plain JSON


def test_assess_command_prints_json_with_the_tiny_model(corpus_dir, capsys):
    from pronlm.app.assess import assess_command

    wav = corpus_dir / "WAVE" / "SPEAKER0001" / "000010011.WAV"
    assert assess_command(Config(base="tiny", max_new_tokens=32), str(wav), "We call it bear", fmt="json") == 0
    result = json.loads(capsys.readouterr().out)
    check_schema(result)
    assert [w["word"] for w in result["words"] if w["error_type"] != "Insertion"] == ["WE", "CALL", "IT", "BEAR"]


def test_assess_command_reports_a_missing_file(tmp_path, capsys):
    from pronlm.cli import main

    assert main(["assess", "--audio", str(tmp_path / "none.wav"), "--text", "hello"]) == 2
    assert "audio file not found" in capsys.readouterr().err


def test_assess_command_rejects_text_without_latin_letters(corpus_dir, capsys):
    from pronlm.cli import main

    wav = corpus_dir / "WAVE" / "SPEAKER0001" / "000010011.WAV"
    assert main(["assess", "--audio", str(wav), "--text", "東京"]) == 2
    assert "has no words in Latin letters" in capsys.readouterr().err


def test_assess_command_reports_a_truncated_wav(corpus_dir, tmp_path, capsys):
    from pronlm.cli import main
    from tests.test_data import cut_wav

    wav = tmp_path / "cut.wav"
    wav.write_bytes((corpus_dir / "WAVE" / "SPEAKER0001" / "000010011.WAV").read_bytes())
    cut_wav(wav)
    assert main(["assess", "--audio", str(wav), "--text", "We call it bear"]) == 2  # before: assessed half a clip
    assert "is truncated: its header promises 2.58 s of samples" in capsys.readouterr().err


def write_reading(train_utterances, path, n: int = 15) -> tuple[str, list[int]]:
    """The first `n` train clips as one WAV (47 s for 15): its text and clip ends."""
    from tests.test_data import long_reading

    samples, texts, ends = long_reading(train_utterances, n)
    sf.write(path, samples, 16000)
    return " ".join(texts), ends


def test_assess_command_refuses_a_clip_over_the_limit_in_one_line(train_utterances, tmp_path, capsys):
    from pronlm.cli import main

    text, _ = write_reading(train_utterances, tmp_path / "long.wav")
    # before: no limit, and the encoder crashed inside transformers ("view size is not compatible")
    assert main(["assess", "--audio", str(tmp_path / "long.wav"), "--text", text]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "long.wav lasts 47.0 s, over the limit of 30 s: pass --split-long" in err


def test_assess_command_refuses_a_limit_above_the_encoders(corpus_dir, capsys):
    from pronlm.cli import main

    wav = corpus_dir / "WAVE" / "SPEAKER0001" / "000010011.WAV"
    assert main(["assess", "--audio", str(wav), "--text", "We call it bear", "--max-audio-seconds", "120"]) == 2
    assert "max_audio_seconds is 120 s, but the model's audio encoder takes at most 40 s" in capsys.readouterr().err


class PiecePredictor:
    """Test double of `Predictor` for `assess_long`: piece k gets `answers[k]`, (scores, words said);
    the heard phones are the words' dictionary phones; words None: an unreadable MDD answer."""

    max_audio_seconds = 30.0

    def __init__(self, answers):
        self.answers, self.pieces = answers, []

    def predict(self, items, tasks=("apa", "mdd"), batch_size=8):
        out = []
        for item_id, samples in items:
            self.pieces.append(len(samples))
            scores, words = self.answers[int(item_id)]
            out.append({"id": item_id, "task": "apa", "ok": True, "error": None, "scores": scores, "raw": ""})
            phones = " ".join(p for _, ph in expected_words(words) for p in ph) if words else ""
            out.append({"id": item_id, "task": "mdd", "ok": words is not None, "raw": "",
                        "error": None if words else "no JSON object", "word_transcript": words or "",
                        "phoneme_transcript": phones})
        return out


@pytest.mark.slow
def test_assess_long_scores_each_piece_and_judges_the_whole_text(train_utterances):
    from tests.test_data import long_reading

    samples, texts, _ = long_reading(train_utterances)
    answers = [({"accuracy": k % 10, "fluency": 8, "prosodic": 6, "total": 5}, t) for k, t in enumerate(texts)]
    predictor = PiecePredictor(answers)
    result = assess_long(predictor, samples, " ".join(texts))
    check_schema(result)
    chunks = result["chunks"]
    assert [c["word_transcript"] for c in chunks] == texts and result["errors"] == []
    assert max(predictor.pieces) <= 30 * 16000 and all(c["end"] - c["start"] <= 30 for c in chunks)
    assert [(w["word"], w["error_type"]) for w in result["words"]] == [(w, "None") for w in " ".join(texts).split()]
    assert result["word_transcript"] == " ".join(texts)
    durations = [c["end"] - c["start"] for c in chunks]
    mean = sum(c["scores"]["accuracy"] * d for c, d in zip(chunks, durations)) / sum(durations)
    assert result["scores"] == {"accuracy": round(mean, 1), "fluency": 8.0, "prosodic": 6.0, "total": 5.0}
    assert "piece 15" in format_table(result)


def test_assess_long_judges_no_word_when_a_piece_was_not_understood(train_utterances):
    from tests.test_data import long_reading

    samples, texts, _ = long_reading(train_utterances, 4)
    answers = [(SCORES, t) for t in texts]
    answers[2] = (SCORES, None)
    result = assess_long(PiecePredictor(answers), samples, " ".join(texts))
    check_schema(result)
    assert {w["error_type"] for w in result["words"]} == {"NotJudged"} and result["scores"] == SCORES
    (error,) = result["errors"]
    assert error["task"] == "mdd" and error["error"].startswith("piece 3 (") and error["error"].endswith("no JSON object")


@pytest.mark.slow
def test_assess_command_split_long_with_the_tiny_model(train_utterances, tmp_path, capsys):
    from pronlm.app.assess import assess_command

    text, _ = write_reading(train_utterances, tmp_path / "long.wav")
    assert assess_command(Config(base="tiny", max_new_tokens=8), str(tmp_path / "long.wav"), text, fmt="json",
                          split_long=True) == 0
    result = json.loads(capsys.readouterr().out)
    check_schema(result)
    assert len(result["chunks"]) == 15 and all(c["end"] - c["start"] <= 30 for c in result["chunks"])
    assert [w["word"] for w in result["words"] if w["error_type"] != "Insertion"] == normalise_words(text)


def test_expected_scores_are_shown_with_one_decimal_beside_the_integers():
    apa, mdd = ok("WE CALL IT BEAR", "W IY K AO L IH T B EH R")
    apa["scores_expected"] = {"accuracy": 7.76, "fluency": 7.04, "prosodic": 8.96, "total": 8.0}
    result = feedback("We call it bear", apa, mdd)
    check_schema(result)
    assert result["scores"] == SCORES and result["scores_expected"] == apa["scores_expected"]
    assert format_table(result).splitlines()[0] == \
        "scores:   accuracy 7.8 (8)  fluency 7.0 (7)  prosodic 9.0 (9)  total 8.0 (8)"
    assert run("We call it bear", "WE CALL IT BEAR", "W IY K AO L IH T B EH R")["scores_expected"] is None
    assert format_table(run("We call it bear", "WE CALL IT BEAR", "W IY K AO L IH T B EH R")).startswith(
        "scores:   accuracy 8  fluency 7  prosodic 9  total 8\n")


class ExpectedPiecePredictor(PiecePredictor):
    """Piece k's expected scores: its integers minus 0.25 x (k + 1)."""

    def predict(self, items, tasks=("apa", "mdd"), batch_size=8):
        out = super().predict(items, tasks, batch_size)
        for r in out:
            if r["task"] == "apa":
                r["scores_expected"] = {a: v - 0.25 * (int(r["id"]) + 1) for a, v in r["scores"].items()}
        return out


def test_assess_long_averages_the_expected_scores_by_duration(train_utterances):
    from tests.test_data import long_reading

    samples, texts, _ = long_reading(train_utterances, 3)
    result = assess_long(ExpectedPiecePredictor([(SCORES, t) for t in texts]), samples, " ".join(texts))
    check_schema(result)
    durations = [c["end"] - c["start"] for c in result["chunks"]]
    shift = sum(0.25 * (k + 1) * d for k, d in enumerate(durations)) / sum(durations)
    assert result["scores_expected"] == {a: round(v - shift, 1) for a, v in SCORES.items()}
    assert [c["scores_expected"]["total"] for c in result["chunks"]] == [7.75, 7.5, 7.25]


def test_read_said_either_way_is_right_and_names_the_variant():
    for heard, variant in (("R IY D", 1), ("R EH D", 0)):
        result = run("I read it", "I READ IT", f"AY {heard} IH T")
        read = result["words"][1]
        assert (read["error_type"], read["expected_phones"], read["variant"]) == ("None", heard.split(), variant)
        assert read["variants"] == [["R", "EH", "D"], ["R", "IY", "D"]]
        assert [p["status"] for p in read["phones"]] == ["correct"] * 3  # not "EH mispronounced"


def test_the_before_a_vowel_is_judged_against_dh_iy():
    result = run("The apple", "THE APPLE", "DH IY AE P AH L")
    assert [(w["word"], w["error_type"], w["variant"]) for w in result["words"]] == [("THE", "None", 1),
                                                                                      ("APPLE", "None", 0)]
    wrong = run("The apple", "THE APPLE", "Z IY AE P AH L")["words"][0]  # closest variant, then its error
    assert (wrong["error_type"], wrong["expected_phones"]) == ("Mispronunciation", ["DH", "IY"])
    assert [(p["expected"], p["heard"], p["status"]) for p in wrong["phones"]] == [("DH", "Z", "substituted"),
                                                                                   ("IY", "IY", "correct")]


def test_a_wrong_phone_is_judged_against_the_main_pronunciation_on_a_tie():
    read = run("I read it", "I READ IT", "AY R AY D IH T")["words"][1]  # R AY D: one away from both
    assert (read["error_type"], read["variant"], read["expected_phones"]) == ("Mispronunciation", 0, ["R", "EH", "D"])


def test_a_user_lexicon_lists_several_pronunciations(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text("TOMATO T AH0 M EY1 T OW2\nTOMATO T AH0 M AA1 T OW2\nTOMATO T AH0 M EY1 T OW0\n")
    lexicon = Lexicon.load(path)
    assert lexicon.variants("TOMATO") == [("T", "AH", "M", "EY", "T", "OW"), ("T", "AH", "M", "AA", "T", "OW")]
    for heard, variant in (("T AH M AA T OW", 1), ("T AH M EY T OW", 0)):
        word = run("Tomato", "TOMATO", heard, lexicon)["words"][0]
        assert (word["error_type"], word["variant"]) == ("None", variant)


def test_free_speech_is_judged_against_the_models_own_words():
    apa, mdd = ok("WE CALL <unk> IT", "W IY K AO L IH")  # IT's T not heard
    result = feedback(None, apa, mdd)
    check_schema(result)
    assert (result["text"], result["reference"]) == ("WE CALL IT", "model")
    assert summary(result) == [("WE", "None", "W IY"), ("CALL", "None", "K AO L"),
                               ("IT", "Mispronunciation", "IH")]
    assert result["scores"] == SCORES  # the scores stand
    gone = feedback(None, *ok("WE CALL", "W IY"))  # CALL recognised but none of its phones heard: not "omitted"
    assert [(w["word"], w["error_type"]) for w in gone["words"]] == [("WE", "None"), ("CALL", "NotJudged")]
    nothing = feedback(None, *ok("", ""))
    check_schema(nothing)
    assert (nothing["text"], nothing["words"]) == ("", [])
    assert "no text given" in format_table(nothing)


def test_word_task_scores_join_their_words_in_order():
    apa, mdd = ok("WE CALL IT BEAR", "W IY K AO L IH T B EH R")
    wrd = {"ok": True, "words": [{"word": "WE", "accuracy": 9, "stress": 10, "total": 9},
                                 {"word": "CALL", "accuracy": 6, "stress": 10, "total": 7},
                                 {"word": "BEAR", "accuracy": 3, "stress": 5, "total": 4}],  # IT left out
           "words_expected": [{"accuracy": 8.8, "stress": 10.0, "total": 9.1}, None, None]}
    words = feedback("We call it bear", apa, mdd, wrd=wrd)["words"]
    assert [w["scores"] for w in words] == [{"accuracy": 9, "stress": 10, "total": 9},
                                            {"accuracy": 6, "stress": 10, "total": 7}, None,
                                            {"accuracy": 3, "stress": 5, "total": 4}]
    assert words[0]["scores_expected"] == {"accuracy": 8.8, "stress": 10.0, "total": 9.1}
    assert all(w["scores"] is None for w in feedback("We call it bear", apa, mdd, wrd={"ok": False})["words"])


def test_the_table_shows_the_spread_the_phone_scores_and_the_variant():
    from pronlm.app.feedback import score_words_phones, judged_words

    apa, mdd = ok("I READ IT", "AY R IY D IH T")
    apa |= {"scores_expected": {"accuracy": 7.76, "fluency": 7.04, "prosodic": 8.96, "total": 8.0},
            "scores_sd": {"accuracy": 0.87, "fluency": 0.2, "prosodic": 0.31, "total": 0.0},
            "scores_interval": {"accuracy": [7, 9], "fluency": [7, 7], "prosodic": [9, 9], "total": [8, 8]}}
    result = feedback("I read it", apa, mdd)
    text, phones, _ = judged_words(result)
    assert (text, phones) == ("I READ IT", [["AY"], ["R", "IY", "D"], ["IH", "T"]])  # READ's variant as heard
    score_words_phones(result, [{"phone": p, "score": s, "likely": p} for p, s in
                              zip(["AY", "R", "IY", "D", "IH", "T"], [2.0, 1.9, 0.5, 1.21, 1.0, 1.6])])
    check_schema(result)
    assert [p["accuracy"] for p in result["words"][1]["phone_scores"]] == [95, 25, 60]
    lines = format_table(result).splitlines()
    assert lines[0] == ("scores:   accuracy 7.8 ± 0.9 [7-9]  fluency 7.0 ± 0.2 [7-7]  prosodic 9.0 ± 0.3 [9-9]  "
                        "total 8.0 ± 0.0 [8-8]")
    assert lines[4].split() == ["phones", "AY", "100"]  # under the word I
    assert lines[6].split() == ["phones", "R", "95", "IY", "25", "D", "60", "(pronunciation", "2", "of", "2)"]
    assert "\033[31mIY 25\033[0m" in format_table(result, colour=True)  # red below 50, green from 80
    assert "\033[32mR 95\033[0m" in format_table(result, colour=True)


def test_assess_command_scores_every_phone_and_assesses_free_speech(corpus_dir, capsys):
    from pronlm.app.assess import assess_command
    from pronlm.app.feedback import model_text

    wav = corpus_dir / "WAVE" / "SPEAKER0001" / "000010011.WAV"
    assert assess_command(Config(base="tiny", max_new_tokens=32), str(wav), "We call it bear", fmt="json") == 0
    result = json.loads(capsys.readouterr().out)
    check_schema(result)
    for w in result["words"]:  # every known word of the text: one score per phone it was judged against
        if w["known"] and w["error_type"] != "Insertion":
            assert [p["phone"] for p in w["phone_scores"]] == w["expected_phones"]
            assert all(p["accuracy"] == round(50 * p["score"]) and 0 <= p["score"] <= 2 for p in w["phone_scores"])
    assert assess_command(Config(base="tiny", max_new_tokens=32), str(wav), None, fmt="json") == 0
    free = json.loads(capsys.readouterr().out)
    check_schema(free)
    assert free["reference"] == "model" and free["text"] == model_text(free["word_transcript"])
    assert "Omission" not in {w["error_type"] for w in free["words"]}
    assert assess_command(Config(base="tiny", max_new_tokens=32), str(wav), None) == 0
    assert "no text given: judged against the model's own transcript" in capsys.readouterr().out


def readme_example() -> dict:
    """The assessment the README shows field by field: READ said R IY D (its second pronunciation), IT's T
    heard as D, a word-task answer and a score for every phone (set by hand: the format, not a model's numbers)."""
    from pronlm.app.feedback import score_words_phones

    apa, mdd = ok("READ IT", "R IY D IH D")
    apa |= {"scores": {"accuracy": 7, "fluency": 8, "prosodic": 8, "total": 7},
            "scores_expected": {"accuracy": 6.8, "fluency": 8.1, "prosodic": 7.9, "total": 7.2},
            "scores_sd": {"accuracy": 0.9, "fluency": 0.4, "prosodic": 0.5, "total": 0.6},
            "scores_interval": {"accuracy": [6, 8], "fluency": [8, 9], "prosodic": [7, 8], "total": [6, 8]}}
    wrd = {"ok": True, "words": [{"word": "READ", "accuracy": 9, "stress": 10, "total": 9},
                                 {"word": "IT", "accuracy": 5, "stress": 10, "total": 6}]}
    result = feedback("Read it", apa, mdd, wrd=wrd)
    score_words_phones(result, [{"phone": p, "score": s, "likely": likely} for p, s, likely in
                              [("R", 1.96, "R"), ("IY", 1.9, "IY"), ("D", 1.98, "D"), ("IH", 1.72, "IH"),
                               ("T", 0.24, "D")]])
    return result


def compact_json(result: dict) -> str:
    """JSON with one line per field, and per field of each word (values written compactly)."""
    def fields(obj: dict, pad: str) -> list[str]:
        out = []
        for key, value in obj.items():
            if key == "words":
                words = [pad + "  {\n" + ",\n".join(fields(w, pad + "   ")) + "\n" + pad + "  }" for w in value]
                out.append(f'{pad} "words": [\n' + ",\n".join(words) + f"\n{pad} ]")
            else:
                out.append(f"{pad} {json.dumps(key)}: {json.dumps(value)}")
        return out
    return "{\n" + ",\n".join(fields(result, "")) + "\n}\n"


def test_the_readme_shows_what_assess_returns():
    """The README's JSON example is this test's assessment, field by field (`compact_json`)."""
    from tests.readme import check_readme_block

    result = readme_example()
    check_schema(result)
    check_readme_block("assess-json", compact_json(result))


def test_assess_refuses_a_text_far_longer_than_the_clip_before_the_model_loads(corpus_dir, tmp_path, monkeypatch):
    """Before: a 500-word text for a 1-second clip was scored. The rule is POST /assess's (`check_text_fits`)."""
    import pronlm.evaluation.predict as infer
    from pronlm.app.assess import assess_command
    from pronlm.app.lexicon import check_text_fits

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(infer, "load_predictor", never)
    wav = tmp_path / "one.wav"
    sf.write(wav, np.zeros(16000, dtype=np.float32) + 0.01, 16000)
    with pytest.raises(AssessError, match=r"^the text has 500 words, more than a 1\.0 s recording can hold "
                                          r"\(at most 8: 6 a second, plus 2\)"):
        assess_command(Config(base="tiny"), str(wav), "bear " * 500)
    check_text_fits(8, 1.0)  # the bound itself is taken
    check_text_fits(182, 30.0)
    with pytest.raises(AssessError):
        check_text_fits(183, 30.0)


def test_a_three_task_model_scores_every_word_of_the_text(tiny_model, tiny_tokenizer, corpus_dir):
    """A predictor with the word task asks it with the text's words; each word of the result carries
    its accuracy/stress/total and expected scores from that answer (the untrained tiny model: any values)."""
    from pronlm.data.audio import load_audio
    from pronlm.data.prompts import PromptSet
    from pronlm.evaluation.predict import Predictor

    predictor = Predictor(tiny_model, tiny_tokenizer, PromptSet.from_templates(), max_new_tokens=8,
                          max_audio_seconds=None, tasks=("apa", "mdd", "wrd"))
    asked = []
    real = predictor.predict_examples
    predictor.predict_examples = lambda examples, audio, batch_size=8: asked.extend(examples) or real(
        examples, audio, batch_size)
    result = assess(predictor, load_audio(corpus_dir / "WAVE/SPEAKER0001/000010011.WAV"), "We call it bear!")
    (wrd,) = [ex for ex in asked if ex.task == "wrd"]
    assert wrd.text == "WE CALL IT BEAR" and "WE CALL IT BEAR" in wrd.prompt
    words = [w for w in result["words"] if w["error_type"] != "Insertion"]
    assert [w["word"] for w in words] == ["WE", "CALL", "IT", "BEAR"]
    for w in words:
        assert set(w["scores"]) == {"accuracy", "stress", "total"} and all(0 <= v <= 10 for v in w["scores"].values())
        assert set(w["scores_expected"]) == {"accuracy", "stress", "total"}
