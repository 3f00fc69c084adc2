"""Prediction on the tiny model and real clips: record schema, batching, resume after SIGKILL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pronlm.data import load_audio
from pronlm.infer import Predictor, done_keys, predict
from tests.conftest import kill_when


def predict_cmd(corpus, out, *extra):
    return [sys.executable, "-m", "pronlm.cli", "predict", "--base", "tiny", "--corpus", str(corpus),
            "--split", "test", "--out", str(out), "--batch-size", "2", "--max-new-tokens", "24", *extra]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_follow_the_schema_for_both_tasks(corpus_dir, tmp_path):
    out = tmp_path / "pred.jsonl"
    predict("tiny", None, str(corpus_dir), "test", str(out), batch_size=4, limit=3, max_new_tokens=16)
    lines = read_lines(out)
    # longest clip first: 000030154 (2.91 s), 000030145 (2.78 s), 000030153 (2.35 s)
    assert [(r["id"], r["task"]) for r in lines] == [(i, t) for i in ("000030154", "000030145", "000030153")
                                                     for t in ("apa", "mdd")]
    for r in lines:
        common = {"id", "task", "raw", "ok", "error"}
        extra = {"scores", "clamped"} if r["task"] == "apa" else {"word_transcript", "phoneme_transcript"}
        assert set(r) == common | extra
        assert isinstance(r["raw"], str) and r["ok"] is (r["error"] is None)


def test_batched_generation_equals_one_at_a_time(corpus_dir, train_utterances):
    """Left padding of the text changes nothing. (Clips of different lengths do change the shorter
    clip's encoding a little: Phi-4's conformer convolutions see the padded frames; that is the model.)"""
    predictor = Predictor.load("tiny", max_new_tokens=12)
    clip = load_audio(train_utterances[0].audio)
    items = [("a", clip), ("b", clip.copy())]
    batched = predictor.predict(items, batch_size=4)  # one batch: APA and MDD prompts of different lengths
    single = predictor.predict(items, batch_size=1)
    assert [r["raw"] for r in batched] == [r["raw"] for r in single]
    assert batched[0]["raw"] != batched[1]["raw"]  # the two tasks really did get different prompts


def test_generated_text_stops_at_the_first_end_token():
    predictor = Predictor.load("tiny", max_new_tokens=40)
    samples = np.sin(np.arange(16000) / 7).astype(np.float32) * 0.3
    (apa,) = predictor.predict([("x", samples)], tasks=("apa",))
    assert apa["raw"].count("<|end|>") + apa["raw"].count("<|endoftext|>") <= 1


def test_a_line_cut_by_a_crash_is_dropped(tmp_path):
    out = tmp_path / "p.jsonl"
    out.write_text('{"id": "a", "task": "apa", "raw": "", "ok": false}\n{"id": "a", "task": "md')
    assert done_keys(out) == {("a", "apa")}
    assert out.read_text() == '{"id": "a", "task": "apa", "raw": "", "ok": false}\n'


def test_a_broken_clip_is_reported_and_the_rest_predicted(corpus_dir, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus, ignore=shutil.ignore_patterns("SPEAKER0001", "SPEAKER0005", "SPEAKER1*",
                                                                        "SPEAKER2*"))
    victim = corpus / "WAVE" / "SPEAKER0003" / "000030145.WAV"
    victim.write_bytes(b"not a wav file")
    out = tmp_path / "p.jsonl"
    predict("tiny", None, str(corpus), "test", str(out), batch_size=4, limit=3, max_new_tokens=8)
    ids = {r["id"] for r in read_lines(out)}
    assert ids == {"000030153", "000030154"}
    assert "000030145" in caplog.text and "cannot read audio" in caplog.text


@pytest.mark.slow
def test_resume_after_sigkill_adds_exactly_the_missing_lines(corpus_dir, tmp_path):
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    subprocess.run(predict_cmd(corpus_dir, full), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(predict_cmd(corpus_dir, cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: cut.exists() and cut.read_text().count("\n") >= 4)
    before = cut.read_text().splitlines(keepends=True)
    complete = [line for line in before if line.endswith("\n")]
    assert 4 <= len(complete) < 20
    subprocess.run(predict_cmd(corpus_dir, cut), check=True, capture_output=True, timeout=300)
    after = cut.read_text().splitlines(keepends=True)
    assert after[:len(complete)] == complete  # nothing written before the crash is lost or rewritten
    assert len(after) == 20  # 10 test utterances x 2 tasks, nothing duplicated
    assert sorted(after) == sorted(full.read_text().splitlines(keepends=True))
    rerun = subprocess.run(predict_cmd(corpus_dir, cut), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and len(cut.read_text().splitlines()) == 20
