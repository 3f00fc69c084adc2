"""`pronlm prepare` end to end: the CLI on the real subset, and a corpus copy with broken entries; its
folder (or one written by hand) read back as a training and prediction input, bad lines named by line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys

import pytest

from pronlm.data.prepare import prepare
from pronlm.data.prompts import AUDIO_PLACEHOLDER, PromptSet
from pronlm.data.records import CorpusError


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    run = subprocess.run([sys.executable, "-m", "pronlm.cli", "prepare", "--corpus", str(corpus_dir),
                          "--split", "train", "--out", str(out), "--tokenizer", "tiny"],
                         capture_output=True, text=True)
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
    with caplog.at_level(logging.INFO, logger="pronlm.data.prepare"):
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


def test_prepare_writes_the_prompts_in_the_configured_layout(corpus_dir, tmp_path):
    from pronlm.cli import main

    out = tmp_path / "out"
    assert main(["prepare", "--out", str(out), f"corpus={corpus_dir}", "limit=1", "apa_template=short",
                 "mdd_template=short", "prompt_layout=instructions-first"]) == 0
    lines = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    prompts = PromptSet.from_templates("short", "short", layout="instructions-first")
    assert [line["prompt"] for line in lines] == [prompts.apa, prompts.mdd]
    assert lines[0]["prompt"].endswith(AUDIO_PLACEHOLDER + "<|end|><|assistant|>")
    assert json.loads((out / "stats.json").read_text())["prompt_layout"] == "instructions-first"
    assert "prompt_layout: instructions-first" in (out / "config.yaml").read_text()


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


# ---- a prepared folder, or one written by hand, is a training and prediction input (`data=DIR`, `--data DIR`)


def test_manifest_lists_each_clip_once_with_its_16k_samples(corpus_dir, tmp_path):
    out = tmp_path / "out"
    prepare(str(corpus_dir), "train", out)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert [r["audio"] for r in rows] == [e["audio"] for e in examples][0::2]  # one row per utterance, same paths
    assert sum(r["samples"] for r in rows) == 1_786_912  # stats: 111.682 s
    whale = str(corpus_dir / "WAVE" / "SPEAKER1435" / "014350017.WAV")
    assert {r["audio"]: r["samples"] for r in rows}[whale] == 71_840


def test_a_prepared_folder_trains_the_same_examples_as_the_corpus(corpus_dir, tmp_path, tiny_tokenizer):
    from pronlm.config import load_config
    from pronlm.model.train import load_examples

    out = tmp_path / "prepared"
    prepare(str(corpus_dir), "train", out, apa_template="short", mdd_template="short")  # tiny-cpu's templates
    prompts = PromptSet.from_templates("short", "short")
    from_corpus = load_examples(load_config("tiny-cpu", {"corpus": str(corpus_dir)}), prompts, tiny_tokenizer)
    folder_cfg = load_config("tiny-cpu", {"corpus": str(tmp_path / "nowhere"), "data": str(out)})  # corpus unused
    from_folder = load_examples(folder_cfg, prompts, tiny_tokenizer)
    assert len(from_folder) == len(from_corpus) == 72
    assert from_folder.examples == from_corpus.examples  # ids, tasks, audio paths, prompts, targets, in order
    assert from_folder.lengths == from_corpus.lengths
    (out / "manifest.jsonl").unlink()  # a folder written by hand: each clip is read and measured instead
    assert load_examples(folder_cfg, prompts, tiny_tokenizer).lengths == from_corpus.lengths
    limited = load_examples(load_config("tiny-cpu", {"data": str(out), "limit": 3}), prompts, tiny_tokenizer)
    assert limited.examples == from_corpus.examples[:6]


APA_PROMPT = "<|user|><|APA|><|audio_1|>Rate it.<|end|><|assistant|>"
MDD_PROMPT = "<|user|><|MDD|><|audio_1|>Transcribe it.<|end|><|assistant|>"
APA = '{"accuracy": 8, "fluency": 9, "prosodic": 9, "total": 8}'
MDD = '{"word_transcript": "WE CALL IT BEAR", "phoneme_transcript": "W IY K AO L IH T B EH R"}'


def _line(id="a", task="apa", audio="clips/a.wav", prompt=None, target=None, **extra) -> str:
    prompt = prompt or (APA_PROMPT if task == "apa" else MDD_PROMPT)
    target = target or (APA if task == "apa" else MDD)
    return json.dumps({"id": id, "task": task, "audio": audio, "prompt": prompt, "target": target, **extra})


def test_bad_lines_are_reported_with_path_and_line_and_skipped(corpus_dir, tmp_path, caplog, tiny_tokenizer):
    from pronlm.data.prepare import read_examples
    from pronlm.errors import FileFormatError

    folder = tmp_path / "mine"
    (folder / "clips").mkdir(parents=True)
    wav = corpus_dir / "WAVE" / "SPEAKER1435" / "014350017.WAV"
    (folder / "clips" / "a.wav").write_bytes(wav.read_bytes())
    (folder / "clips" / "junk.wav").write_bytes(b"RIFF but not really a wave file" * 8)
    lines = [
        _line(note="extra fields are ignored"),                                   # 1 fine (relative audio)
        _line(task="mdd", audio=str(folder / "clips" / "a.wav")),                 # 2 fine (absolute audio)
        '{"id": "b", "task": "apa",',                                              # 3 cut short
        _line(id="c", task="asr"),                                                 # 4 unknown task
        _line(id="d", target='{"accuracy": 8}'),                                   # 5 not an APA answer
        _line(id="e", target='{"accuracy": 12, "fluency": 9, "prosodic": 9, "total": 8}'),  # 6 out of range
        _line(id="f", task="mdd", target="W IY K AO L"),                           # 7 not JSON
        _line(id="g", prompt="<|user|><|APA|>Rate it.<|end|><|assistant|>"),       # 8 no audio placeholder
        _line(id="h", prompt=MDD_PROMPT),                                          # 9 APA line, MDD control token
        _line(id="i", audio="clips/gone.wav"),                                     # 10 missing clip
        _line(id="j", audio="clips/junk.wav"),                                     # 11 unreadable clip
        _line(),                                                                   # 12 repeats line 1
        "",                                                                        # 13 blank: ignored
        json.dumps({"id": "k", "task": "mdd", "audio": "clips/a.wav", "prompt": MDD_PROMPT, "target": None}),  # 14
    ]
    (folder / "examples.jsonl").write_text("\n".join(lines) + "\n")
    path = folder / "examples.jsonl"
    errors = []
    got = read_examples(folder, errors)
    assert [(ex.id, ex.task, ex.audio, samples) for ex, samples in got] == [
        ("a", "apa", str(folder / "clips" / "a.wav"), 71_840), ("a", "mdd", str(folder / "clips" / "a.wav"), 71_840)]
    messages = [str(e) for e in errors]
    assert all(isinstance(e, FileFormatError) for e in errors)
    assert [int(m.removeprefix(f"{path}:").split(":")[0]) for m in messages] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]
    expected = {3: f"{path}:3:27: not valid JSON", 4: "task 'asr' is not one of apa, mdd",
                5: "target is not an APA answer (missing aspect 'fluency')", 6: "a score outside 0-10",
                7: "target is not JSON text", 8: "must hold <|audio_1|> exactly once",
                9: "must hold <|APA|> and no other control token", 10: "utterance i: audio file not found",
                11: "utterance j: cannot read audio", 12: "repeats the apa example of a (line 1)",
                14: "k/mdd has no target: nothing to train on"}
    for message, (n, text) in zip(messages, expected.items()):
        assert text in message, (n, message)
    kept = read_examples(folder, [], need_targets=False)  # prediction: a line without a target is fine
    assert [(ex.id, ex.task) for ex, _ in kept] == [("a", "apa"), ("a", "mdd"), ("k", "mdd")]

    from pronlm.config import load_config
    from pronlm.model.train import load_examples

    with caplog.at_level(logging.WARNING, logger="pronlm.model.train"):
        dataset = load_examples(load_config("tiny-cpu", {"data": str(folder)}),
                                PromptSet.from_templates("short", "short"), tiny_tokenizer)
    assert len(dataset) == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert f"skipped {path}:3:27: not valid JSON: Expecting property name enclosed in double quotes" in warnings
    assert sum(m.startswith(f"skipped {path}:") for m in warnings) == 11
    assert any("apa lines of" in m and "apa_template=short" in m for m in warnings)  # own prompts: said so


def test_a_folder_without_examples_or_usable_lines_is_a_one_line_error(tmp_path, capsys):
    from pronlm.cli import main

    (tmp_path / "empty").mkdir()
    argv = ["train", "--recipe", "tiny-cpu", f"data={tmp_path / 'empty'}", f"output_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    assert f"no examples.jsonl in {tmp_path / 'empty'}" in capsys.readouterr().err
    (tmp_path / "empty" / "examples.jsonl").write_text(_line(audio="gone.wav") + "\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty' / 'examples.jsonl'}: no usable line (1 skipped; the first: " in err
    assert "examples.jsonl:1: utterance a: audio file not found" in err
    assert main(["predict", "--corpus", "x", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "p")]) == 2
    assert "--corpus (and --split) or --data, not both" in capsys.readouterr().err


# Three readings of our own (espeak-ng), with targets we chose: what a user with their own recordings writes.
OWN = (("own1", "the ship is very big", '{"accuracy": 9, "fluency": 8, "prosodic": 8, "total": 9}',
        '{"word_transcript": "THE SHIP IS VERY BIG", "phoneme_transcript": "DH AH SH IH P IH Z V EH R IY B IH G"}'),
       ("own2", "my cut likes hat food", '{"accuracy": 4, "fluency": 6, "prosodic": 5, "total": 5}',
        '{"word_transcript": "MY CUT LIKES HAT FOOD", "phoneme_transcript": "M AY K AH T L AY K S HH AE T F UW D"}'),
       ("own3", "we ate fried rice", '{"accuracy": 7, "fluency": 10, "prosodic": 9, "total": 8}',
        '{"word_transcript": "WE ATE FRIED RICE", "phoneme_transcript": "W IY EY T F R AY D R AY S"}'))


@contextlib.contextmanager
def one_thread():
    """Hidden-64 ops are too small to split: on a busy 2-core machine one thread trains ~10x faster (demo.py)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_train_and_predict_on_examples_written_by_hand(espeak, tmp_path, caplog):
    from pronlm.cli import main
    from pronlm.config import load_config
    from pronlm.data.synthetic import Reading, synthesise
    from pronlm.model.train import train

    folder = tmp_path / "mine"
    lines = []
    for (utt_id, said, apa, mdd), voice in zip(OWN, ("en-us+m1", "en-us+f2", "en-us+m3")):
        reading = Reading(utt_id, "1", "train", said, said, voice, 50, 160)
        synthesise(espeak, reading, folder / "clips" / f"{utt_id}.wav")
        lines += [_line(utt_id, "apa", f"clips/{utt_id}.wav", target=apa),  # own prompts, paths relative, no manifest
                  _line(utt_id, "mdd", f"clips/{utt_id}.wav", target=mdd)]
    (folder / "examples.jsonl").write_text("\n".join(lines) + "\n")

    run = tmp_path / "run"
    cfg = load_config("tiny-cpu", dict(data=str(folder), corpus=str(tmp_path / "nowhere"), output_dir=str(run),
                                       max_steps=100, learning_rate=1e-2, per_device_train_batch_size=6,
                                       warmup_ratio=0.0, save_strategy="no", logging_steps=5))
    with caplog.at_level(logging.INFO, logger="pronlm.model.train"), one_thread():
        train(cfg)
    assert "6 examples of 3 utterances from" in caplog.text
    curve = [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    # Measured: 5.3 -> 0.25 at seeds 42 and 1-3. The tiny model's loss levels off there while its greedy
    # answers are already exact (6 of 6 at each of those seeds).
    assert curve[0] > 4.0 and curve[-1] < 0.3, curve

    out = tmp_path / "predictions.jsonl"
    argv = ["predict", "--base", "tiny", "--adapter", str(run), "--data", str(folder), "--out", str(out),
            "--max-new-tokens", "80"]
    with one_thread():
        assert main(argv) == 0
        written = out.read_text()
        assert main(argv) == 0 and out.read_text() == written  # resumable: nothing left to add
    records = {(r["id"], r["task"]): r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {(utt_id, task) for utt_id, *_ in OWN for task in ("apa", "mdd")}
    assert all(r["ok"] for r in records.values()), [r["raw"] for r in records.values()]
    memorised = []
    for utt_id, _, apa, mdd in OWN:
        memorised.append(records[utt_id, "apa"]["scores"] == json.loads(apa))
        rec, want = records[utt_id, "mdd"], json.loads(mdd)
        memorised.append((rec["word_transcript"], rec["phoneme_transcript"]) == tuple(want.values()))
    assert sum(memorised) >= 5, [r["raw"] for r in records.values()]
