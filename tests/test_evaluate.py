"""evaluate() on the real test subset (10 utterances) with predictions written here, checked by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from pronlm.cli import main
from pronlm.data.corpus import read_corpus
from pronlm.data.parse import parse_answer
from pronlm.data.schema import PredictionsError
from pronlm.data.targets import canonical_phones, heard_phones
from pronlm.errors import PronlmError
from pronlm.evaluation.evaluate import ReportError, evaluate, read_predictions

# heard phones per test utterance (no deletions in this split, so canonical counts are the same)
HEARD = {"000030145": 15, "000030153": 9, "000030154": 12, "000030175": 4, "003060235": 19,
         "003060245": 20, "003060259": 21, "003060263": 30, "003060285": 22, "003060291": 26}
FAILED_MDD, WRONG_PHONE, CANONICAL_MDD, NO_MDD = "000030153", "000030154", "003060263", "003060291"
FAILED_APA = "000030175"
PROSODIC = {"000030145": 3, "000030153": 8, "000030154": 5, "003060235": 6, "003060245": 2,
            "003060259": 7, "003060263": 4, "003060285": 9, "003060291": 5}


def _line(utt_id: str, task: str, raw: str, reparse: bool = False) -> str:
    """A prediction line as predict writes it, or (reparse) with only the raw text."""
    parsed = {} if reparse else parse_answer(task, raw)
    return json.dumps({"id": utt_id, "task": task, "raw": raw, **parsed})


def _mdd_raw(words: str, phones: list[str]) -> str:
    return json.dumps({"word_transcript": words, "phoneme_transcript": " ".join(phones)}) + "<|end|>"


def write_predictions(corpus_dir, path) -> list:
    utts = list(read_corpus(str(corpus_dir), "test"))
    lines = []
    for u in utts:
        s = u.scores
        if u.id == FAILED_APA:
            lines.append(_line(u.id, "apa", "I think the speaker is good", reparse=True))
        else:
            scores = {"accuracy": s.accuracy, "fluency": 7, "prosodic": PROSODIC[u.id], "total": 10 - s.total}
            lines.append(_line(u.id, "apa", "```json\n" + json.dumps(scores) + "\n```<|end|>"))
        if u.id == FAILED_MDD:
            lines.append(_line(u.id, "mdd", '{"word_transcript": "MORE THAN', reparse=True))
        elif u.id == WRONG_PHONE:  # MY MAP WILL SHOW US: SHOW -> SO (1 word), SH -> S (1 phone)
            phones = " ".join(heard_phones(u)).replace("SH", "S").split()
            lines.append(_line(u.id, "mdd", _mdd_raw("my map will so us", phones)))
        elif u.id == CANONICAL_MDD:
            lines.append(_line(u.id, "mdd", _mdd_raw(u.text, canonical_phones(u))))
        elif u.id != NO_MDD:
            lines.append(_line(u.id, "mdd", _mdd_raw(u.text.lower() + ".", heard_phones(u))))
    lines.append(_line("999999999", "mdd", _mdd_raw("A", ["AH"])))  # not in the corpus: skipped
    path.write_text("\n".join(lines) + "\n")
    return utts


@pytest.fixture(scope="module")
def evaluated(corpus_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    utts = write_predictions(corpus_dir, tmp / "pred.jsonl")
    report = evaluate(str(tmp / "pred.jsonl"), str(corpus_dir), "test", str(tmp / "out"))
    return utts, report, tmp


def test_mdd_numbers_by_hand(evaluated):
    utts, report, _ = evaluated
    assert {u.id: len(heard_phones(u)) for u in utts} == HEARD
    mdd = report["mdd"]
    assert mdd["n"] == 9  # 003060291 has no MDD line
    # phones: ROAD R->L predicted right (CD); FALL AO->EH, PERSONALITY AE->AH missed (FA 2);
    # the failed answer (9 phones) and SH->S are false rejections (FR 10); the rest TA.
    # 152 canonical phones in the 9 utterances: TA = 152 - 1 - 2 - 10 = 139
    assert mdd["counts"] == {"TA": 139, "FR": 10, "FA": 2, "TR": 1, "CD": 1, "DE": 0}
    assert mdd["precision"] == pytest.approx(1 / 11)
    assert mdd["recall"] == pytest.approx(1 / 3)
    assert mdd["f1"] == pytest.approx(1 / 7)  # 2 (1/11)(1/3) / (1/11 + 1/3) = (2/33) / (14/33)
    assert mdd["far"] == pytest.approx(2 / 3)
    assert mdd["frr"] == pytest.approx(10 / 149)
    assert mdd["der"] == 0.0
    # PER: 9 deletions (failed) + 1 substitution + 2 substitutions (canonical) over 152 heard phones
    assert mdd["per"] == pytest.approx(12 / 152)
    # WER: 3 deletions (failed: MORE THAN THAT) + 1 substitution (SO) over 5+3+5+1+5+8+7+9+8 = 51 words;
    # lower case and the trailing full stop of the other answers are not errors
    assert mdd["wer"] == pytest.approx(4 / 51)
    lo, hi = mdd["per_ci95"]
    assert 0 <= lo <= 12 / 152 <= hi
    assert mdd["f1_ci95"][0] <= mdd["f1_ci95"][1]


def test_apa_numbers_independently(evaluated):
    utts, report, _ = evaluated
    apa = report["apa"]
    scored = [u for u in utts if u.id != FAILED_APA]
    assert all(apa[a]["n"] == 9 for a in apa)
    assert apa["accuracy"]["pcc"] == pytest.approx(1.0) and apa["accuracy"]["mse"] == 0.0
    assert apa["accuracy"]["ci95"] == pytest.approx([1.0, 1.0])
    assert apa["fluency"]["pcc"] is None and apa["fluency"]["ci95"] == [None, None]  # constant 7: undefined
    assert apa["total"]["pcc"] == pytest.approx(-1.0)  # predicted 10 - human
    human = np.array([u.scores.prosodic for u in scored], float)
    pred = np.array([PROSODIC[u.id] for u in scored], float)
    r = np.corrcoef(pred, human)[0, 1]
    t = r * math.sqrt(len(pred) - 2) / math.sqrt(1 - r * r)
    assert apa["prosodic"]["pcc"] == pytest.approx(r)
    assert apa["prosodic"]["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), len(pred) - 2))
    assert apa["prosodic"]["mse"] == pytest.approx(np.mean((pred - human) ** 2))
    lo, hi = apa["prosodic"]["ci95"]
    assert -1 <= lo <= r <= hi <= 1


def test_parse_counts_and_files(evaluated):
    _, report, tmp = evaluated
    assert report["n_utterances"] == 10
    assert report["parse"] == {"apa_failed": 1, "apa_missing": 0, "mdd_failed": 1, "mdd_missing": 1,
                               "unknown_ids": 1, "corpus_errors": 0, "out_of_range": 0, "repeated_agreeing": 0,
                               "repeated_conflicting": 0}
    out = tmp / "out"
    assert json.loads((out / "report.json").read_text()) == report
    for png in ("apa_scatter.png", "per_vs_accuracy.png", "confusions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    for paper in ("0.547", "0.656", "0.743", "0.114", "0.724", "0.792", "0.639", "0.415", "0.660", "0.829"):
        assert paper in md
    assert "not comparable" in md and "standard" in md
    assert f"**{12 / 152:.3f}**" in md  # our PER in our row


def test_cli_evaluate(evaluated, corpus_dir, tmp_path, capsys):
    _, report, tmp = evaluated
    cmd = [sys.executable, "-m", "pronlm.cli", "evaluate", "--predictions", str(tmp / "pred.jsonl"),
           "--corpus", str(corpus_dir), "--split", "test", "--out", str(tmp_path / "cli")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cli" / "report.json").read_text()) == report
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "000030145", "task": "apa", "raw": ""}\n{"id": oops\n')
    assert main(cmd[3:5] + [str(bad)] + cmd[6:]) == 2  # in-process: the same wiring, without a second start-up
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err


def test_bad_prediction_files_raise_naming_the_line(tmp_path):
    with pytest.raises(PredictionsError, match="cannot read predictions"):
        read_predictions(tmp_path / "missing.jsonl")
    with pytest.raises(ReportError, match="duplicates must be one of"):
        read_predictions(tmp_path / "missing.jsonl", duplicates="any")
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "task": "mdd", "raw": "{}"}\n\n[1, 2]\n')
    with pytest.raises(PredictionsError, match=r"p\.jsonl:3: expected an object"):
        read_predictions(path)
    path.write_text('{"id": "a", "task": "apa", "ok": true, "scores": {"accuracy": 1}}\n')
    with pytest.raises(PredictionsError, match=r"p\.jsonl:1: \"ok\" APA prediction"):
        read_predictions(path)
    assert issubclass(PredictionsError, PronlmError)


def test_evaluate_refuses_predictions_for_another_split(corpus_dir, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_line("000010113", "apa", '{"accuracy": 8}') + "\n")  # a train utterance
    with pytest.raises(ReportError, match="wrong --split"):
        evaluate(str(path), str(corpus_dir), "test", str(tmp_path / "out"))
    with pytest.raises(ReportError, match="accent policy 'maybe'"):
        evaluate(str(path), str(corpus_dir), "test", str(tmp_path / "out"), accent_policy="maybe")


APA_8 = '{"accuracy": 8, "fluency": 8, "prosodic": 8, "total": 8}'


def test_repeated_lines_that_agree_count_once_and_disagreeing_ones_are_named(tmp_path):
    path = tmp_path / "joined.jsonl"
    one = [_line("a", "apa", APA_8), _line("a", "mdd", _mdd_raw("HI", ["HH", "AY"]))]
    path.write_text("\n".join(one + one) + "\n")  # the same file twice, as `cat p1 p2` gives
    preds, repeated = read_predictions(path)
    assert len(preds) == 2 and repeated == {"agreeing": 2, "conflicting": 0, "kept": "error"}
    other = _line("a", "apa", APA_8.replace("8", "3"))
    path.write_text("\n".join(one + [other]) + "\n")
    with pytest.raises(PredictionsError, match=r"joined\.jsonl: 1 \(id, task\) repeated .* a/apa \(line 3\)"):
        read_predictions(path)
    assert read_predictions(path, "first")[0]["a", "apa"]["scores"]["accuracy"] == 8
    assert read_predictions(path, "last")[0]["a", "apa"]["scores"]["accuracy"] == 3


def test_scores_outside_0_to_10_count_as_failed_answers(corpus_dir, tmp_path):
    utts = list(read_corpus(str(corpus_dir), "test"))
    lines = [json.dumps({"id": u.id, "task": "apa", "raw": "", "ok": True, "clamped": [],
                         "scores": {"accuracy": 99 if i == 0 else -5 if i == 1 else 7, "fluency": 7,
                                    "prosodic": 7, "total": 7}}) for i, u in enumerate(utts)]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = evaluate(str(path), str(corpus_dir), "test", str(tmp_path / "out"))
    assert report["parse"]["apa_failed"] == 2 and report["parse"]["out_of_range"] == 2
    assert report["apa"]["accuracy"]["n"] == len(utts) - 2
    assert "2 APA answers failed with a score outside 0-10" in (tmp_path / "out" / "report.md").read_text()


def test_expected_scores_get_their_own_pccs_beside_the_greedy_ones(corpus_dir, tmp_path):
    """The greedy integers stay the paper's PCC; `scores_expected` gets a second set, labelled."""
    utts = list(read_corpus(str(corpus_dir), "test"))
    lines = []
    for n, u in enumerate(utts):
        raw = json.dumps({a: getattr(u.scores, a) for a in ("accuracy", "fluency", "prosodic", "total")})
        record = {"id": u.id, "task": "apa", "raw": raw, **parse_answer("apa", raw)}
        # expected: human accuracy, minus a bit on every other utterance; None on the first (not computable)
        record["scores_expected"] = None if n == 0 else {a: 10.0 - n * 0.5 if a == "fluency" else
                                                         getattr(u.scores, a) - 0.3 * (n % 2) for a in record["scores"]}
        lines.append(json.dumps(record))
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    report = evaluate(str(tmp_path / "p.jsonl"), str(corpus_dir), "test", str(tmp_path / "out"))
    assert report["apa"]["fluency"]["pcc"] == pytest.approx(1.0) and report["apa"]["fluency"]["n"] == 10
    expected = report["apa_expected"]
    assert all(expected[a]["n"] == 9 for a in expected)
    human = np.array([u.scores.fluency for u in utts[1:]], float)
    mine = np.array([10.0 - n * 0.5 for n in range(1, 10)])
    assert expected["fluency"]["pcc"] == pytest.approx(np.corrcoef(mine, human)[0, 1])
    acc = np.array([u.scores.accuracy - 0.3 * (n % 2) for n, u in enumerate(utts) if n], float)
    assert expected["accuracy"]["pcc"] == pytest.approx(
        np.corrcoef(acc, [u.scores.accuracy for u in utts[1:]])[0, 1])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| **this run, expected scores** |" in md and "the paper's protocol" in md
    assert f"**{expected['fluency']['pcc']:.3f}**" in md


def test_predictions_without_expected_scores_report_one_set(evaluated):
    _, report, tmp = evaluated
    assert report["apa_expected"] is None
    md = (tmp / "out" / "report.md").read_text()
    assert "expected scores" not in md and "greedy integer scores (the paper's protocol)" in md


def test_calibration_is_the_share_of_human_scores_inside_the_intervals(corpus_dir, tmp_path):
    """Intervals set around each human score: [h, h] on even utterances, [h+1, h+3] (missing it) on odd."""
    utts = list(read_corpus(str(corpus_dir), "test"))
    lines = []
    for n, u in enumerate(utts):
        raw = json.dumps({a: getattr(u.scores, a) for a in ("accuracy", "fluency", "prosodic", "total")})
        record = {"id": u.id, "task": "apa", "raw": raw, **parse_answer("apa", raw)}
        record["scores_interval"] = {a: [v, v] if n % 2 == 0 else [v + 1, v + 3] for a, v in record["scores"].items()}
        lines.append(json.dumps(record))
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    report = evaluate(str(tmp_path / "p.jsonl"), str(corpus_dir), "test", str(tmp_path / "out"))
    even, odd = (len(utts) + 1) // 2, len(utts) // 2
    for aspect in ("accuracy", "fluency", "prosodic", "total"):
        assert report["calibration"][aspect] == {"coverage": pytest.approx(even / len(utts)),
                                                 "mean_width": pytest.approx(2 * odd / len(utts)), "n": len(utts)}
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"| accuracy | {even / len(utts):.3f} | {2 * odd / len(utts):.2f} | {len(utts)} |" in md


def test_predictions_without_intervals_report_no_calibration(evaluated):
    _, report, tmp = evaluated
    assert report["calibration"] is None
    assert "carry no score intervals" in (tmp / "out" / "report.md").read_text()


def test_phone_scores_are_scored_against_the_phone_accuracies_as_gopt_does(corpus_dir, tmp_path):
    """MSE and PCC over every canonical phone of the test utterances, against scipy on the same pairs."""
    from scipy.stats import pearsonr

    from pronlm.data.targets import strip_stress

    utts = list(read_corpus(str(corpus_dir), "test"))
    lines, pred, human = [], [], []
    for n, u in enumerate(utts):
        raw = json.dumps({"word_transcript": u.text, "phoneme_transcript": ""})
        record = {"id": u.id, "task": "mdd", "raw": raw, **parse_answer("mdd", raw)}
        phones = [strip_stress(p) for w in u.words for p in w.canonical_phones]
        accuracies = [a for w in u.words for a in w.phone_accuracies]
        scores = [round(2 - ((3 * n + k) % 7) / 3.5, 4) for k in range(len(phones))]  # any spread of 0-2 values
        if n in (1, 2):  # 1: does not match the canonical phones, 2: a score that is no number: left out
            phones = phones[1:] if n == 1 else phones
        else:
            pred += scores
            human += accuracies
        record["phone_scores"] = [{"phone": p, "score": "high" if n == 2 else s} for p, s in zip(phones, scores)]
        lines.append(json.dumps(record))
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    report = evaluate(str(tmp_path / "p.jsonl"), str(corpus_dir), "test", str(tmp_path / "out"))
    phone = report["phone"]
    assert phone["n"] == len(pred) and phone["skipped_utterances"] == 2
    assert phone["mse"] == pytest.approx(float(np.mean((np.array(pred) - np.array(human)) ** 2)))
    assert phone["pcc"] == pytest.approx(pearsonr(pred, human)[0])
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"| **this run** | **{phone['mse']:.3f}** | **{phone['pcc']:.3f}** |" in md and "| GOPT" in md


def test_predictions_without_phone_scores_say_so(evaluated):
    _, report, tmp = evaluated
    assert report["phone"] is None
    assert "Phone scores: none in the predictions" in (tmp / "out" / "report.md").read_text()


# GOPT's three granularities (phone, word, utterance)

def _gopt_predictions(corpus_dir, path, split="train"):
    """Three-task predictions for every utterance of `split`: word scores and phone scores moved off the
    human ones by a fixed pattern, one word dropped from some word transcripts."""
    from pronlm.data.targets import wrd_target

    lines = []
    for n, u in enumerate(read_corpus(str(corpus_dir), split)):
        s = u.scores
        lines.append(_line(u.id, "apa", json.dumps({"accuracy": s.accuracy, "fluency": (s.fluency + n) % 11,
                                                    "prosodic": s.prosodic, "total": 10 - s.total})))
        heard = " ".join(w.text for w in u.words[:-1] if n % 3 == 0) if n % 3 == 0 else u.text
        scores = [{"phone": p, "score": (a + 0.3 * ((n + i) % 4)) / 1.5}
                  for i, (p, a) in enumerate(zip(canonical_phones(u), [a for w in u.words for a in w.phone_accuracies]))]
        lines.append(json.dumps({"id": u.id, "task": "mdd", "raw": "", **parse_answer("mdd", _mdd_raw(heard, heard_phones(u))),
                                 "phone_scores": scores}))
        words = json.loads(wrd_target(u))["words"]
        for i, w in enumerate(words):
            w["accuracy"] = min(10, max(0, w["accuracy"] + (n + i) % 3 - 1))
            w["total"] = min(10, max(0, w["total"] - (n * i) % 2))
        lines.append(_line(u.id, "wrd", json.dumps({"words": words})))
    path.write_text("\n".join(lines) + "\n")


def test_the_three_granularities_on_the_real_subset_equal_scipy(corpus_dir, tmp_path):
    """Phone MSE/PCC over every phone, word PCCs over every word, utterance PCCs (completeness derived),
    against scipy.stats.pearsonr on numbers gathered here straight from scores.json and the file."""
    preds = tmp_path / "p.jsonl"
    _gopt_predictions(corpus_dir, preds)
    g = evaluate(str(preds), str(corpus_dir), "train", str(tmp_path / "r"))["granularities"]
    raw = json.loads((corpus_dir / "resource" / "scores.json").read_text())
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    by = {(r["id"], r["task"]): r for r in records}
    ids = [r["id"] for r in records if r["task"] == "wrd"]
    assert len(ids) == 36
    pred_phone = [p["score"] for i in ids for p in by[i, "mdd"]["phone_scores"]]
    human_phone = [a for i in ids for w in raw[i]["words"] for a in w["phones-accuracy"]]
    assert g["phone"]["n"] == len(human_phone) > 300
    assert g["phone"]["pcc"] == pytest.approx(stats.pearsonr(pred_phone, human_phone).statistic)
    assert g["phone"]["mse"] == pytest.approx(np.mean((np.array(pred_phone) - np.array(human_phone)) ** 2))
    for aspect in ("accuracy", "total"):
        pred = [w[aspect] for i in ids for w in by[i, "wrd"]["words"]]
        human = [w[aspect] for i in ids for w in raw[i]["words"]]
        assert g["word"][aspect]["n"] == len(human) and g["word"][aspect]["pcc"] == pytest.approx(
            stats.pearsonr(pred, human).statistic)
    assert g["word"]["stress"]["pcc"] is None  # every stress in this subset is 10: undefined, not 0
    fluency = stats.pearsonr([by[i, "apa"]["scores"]["fluency"] for i in ids], [raw[i]["fluency"] for i in ids])
    assert g["utterance"]["fluency"]["pcc"] == pytest.approx(fluency.statistic)
    heard = [len(by[i, "mdd"]["word_transcript"].split()) / len(raw[i]["words"]) * 10 for i in ids]
    assert sorted(set(heard)) != [10.0]  # some transcripts miss a word
    assert g["utterance"]["completeness"]["n"] == 36
    assert g["utterance"]["completeness"]["mse"] == pytest.approx(
        np.mean((np.array(heard) - np.array([raw[i]["completeness"] for i in ids])) ** 2))
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Three granularities (GOPT's protocol)" in report and "Missing from these predictions" not in report
    assert "| GOPT (Gong et al. 2022) | 0.085 | 0.612 | 0.533 | 0.291 | 0.549 | 0.714 | 0.155 | 0.753 | 0.760 | 0.742 |" \
        in report
    ours = next(line for line in report.splitlines() if line.startswith("| **this run** | ") and "**" not in line[16:])
    assert f"| {g['phone']['mse']:.3f} | {g['phone']['pcc']:.3f} | {g['word']['accuracy']['pcc']:.3f} | – |" in ours


def test_word_pairs_by_hand_and_answers_with_other_words_left_out():
    from pronlm.data.records import ApaScores, Utterance, Word
    from pronlm.evaluation.evaluate import word_section

    def utt(uid, *words):
        return Utterance(uid, "s", " ".join(w[0] for w in words), None, ApaScores(8, 8, 8, 8, 10),
                         tuple(Word(t, ("AH",), (2.0,), (), a, s, tot) for t, a, s, tot in words))

    utts = [utt("a", ("WE", 10, 10, 9), ("GO", 4, 5, 3)), utt("b", ("HI", 7, 10, 6)), utt("c", ("NO", 1, 10, 1))]
    preds = {("a", "wrd"): {"ok": True, "words": [{"word": "WE", "accuracy": 9, "stress": 10, "total": 9},
                                                  {"word": "GO", "accuracy": 5, "stress": 10, "total": 4}]},
             ("b", "wrd"): {"ok": True, "words": [{"word": "HI", "accuracy": 6, "stress": 5, "total": 6}]},
             ("c", "wrd"): {"ok": True, "words": [{"word": "KNOW", "accuracy": 0, "stress": 0, "total": 0}]}}
    section, misaligned = word_section(utts, preds)
    assert misaligned == 1  # c lists another word: none of it is paired
    # accuracy pairs (9, 10), (5, 4), (6, 7): pred dev (2.33, -1.67, -0.67), human dev (3, -3, 0)
    assert section["accuracy"]["n"] == 3
    assert section["accuracy"]["pcc"] == pytest.approx(stats.pearsonr([9, 5, 6], [10, 4, 7]).statistic)
    assert section["accuracy"]["mse"] == pytest.approx((1 + 1 + 1) / 3)
    assert section["stress"]["pcc"] == pytest.approx(stats.pearsonr([10, 10, 5], [10, 5, 10]).statistic)  # -0.5
    assert section["stress"]["pcc"] == pytest.approx(-0.5)
    assert word_section(utts, {}) == (None, 0)


def test_a_granularity_missing_from_the_predictions_is_named_not_zero(corpus_dir, tmp_path):
    preds = tmp_path / "p.jsonl"
    write_predictions(corpus_dir, preds)  # APA and MDD answers, no phone scores, no word task
    report = evaluate(str(preds), str(corpus_dir), "test", str(tmp_path / "r"))
    g = report["granularities"]
    assert g["phone"] is None and g["word"] is None and g["utterance"]["accuracy"]["n"] == 9
    assert "wrd_failed" not in report["parse"]  # no word task asked: nothing counted missing
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**phone**: no `phone_scores` on the MDD records" in md and "**word**: no word-task (`wrd`) answers" in md
    ours = next(line for line in md.splitlines() if line.startswith("| **this run** | ") and "**" not in line[16:])
    assert ours.startswith("| **this run** | – | – | – | – | – | ") and " 0.000 " not in ours
