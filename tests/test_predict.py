"""Prediction on the tiny model and real clips: record schema, batching, resume after SIGKILL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pronlm.config import Config, load_template
from pronlm.data.audio import load_audio
from pronlm.data.corpus import read_corpus
from pronlm.data.prompts import PAPER_TASKS, Example
from pronlm.data.records import AudioError
from pronlm.data.targets import strip_stress
from pronlm.evaluation.predict import Predictor, done_keys, predict
from pronlm.model.collate import AudioLimitError, max_audio_seconds
from pronlm.model.phi4_config import real_config
from tests.conftest import kill_when
from tests.test_data import cut_wav


def predict_cmd(corpus, out, *extra):
    return [sys.executable, "-m", "pronlm.cli", "predict", "--base", "tiny", "--corpus", str(corpus),
            "--split", "test", "--out", str(out), "--batch-size", "2", "--max-new-tokens", "24", *extra]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_follow_the_schema_for_both_tasks(corpus_dir, tmp_path):
    out = tmp_path / "pred.jsonl"
    predict(Config(base="tiny", corpus=str(corpus_dir), split="test", limit=3, max_new_tokens=16), str(out), batch_size=4)
    lines = read_lines(out)
    # longest clip first: 000030154 (2.91 s), 000030145 (2.78 s), 000030153 (2.35 s)
    assert [(r["id"], r["task"]) for r in lines] == [(i, t) for i in ("000030154", "000030145", "000030153")
                                                     for t in ("apa", "mdd")]
    for r in lines:
        common = {"id", "task", "raw", "ok", "error"}
        extra = ({"scores", "clamped", "scores_expected", "scores_sd", "scores_interval"} if r["task"] == "apa"
                 else {"word_transcript", "phoneme_transcript", "phone_scores"})
        assert set(r) == common | extra
        assert isinstance(r["raw"], str) and r["ok"] is (r["error"] is None)
    utts = {u.id: u for u in read_corpus(str(corpus_dir), "test")}
    for r in lines[1::2]:  # one score per canonical phone of the annotation, in order
        canonical = [strip_stress(p) for w in utts[r["id"]].words for p in w.canonical_phones]
        assert [s["phone"] for s in r["phone_scores"]] == canonical
        assert all(0 <= s["score"] <= 2 and 0 <= s["p"] <= 1 for s in r["phone_scores"])


@pytest.mark.slow
def test_batched_generation_equals_one_at_a_time(corpus_dir, train_utterances):
    """Left padding of the text changes nothing. (Clips of different lengths do change the shorter
    clip's encoding a little: Phi-4's conformer convolutions see the padded frames; that is the model.)"""
    predictor = Predictor.load(Config(base="tiny", max_new_tokens=12))
    clip = load_audio(train_utterances[0].audio)
    items = [("a", clip), ("b", clip.copy())]
    batched = predictor.predict(items, batch_size=4)  # one batch: APA and MDD prompts of different lengths
    single = predictor.predict(items, batch_size=1)
    assert [r["raw"] for r in batched] == [r["raw"] for r in single]
    assert batched[0]["raw"] != batched[1]["raw"]  # the two tasks really did get different prompts


def test_generated_text_stops_at_the_first_end_token():
    predictor = Predictor.load(Config(base="tiny", max_new_tokens=40))
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
    predict(Config(base="tiny", corpus=str(corpus), split="test", limit=3, max_new_tokens=8), str(out), batch_size=4)
    ids = {r["id"] for r in read_lines(out)}
    assert ids == {"000030153", "000030154"}
    assert "000030145" in caplog.text and "cannot read audio" in caplog.text


@pytest.mark.slow
def test_resume_after_sigkill_adds_exactly_the_missing_lines(corpus_dir, tmp_path):
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    subprocess.run(predict_cmd(corpus_dir, full), check=True, capture_output=True)
    proc = subprocess.Popen(predict_cmd(corpus_dir, cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: cut.exists() and cut.read_text().count("\n") >= 4)
    before = cut.read_text().splitlines(keepends=True)
    complete = [line for line in before if line.endswith("\n")]
    assert 4 <= len(complete) < 20
    subprocess.run(predict_cmd(corpus_dir, cut), check=True, capture_output=True)
    after = cut.read_text().splitlines(keepends=True)
    assert after[:len(complete)] == complete  # nothing written before the crash is lost or rewritten
    assert len(after) == 20  # 10 test utterances x 2 tasks, nothing duplicated
    assert sorted(after) == sorted(full.read_text().splitlines(keepends=True))
    rerun = subprocess.run(predict_cmd(corpus_dir, cut), capture_output=True, text=True)
    assert rerun.returncode == 0 and len(cut.read_text().splitlines()) == 20


def noise(n_samples: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(n_samples)).astype(np.float32)


def test_the_audio_limit_comes_from_the_encoder_config(tiny_model):
    assert max_audio_seconds(real_config()) == 40.0  # bias_max_distance 500
    assert max_audio_seconds(tiny_model.config) == 40.0  # bias_max_distance 1000: it limits nothing
    assert max_audio_seconds(tiny_model.config.audio_config) == 40.0


def test_the_limit_is_where_the_encoder_breaks():
    """The experiment behind `max_audio_seconds`: 640,399 samples make 4,000 feature frames, 500 encoder
    positions, and decode in a batch of two (APA and MDD, as assess sends them); 640,400 samples make
    501 positions, and transformers fails. If this starts to pass, transformers was fixed: revisit the limit."""
    predictor = Predictor.load(Config(base="tiny", max_new_tokens=1, max_audio_seconds=40))
    assert predictor.max_audio_seconds == 40.0
    examples = [Example("x", task, None, predictor.prompts.for_task(task), None) for task in PAPER_TASKS]
    predictor.generate(examples, [noise(640_399)] * 2)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        predictor.generate(examples, [noise(640_400)] * 2)


def test_a_limit_above_the_encoders_is_refused_at_start_up():
    # before: accepted, and the first clip over 40 s crashed inside transformers
    with pytest.raises(AudioLimitError, match=r"max_audio_seconds is 120 s, but the model's audio encoder takes at "
                                              r"most 40 s per clip: set it to 40 or less"):
        Predictor.load(Config(base="tiny", max_audio_seconds=120))


def test_a_clip_over_the_limit_is_refused_before_generation():
    # before: RuntimeError from transformers' audio encoder
    predictor = Predictor.load(Config(base="tiny", max_new_tokens=1))
    with pytest.raises(AudioError, match=r"utterance long: audio lasts 50\.00 s, over the limit of 30 s"):
        predictor.predict([("short", noise(16000)), ("long", noise(50 * 16000))])


def test_a_truncated_clip_is_reported_and_the_rest_predicted(corpus_dir, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus, ignore=shutil.ignore_patterns("SPEAKER0001", "SPEAKER0005", "SPEAKER1*",
                                                                        "SPEAKER2*"))
    cut_wav(corpus / "WAVE" / "SPEAKER0003" / "000030145.WAV")
    out = tmp_path / "p.jsonl"
    predict(Config(base="tiny", corpus=str(corpus), split="test", limit=3, max_new_tokens=4), str(out), batch_size=4)
    assert {r["id"] for r in read_lines(out)} == {"000030153", "000030154"}  # before: a cut clip was predicted
    assert "utterance 000030145" in caplog.text and "is truncated" in caplog.text


@pytest.mark.slow
def test_a_checkpoint_describes_itself_to_predict(corpus_dir, tmp_path, capsys):
    """`predict --adapter CKPT` needs no other flag, and gives what the command with every flag gives."""
    from pronlm.cli import main

    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", f"output_dir={run}", "limit=2",
                 "max_steps=2", "save_strategy=steps", "save_steps=2", "per_device_train_batch_size=2"]) == 0
    ckpt = run / "checkpoint-2"
    assert (ckpt / "prompts" / "apa.txt").read_text().strip() == load_template("apa", "short")
    assert (ckpt / "config.yaml").is_file()
    assert main(["predict", "--adapter", str(ckpt), "--split", "test", "--limit", "3", "--out",
                 str(tmp_path / "short.jsonl")]) == 0
    assert main(["predict", "--base", "tiny", "--adapter", str(ckpt), "--corpus", str(corpus_dir), "--split", "test",
                 "--limit", "3", "--apa-template", "short", "--mdd-template", "short", "--out",
                 str(tmp_path / "full.jsonl")]) == 0
    short, full = (tmp_path / "short.jsonl").read_text(), (tmp_path / "full.jsonl").read_text()
    assert short == full and len(short.splitlines()) == 6
    capsys.readouterr()
    assert main(["predict", "--adapter", str(ckpt), "--apa-template", "default", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--apa-template default disagrees with the checkpoint, which was trained with" in err and "apa.txt" in err
    assert main(["predict", "--adapter", str(ckpt), "--base", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert f"--base {tmp_path} disagrees with the checkpoint, which was trained with tiny" in capsys.readouterr().err


def test_a_checkpoint_trained_instructions_first_predicts_so_and_refuses_the_paper_layout(corpus_dir, tmp_path,
                                                                                          capsys, monkeypatch):
    from pronlm.cli import main
    from pronlm.config import command_config, predictions_config
    from pronlm.data.prompts import render_prompt
    from pronlm.model import train

    trained_on, load_examples = [], train.load_examples

    def spy(cfg, prompts, *rest):  # the prompts training renders its examples with
        trained_on.append(prompts)
        return load_examples(cfg, prompts, *rest)

    monkeypatch.setattr(train, "load_examples", spy)
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", f"output_dir={run}", "limit=2",
                 "max_steps=1", "save_strategy=steps", "save_steps=1", "per_device_train_batch_size=2",
                 "prompt_layout=instructions-first"]) == 0
    ckpt = run / "checkpoint-1"
    cfg = command_config(adapter=str(ckpt))
    assert [p.apa for p in trained_on] == [render_prompt("apa", load_template("apa", "short"), "instructions-first")]
    assert cfg.prompt_layout == "instructions-first"
    predictor = Predictor.load(cfg, str(ckpt))
    assert predictor.prompts.apa == f"<|user|><|APA|>{load_template('apa', 'short')}<|audio_1|><|end|><|assistant|>"
    assert predictor.prompts.mdd == render_prompt("mdd", load_template("mdd", "short"), "instructions-first")
    out = tmp_path / "test.jsonl"
    assert main(["predict", "--adapter", str(ckpt), "--split", "test", "--limit", "1", "--max-new-tokens", "4",
                 "--out", str(out)]) == 0
    assert "prompt_layout: instructions-first" in predictions_config(out).read_text()
    capsys.readouterr()
    assert main(["predict", "--adapter", str(ckpt), "prompt_layout=paper", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "prompt_layout=paper disagrees with the checkpoint, which was trained with instructions-first" in \
        capsys.readouterr().err
