"""One config for every command: `--recipe` (or the adapter's checkpoint), `key=value` overrides and the older
`--field-name VALUE` flags; the resolved config saved beside what each command writes."""

from __future__ import annotations

import json

import pytest
import yaml

from pronlm.cli import main, parse_args


def saved(path):
    from pronlm.config import flatten

    return flatten(yaml.safe_load(path.read_text()), str(path))


@pytest.fixture(scope="module")
def checkpoint(corpus_dir, tmp_path_factory):
    """A tiny run trained for 2 steps with the tiny-cpu recipe (short templates): its checkpoint-2."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", f"output_dir={run}", "limit=2",
                 "max_steps=2", "save_strategy=steps", "save_steps=2", "per_device_train_batch_size=2"]) == 0
    return run / "checkpoint-2"


@pytest.fixture(scope="module")
def predicted(checkpoint):
    """`predict --adapter CKPT --split test` into the checkpoint folder; (the file, the checkpoint's config before)."""
    own = (checkpoint / "config.yaml").read_bytes()
    out = checkpoint / "test.jsonl"  # inside the checkpoint folder, whose config.yaml must stay its own
    assert main(["predict", "--adapter", str(checkpoint), "--split", "test", "--out", str(out), "limit=2",
                 "--max-new-tokens", "8"]) == 0
    return out, own


def test_overrides_may_stand_anywhere_and_anything_else_is_refused(capsys):
    args = parse_args(["predict", "split=test", "--out", "p.jsonl", "limit=2", "--accent-policy", "canonical"])
    assert (args.overrides, args.out, args.field_accent_policy) == (["split=test", "limit=2"], "p.jsonl", "canonical")
    assert parse_args(["prepare", "--out", "d", "--word-boundaries"]).field_word_boundaries == "true"
    with pytest.raises(SystemExit):
        parse_args(["predict", "--out", "p", "--no-such-flag", "1"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["table", "--run", "r", "split=test"])  # table's config is the run's own


def test_prepare_takes_a_recipe_and_overrides_and_saves_its_config(corpus_dir, tmp_path):
    out = tmp_path / "data"
    assert main(["prepare", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", "split=test", "limit=2",
                 "--out", str(out), "accent_policy=canonical"]) == 0
    cfg = saved(out / "config.yaml")
    assert (cfg["corpus"], cfg["split"], cfg["limit"], cfg["accent_policy"], cfg["apa_template"]) == \
        (str(corpus_dir), "test", 2, "canonical", "short")
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["split"], stats["utterances"], stats["accent_policy"], stats["templates"]) == \
        ("test", 2, "canonical", {"apa": "short", "mdd": "short"})
    assert main(["prepare", "--corpus", str(corpus_dir), "--limit", "1", "--out", str(tmp_path / "train")]) == 0
    assert saved(tmp_path / "train" / "config.yaml")["split"] == "train"  # no split: the config's train_split


def test_prepare_names_a_flag_and_an_override_that_disagree(corpus_dir, tmp_path, capsys):
    assert main(["prepare", "--corpus", str(corpus_dir), "--split", "test", "split=train",
                 "--out", str(tmp_path / "d")]) == 2
    assert "--split test disagrees with split=train: give one of them" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_predict_with_an_adapter_alone_saves_its_config_beside_the_predictions(checkpoint, predicted, corpus_dir):
    out, own = predicted
    assert (checkpoint / "config.yaml").read_bytes() == own
    assert len(out.read_text().splitlines()) == 4
    cfg = saved(checkpoint / "test.config.yaml")
    assert (cfg["base"], cfg["corpus"], cfg["split"], cfg["limit"], cfg["strategy"]) == \
        ("tiny", str(corpus_dir), "test", 2, "new-lora")  # corpus and model from the checkpoint
    assert cfg["apa_template"] == str(checkpoint / "prompts" / "apa.txt")


def test_predict_refuses_overrides_that_change_the_trained_model(checkpoint, tmp_path, capsys):
    argv = ["predict", "--adapter", str(checkpoint), "--out", str(tmp_path / "p.jsonl")]
    assert main(argv + ["accent_policy=canonical"]) == 2
    assert "accent_policy=canonical disagrees with the checkpoint, which was trained with unk" in \
        capsys.readouterr().err
    assert main(argv + ["--recipe", "paper-lora"]) == 2
    assert "recipe paper-lora (base: microsoft/Phi-4-multimodal-instruct) disagrees with the checkpoint, which " \
           "was trained with tiny" in capsys.readouterr().err
    assert main(argv + ["--apa-template", "short", "apa_template=default"]) == 2
    assert "--apa-template short disagrees with apa_template=default" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


def test_predict_with_a_recipe_and_no_adapter(corpus_dir, tmp_path):
    out = tmp_path / "untrained.jsonl"
    assert main(["predict", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", "split=test", "limit=1",
                 "--out", str(out), "--max-new-tokens", "4", "--tasks", "mdd"]) == 0
    assert len(out.read_text().splitlines()) == 1
    cfg = saved(tmp_path / "untrained.config.yaml")
    assert (cfg["base"], cfg["mdd_template"], cfg["split"], cfg["limit"]) == ("tiny", "short", "test", 1)


def test_evaluate_starts_from_the_config_saved_beside_the_predictions(checkpoint, predicted, corpus_dir, tmp_path,
                                                                      capsys):
    predictions = predicted[0]
    assert main(["evaluate", "--predictions", str(predictions), "--out", str(tmp_path / "report")]) == 0
    cfg = saved(tmp_path / "report" / "config.yaml")
    assert (cfg["corpus"], cfg["split"], cfg["accent_policy"]) == (str(corpus_dir), "test", "unk")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert (report["split"], report["accent_policy"]) == ("test", "unk")

    # a recipe and an override; the old flags give the same
    assert main(["evaluate", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", "accent_policy=canonical",
                 "--predictions", str(predictions), "--out", str(tmp_path / "canonical")]) == 0
    assert saved(tmp_path / "canonical" / "config.yaml")["accent_policy"] == "canonical"
    assert main(["evaluate", "--corpus", str(corpus_dir), "--split", "test", "--accent-policy", "canonical",
                 "--predictions", str(predictions), "--out", str(tmp_path / "flags")]) == 0
    canonical = json.loads((tmp_path / "canonical" / "report.json").read_text())
    assert canonical["accent_policy"] == "canonical"
    assert json.loads((tmp_path / "flags" / "report.json").read_text()) == canonical

    assert main(["evaluate", "--predictions", str(predictions), "--out", str(checkpoint)]) == 2
    assert "holds a training run" in capsys.readouterr().err  # its config.yaml is the checkpoint's


def test_assess_takes_a_recipe_and_overrides(corpus_dir, capsys):
    wav = corpus_dir / "WAVE" / "SPEAKER0001" / "000010011.WAV"
    argv = ["assess", "--audio", str(wav), "--text", "We call it bear", "--format", "json", "--max-new-tokens", "4"]
    assert main(argv + ["--recipe", "tiny-cpu", "max_audio_seconds=1"]) == 2  # the clip lasts 2.6 s
    assert "over the limit of 1 s" in capsys.readouterr().err
    assert main(argv + ["--recipe", "tiny-cpu", "max_audio_seconds=120"]) == 2
    assert "max_audio_seconds is 120 s, but the model's audio encoder takes at most 40 s" in capsys.readouterr().err
    assert main(argv + ["--recipe", "tiny-cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "We call it bear"


def test_serve_takes_a_recipe_or_a_checkpoint_and_overrides(checkpoint, monkeypatch, capsys):
    import pronlm.app.serve

    calls = []
    monkeypatch.setattr(pronlm.app.serve, "serve", lambda cfg, adapter, **kwargs: calls.append(dict(cfg=cfg, **kwargs)))
    assert main(["serve", "--recipe", "tiny-cpu", "max_audio_seconds=20", "--port", "9"]) == 0
    cfg = calls[-1]["cfg"]
    assert (cfg.base, cfg.apa_template, cfg.max_audio_seconds, calls[-1]["port"]) == ("tiny", "short", 20, 9)
    assert main(["serve", "--adapter", str(checkpoint)]) == 0
    assert calls[-1]["cfg"].apa_template == str(checkpoint / "prompts" / "apa.txt")
    assert main(["serve", "--adapter", str(checkpoint), "--base", "someone/phi4"]) == 2
    assert "--base someone/phi4 disagrees with the checkpoint, which was trained with tiny" in capsys.readouterr().err


@pytest.fixture()
def nothing_heavy(monkeypatch, tmp_path):
    """No model, no corpus download, no hub: each would fail the test. The hub cache is an empty folder."""
    import datasets
    from huggingface_hub import HfApi, constants

    import pronlm.evaluation.predict as infer

    def never(*args, **kwargs):
        raise AssertionError("something heavy started before the bad value was refused")

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(infer, "load_model", never)
    monkeypatch.setattr(datasets, "load_dataset", never)
    monkeypatch.setattr(HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)


def one_line_error(argv, capsys) -> str:
    """The command's stderr, after checking it exited 2 with exactly one line."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, message", [
    # before: predict read the default corpus from the hub and ended in a traceback after ~30 s
    (["predict", "--adapter", "/nonexistent", "--out", "x.jsonl"],
     "adapter folder /nonexistent not found: give a training output_dir or one of its checkpoint-N folders"),
    (["predict", "--out", "x.jsonl"], "cannot fetch corpus hf:mispeech/speechocean762 from the Hugging Face hub, "
     "and it is not in the local cache (ConnectionError: [Errno -2] Name or service not known): give --corpus with "
     "a SpeechOcean762 folder (the official release) or --data with a folder of examples.jsonl"),
    (["evaluate", "--predictions", "nosuch.jsonl", "--out", "r"],
     "predictions file nosuch.jsonl not found: give the file `pronlm predict --out` wrote"),
])
def test_missing_local_inputs_are_one_line_at_once(argv, message, nothing_heavy, capsys):
    assert one_line_error(argv, capsys) == f"pronlm {argv[0]}: error: {message}"


def test_an_uncached_corpus_offline_is_one_line(nothing_heavy, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "corpus hf:mispeech/speechocean762 is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: give " \
           "--corpus" in one_line_error(["predict", "--out", "x.jsonl"], capsys)


@pytest.mark.parametrize("argv, message", [
    # before: tracebacks (batch size, new tokens), after the model loaded (--out a folder), a peft TypeError
    # (lora_r in a recipe file), or all but the last 3 utterances predicted (limit=-3)
    (["predict", "--batch-size", "0", "--out", "x.jsonl"], "argument --batch-size: 0 is below 1, the least it takes"),
    (["predict", "--batch-size", "two", "--out", "x.jsonl"], "argument --batch-size: 'two' is not a whole number"),
    (["predict", "--max-new-tokens", "0", "--out", "x.jsonl"], "max_new_tokens takes a whole number >= 1, not 0"),
    (["predict", "--corpus", "CORPUS", "--out", "."], "--out . is a folder: give the predictions file to write"),
    (["predict", "--corpus", "CORPUS", "--out", "x.jsonl", "limit=-3"],
     "limit takes a whole number >= 1, or null, not -3"),
    (["train", "--recipe", "bad.yaml"], "recipe bad.yaml: lora_r takes a whole number >= 1, not 'abc'"),
    (["train", "--recipe", "tiny-cpu", "lora_r=abc"], "lora_r takes a whole number >= 1, not 'abc'"),
    (["predict", "--out", "x.jsonl", "learning_rate=-1"], "learning_rate takes a number > 0, not -1.0"),
    (["serve", "--max-batch", "0"], "argument --max-batch: 0 is below 1, the least it takes"),
    (["demo", "--steps", "0"], "argument --steps: 0 is below 1, the least it takes"),  # before: trained 1 step
])
def test_every_value_is_checked_by_type_and_range_before_a_model_loads(argv, message, nothing_heavy, corpus_dir,
                                                                       capsys):
    from pathlib import Path

    Path("bad.yaml").write_text("model:\n  base: tiny\n  lora_r: abc\n")
    argv = [str(corpus_dir) if a == "CORPUS" else a for a in argv]
    assert message in one_line_error(argv, capsys)


def test_demo_refuses_zero_steps_before_anything_runs(tmp_path):
    from pronlm.app.demo import DemoError, demo

    with pytest.raises(DemoError, match="steps is the number of training steps, at least 1, not 0"):
        demo(tmp_path / "out", steps=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["prepare", "train", "predict", "evaluate", "assess", "serve"])
def test_help_lists_every_setting_with_its_meaning_and_default(command, capsys):
    """From the fields' metadata (`pronlm.config.setting`): before, the field flags were hidden from --help."""
    import dataclasses

    from pronlm.config import Config

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text and " ".join(f.metadata["help"].split()) in text, f.name
    assert "--lora-r VALUE rank of the new LoRA (new-lora only; speech-lora keeps the shipped r=320) " \
           "[a whole number >= 1; default: 64]" in text
    assert "--word-boundaries separate the MDD target's words with | (the paper: no separators) " \
           "[true or false; default: false]" in text
    assert "--limit VALUE the first N utterances only (smoke runs); null: all [a whole number >= 1, or null; " \
           "default: null]" in text


@pytest.mark.slow
def test_the_three_task_tiny_recipe_runs_end_to_end(corpus_dir, tmp_path, capsys):
    """prepare -> train -> predict -> evaluate -> table with tasks [apa, mdd, wrd]: the word task's examples
    are the annotation, its answers come back under the grammar with the text's words and expected
    scores, and report.md and table.md show the three granularities (phone scores from the MDD task)."""
    from pronlm.data.corpus import read_corpus
    from pronlm.data.targets import wrd_target

    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", "--recipe", "tiny-three", f"corpus={corpus_dir}", "limit=4", "--out", str(data)]) == 0
    lines = [json.loads(line) for line in (data / "examples.jsonl").read_text().splitlines()]
    assert [ln["task"] for ln in lines] == ["apa", "mdd", "wrd"] * 4
    utts = {u.id: u for u in read_corpus(str(corpus_dir), "train")}
    for line in lines[2::3]:
        assert line["target"] == wrd_target(utts[line["id"]]) and "<|WRD|>" in line["prompt"]
        assert line["text"] == " ".join(w.text for w in utts[line["id"]].words) and line["text"] in line["prompt"]
    assert main(["train", "--recipe", "tiny-three", f"data={data}", f"corpus={corpus_dir}", f"output_dir={run}",
                 "num_train_epochs=1", "per_device_train_batch_size=4", "eval_split=test"]) == 0
    assert saved(run / "config.yaml")["tasks"] == ["apa", "mdd", "wrd"] and (run / "prompts" / "wrd.txt").is_file()
    asked = tmp_path / "asked.jsonl"  # predict takes the tasks from the adapter's config
    assert main(["predict", "--adapter", str(run / "checkpoint-3"), f"corpus={corpus_dir}", "split=test", "limit=2",
                 "--max-new-tokens", "16", "--out", str(asked)]) == 0
    assert sorted(json.loads(line)["task"] for line in asked.read_text().splitlines()) == ["apa", "apa", "mdd", "mdd",
                                                                                           "wrd", "wrd"]
    preds = run / "checkpoint-3" / "test.jsonl"  # what train's table predicted for the epoch, every test utterance
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    test = {u.id: u for u in read_corpus(str(corpus_dir), "test")}
    words = [r for r in records if r["task"] == "wrd"]
    assert len(words) == 10 and len(records) == 30
    for r in words:  # the grammar wrote the text's words, in order, with three scores and expected scores each
        assert r["ok"], r["error"]
        assert [w["word"] for w in r["words"]] == [w.text for w in test[r["id"]].words]
        assert len(r["words_expected"]) == len(r["words"]) and all(
            0 <= e[a] <= 10 for e in r["words_expected"] for a in ("accuracy", "stress", "total"))
    assert main(["evaluate", "--predictions", str(preds), f"corpus={corpus_dir}", "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    g = report["granularities"]
    assert g["word"]["accuracy"]["n"] == sum(len(u.words) for u in test.values()) and g["utterance"]["total"]["n"] == 10
    assert g["phone"]["n"] == sum(len(w.canonical_phones) for u in test.values() for w in u.words)  # phone scores
    assert report["parse"]["wrd_failed"] == report["parse"]["wrd_missing"] == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Three granularities (GOPT's protocol)" in md and "Missing from these predictions" not in md
    capsys.readouterr()
    assert main(["table", "--run", str(run)]) == 0
    table = capsys.readouterr().out
    assert "## Three granularities (GOPT's protocol)" in table and "| checkpoint-3 (epoch 1) | " in table
    row = json.loads((run / "table.json").read_text())["rows"][0]
    assert row["granularities"]["word_accuracy"] == g["word"]["accuracy"]["pcc"]
