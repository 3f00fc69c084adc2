"""Heard phones and APA / MDD targets, against phones written out by hand from scores.json."""

from __future__ import annotations

import json

import pytest

from pronlm.data.corpus import read_corpus
from pronlm.data.records import ApaScores, LabelError, Mispronunciation, Utterance, Word
from pronlm.data.targets import (
    wrd_target,
    AccentPolicy,
    apa_target,
    canonical_phones,
    heard_phone,
    heard_phones,
    mdd_target,
    strip_stress,
)

POLICIES = list(AccentPolicy)


@pytest.fixture(scope="module")
def utts(corpus_dir):
    return {u.id: u for split in ("train", "test") for u in read_corpus(str(corpus_dir), split)}


def phones(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("policy", POLICIES)
def test_theme_substitution(utts, policy):
    # THEN HE WENT TO THEME PARK; THEME IY -> AH
    assert heard_phones(utts["000010113"], policy) == phones("DH EH N HH IY W EH N T T UW TH AH M P AA R K")
    assert canonical_phones(utts["000010113"]) == phones("DH EH N HH IY W EH N T T UW TH IY M P AA R K")


@pytest.mark.parametrize("policy", POLICIES)
def test_road_substitution(utts, policy):
    # END OF THE ROAD FOR SOME PLAYERS; ROAD R -> L
    assert heard_phones(utts["003060259"], policy) == phones("EH N D AH V DH AH L OW D F AO R S AH M P L EH ER Z")


@pytest.mark.parametrize("policy", POLICIES)
def test_fall_and_personality(utts, policy):
    # THEY FALL IN LOVE WITH MY PERSONALITY NOT ME; FALL AO -> EH, PERSONALITY AE -> AH
    assert heard_phones(utts["003060263"], policy) == phones(
        "DH EY F EH L IH N L AH V W IH DH M AY P ER S AH N AH L AH T IY N AH T M IY")


@pytest.mark.parametrize("policy, whale", [("unk", "OW <unk>"), ("canonical", "OW L"), ("literal", "OW L*")])
def test_whale_deletion_and_accented_phone(utts, policy, whale):
    # STEEVEN IS GOING TO SEE WHALE; WHALE: W deleted, EY -> OW, L -> L* (accented)
    expected = phones("S T IY V AH N IH Z G OW IH NG T UW S IY " + whale)
    assert heard_phones(utts["014350017"], AccentPolicy(policy)) == expected


def test_zero_stress_quirk(utts):
    # ZERO is `Z IH AH1 OW0` in the corpus: IH carries no digit and must come through unchanged
    assert heard_phones(utts["000050040"]) == phones("F AY V TH R IY N AY N Z IH AH OW")
    assert [strip_stress(p) for p in ("IH", "AH1", "OW0", "<unk>", "L*")] == ["IH", "AH", "OW", "<unk>", "L*"]


def word_with(pronounced: str) -> Utterance:
    cat = Word("CAT", ("K", "AE1", "T"), mispronunciations=(Mispronunciation(1, "AE", pronounced),))
    return Utterance("u1", "0042", "CAT", None, ApaScores(5, 6, 7, 5), (cat,))


@pytest.mark.parametrize("policy", POLICIES)
def test_unk_record(policy):
    assert heard_phones(word_with("<unk>"), policy) == ["K", "<unk>", "T"]
    assert heard_phones(word_with("<UNK>"), policy) == ["K", "<unk>", "T"]


def test_heard_phone_forms():
    assert heard_phone("AH0") == "AH"
    assert heard_phone("<DEL>") is None
    assert heard_phone("EH*", AccentPolicy.UNK) == "<unk>"
    assert heard_phone("EH*", AccentPolicy.CANONICAL) == "EH"
    assert heard_phone("EH*", AccentPolicy.LITERAL) == "EH*"


def test_index_out_of_range_in_record():
    word = Word("CAT", ("K", "AE1", "T"), mispronunciations=(Mispronunciation(7, "AE", "AH"),))
    with pytest.raises(LabelError, match="utterance u9: word 'CAT': mispronunciation index 7 out of range"):
        heard_phones(Utterance("u9", "", "CAT", None, ApaScores(5, 5, 5, 5), (word,)))


def test_word_boundaries(utts):
    assert heard_phones(utts["000010113"], word_boundaries=True) == phones(
        "DH EH N | HH IY | W EH N T | T UW | TH AH M | P AA R K")
    assert heard_phones(utts["014350017"], word_boundaries=True)[-5:] == phones("S IY | OW <unk>")
    target = json.loads(mdd_target(utts["000010113"], word_boundaries=True))
    assert target["phoneme_transcript"] == "DH EH N | HH IY | W EH N T | T UW | TH AH M | P AA R K"


def test_apa_target(utts):
    text = apa_target(utts["000010113"].scores)
    assert text == '{"accuracy": 6, "fluency": 9, "prosodic": 8, "total": 5}'
    assert json.loads(text) == {"accuracy": 6, "fluency": 9, "prosodic": 8, "total": 5}
    assert "completeness" not in text
    assert apa_target(ApaScores(7, 8, 9, 8, completeness=10.0)) == \
        '{"accuracy": 7, "fluency": 8, "prosodic": 9, "total": 8}'


def test_mdd_target(utts):
    text = mdd_target(utts["014350017"])
    assert text == ('{"word_transcript": "STEEVEN IS GOING TO SEE WHALE", '
                    '"phoneme_transcript": "S T IY V AH N IH Z G OW IH NG T UW S IY OW <unk>"}')
    assert "'" not in text
    assert json.loads(mdd_target(utts["014350017"], AccentPolicy.LITERAL))["phoneme_transcript"].endswith("OW L*")


def test_word_targets_of_the_real_subset_equal_the_annotation(corpus_dir):
    """All 46 labelled clips: the word task's JSON lists every annotated word of scores.json, in order,
    with its accuracy, stress and total, read here straight from the file."""
    raw = json.loads((corpus_dir / "resource" / "scores.json").read_text())
    n = 0
    for split in ("train", "test"):
        for utt in read_corpus(str(corpus_dir), split):
            want = [{"word": w["text"], "accuracy": w["accuracy"], "stress": w["stress"], "total": w["total"]}
                    for w in raw[utt.id]["words"]]
            target = wrd_target(utt)
            assert json.loads(target) == {"words": want}, utt.id
            assert target == json.dumps({"words": want})  # json.dumps' separators, as the other targets
            n += 1
    assert n == 46


def test_a_word_without_its_scores_has_no_word_target():
    utt = Utterance("u1", "s", "HI", None, ApaScores(8, 8, 8, 8), (Word("HI", ("HH", "AY1"), accuracy=9, total=9),))
    with pytest.raises(LabelError, match="utterance u1: word 0 'HI' lacks its stress score"):
        wrd_target(utt)
