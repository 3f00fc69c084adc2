"""`pronlm prepare` end to end: the CLI on the real subset, and a corpus copy with broken entries."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from pronlm.data import CorpusError
from pronlm.prepare import prepare
from pronlm.prompts import AUDIO_PLACEHOLDER, PromptSet


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    run = subprocess.run([sys.executable, "-m", "pronlm.cli", "prepare", "--corpus", str(corpus_dir),
                          "--split", "train", "--out", str(out), "--tokenizer", "tiny"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = (out / "examples.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], json.loads((out / "stats.json").read_text()), run.stderr


def test_cli_writes_two_examples_per_utterance(prepared, corpus_dir):
    examples, _, _ = prepared
    assert len(examples) == 72
    assert all(set(e) == {"id", "task", "audio", "prompt", "target"} for e in examples)
    ids = [e["id"] for e in examples]
    assert len(set(ids)) == 36
    assert [e["task"] for e in examples] == ["apa", "mdd"] * 36
    assert ids[0::2] == ids[1::2]
    prompts = PromptSet.from_templates()
    assert all(e["prompt"] == prompts.for_task(e["task"]) for e in examples)
    assert all(os.path.isfile(e["audio"]) for e in examples)


def test_cli_targets_of_whale(prepared, corpus_dir):
    examples, _, _ = prepared
    apa, mdd = [e for e in examples if e["id"] == "014350017"]
    assert apa["audio"] == str(corpus_dir / "WAVE" / "SPEAKER1435" / "014350017.WAV")
    assert apa["target"] == '{"accuracy": 7, "fluency": 7, "prosodic": 7, "total": 6}'
    assert mdd["target"] == ('{"word_transcript": "STEEVEN IS GOING TO SEE WHALE", '
                             '"phoneme_transcript": "S T IY V AH N IH Z G OW IH NG T UW S IY OW <unk>"}')


def test_cli_stats(prepared, tiny_tokenizer):
    examples, stats, stderr = prepared
    assert (stats["utterances"], stats["examples"], stats["skipped"], stats["unlabelled"]) == (36, 72, 0, 0)
    assert stats["skip_reasons"] == {}
    # THEME IY->AH, and WHALE's deleted W, EY->OW, L* -> <unk>
    assert stats["mispronounced_phones"] == 4
    assert stats["audio_seconds"]["total"] == pytest.approx(111.682)  # 1,786,912 samples
    assert stats["audio_seconds"]["max"] == pytest.approx(4.49)  # 014350017: 71,840 samples
    assert stats["tokens"]["apa"]["audio"] == stats["tokens"]["mdd"]["audio"] == pytest.approx(1405 / 36, abs=0.01)
    for task in ("apa", "mdd"):
        before, after = PromptSet.from_templates().for_task(task).split(AUDIO_PLACEHOLDER)
        text_tokens = sum(len(tiny_tokenizer(p, add_special_tokens=False).input_ids) for p in (before, after))
        assert stats["tokens"][task]["prompt"] == text_tokens  # the placeholder is not in the prompt count
        answers = [len(tiny_tokenizer(e["target"], add_special_tokens=False).input_ids) + 2
                   for e in examples if e["task"] == task]
        assert stats["tokens"][task]["answer"] == pytest.approx(sum(answers) / 36, abs=0.01)
    assert stats["utterances_per_second"] > 0
    assert "36 utterances -> 72 examples" in stderr


@pytest.fixture()
def broken_copy(corpus_dir, tmp_path):
    """Four train utterances: one fine, one with a garbage WAV, one whose WAV is gone, one lacking a score."""
    keep = ["000010011", "000010113", "014350017", "000050040"]
    root = tmp_path / "corpus"
    (root / "train").mkdir(parents=True)
    (root / "resource").mkdir()
    for name in ("text", "wav.scp", "utt2spk"):
        lines = (corpus_dir / "train" / name).read_text().splitlines()
        (root / "train" / name).write_text("".join(f"{l}\n" for l in lines if l.split()[0] in keep))
    scores = json.loads((corpus_dir / "resource" / "scores.json").read_text())
    scores = {k: scores[k] for k in keep}
    del scores["000050040"]["fluency"]
    (root / "resource" / "scores.json").write_text(json.dumps(scores))
    wavs = dict(line.split() for line in (root / "train" / "wav.scp").read_text().splitlines())
    for uid in ("000010011", "000050040"):
        (root / wavs[uid]).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(corpus_dir / wavs[uid], root / wavs[uid])
    (root / wavs["000010113"]).write_bytes(b"RIFF but not really a wave file" * 8)
    return root


def test_broken_entries_are_reported_and_skipped(broken_copy, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="pronlm.prepare"):
        stats = prepare(str(broken_copy), "train", out)
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert [(e["id"], e["task"]) for e in examples] == [("000010011", "apa"), ("000010011", "mdd")]
    assert (stats["utterances"], stats["examples"], stats["skipped"]) == (1, 2, 3)
    reasons = stats["skip_reasons"]
    assert set(reasons) == {"000010113", "014350017", "000050040"}
    assert reasons["000010113"].startswith("cannot read audio")
    assert reasons["014350017"].startswith("audio file not found")
    assert reasons["000050040"] == "scores.json entry lacks fluency"
    assert json.loads((out / "stats.json").read_text())["skip_reasons"] == reasons
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and any(m.startswith("skipped 000010113: cannot read audio") for m in warnings)
    assert stats["tokens"] is None


def test_limit_and_policy(corpus_dir, tmp_path):
    stats = prepare(str(corpus_dir), "train", tmp_path / "out", accent_policy="canonical", limit=5)
    assert (stats["utterances"], stats["examples"]) == (5, 10)
    stats = prepare(str(corpus_dir), "train", tmp_path / "out", accent_policy="canonical")
    assert stats["mispronounced_phones"] == 3  # L* now counts as L


def test_wrong_corpus_or_split_writes_nothing(corpus_dir, tmp_path):
    with pytest.raises(CorpusError, match="unknown split 'dev'"):
        prepare(str(corpus_dir), "dev", tmp_path / "a")
    with pytest.raises(CorpusError, match=r"corpus folder .*nowhere not found"):
        prepare(str(tmp_path / "nowhere"), "train", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_reports_errors(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pronlm.cli", "prepare", "--corpus", str(tmp_path / "nowhere"),
                          "--split", "train", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2
    assert "pronlm prepare: error: corpus folder" in run.stderr
