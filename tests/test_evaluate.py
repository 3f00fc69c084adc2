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
