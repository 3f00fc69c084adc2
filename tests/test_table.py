"""The paper's Table 3 from one command: every checkpoint predicted and evaluated, resumable, with a
speaker-disjoint development split choosing the epoch. Fast tests use prediction files written here
(predict finds them complete and loads no model); the slow ones train the tiny model end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pronlm.cli import main
from pronlm.config import ConfigError, load_config
from pronlm.data.corpus import read_corpus
from pronlm.data.parse import parse_answer
from pronlm.data.records import ASPECTS
from pronlm.data.split import dev_speakers, pick_dev_speakers, save_dev_speakers
from pronlm.data.targets import heard_phones
from pronlm.evaluation import table as table_module
from pronlm.evaluation.evaluate import evaluate
from pronlm.evaluation.paper import PAPER_TABLE3
from pronlm.evaluation.predict import predict
from pronlm.evaluation.table import (
    COLUMNS,
    build_table,
    checkpoint_entries,
    choose_epoch,
    metrics_row,
    should_stop,
)
from pronlm.run import TINY_BASE, Run


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Hidden-64 ops are too small to split: on a busy 2-core machine two threads made these runs ~10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TRAIN_SPEAKERS = ["0001", "0005", "1362", "1372", "1435", "2799"]  # the real subset (../shared/data/README.md)
DEV_034 = ["0001", "2799"]  # dev_fraction 0.34, seed 42: round(0.34 x 6) = 2 speakers, 18 utterances


def test_dev_speakers_are_a_seeded_share_of_the_training_speakers():
    assert pick_dev_speakers(TRAIN_SPEAKERS, 0.34, 42) == DEV_034
    assert pick_dev_speakers(reversed(TRAIN_SPEAKERS * 2), 0.34, 42) == DEV_034  # order and repeats do not matter
    assert len(pick_dev_speakers(TRAIN_SPEAKERS, 0.1, 42)) == 1  # at least one speaker
    assert len(pick_dev_speakers(TRAIN_SPEAKERS, 0.8, 42)) == 5
    assert any(pick_dev_speakers(TRAIN_SPEAKERS, 0.34, s) != DEV_034 for s in range(5))
    with pytest.raises(ConfigError, match="none to train on"):
        pick_dev_speakers(TRAIN_SPEAKERS, 0.95, 42)


@pytest.mark.parametrize("overrides, message", [
    (dict(eval_split="dev"), "eval_split takes one of train, test, or null, not 'dev'"),
    (dict(eval_untrained=True), "set eval_split=test"),
    (dict(eval_split="test", save_strategy="no"), "save_strategy=epoch"),
    (dict(dev_fraction=0.1, save_strategy="no"), "save_strategy=epoch"),
    (dict(dev_fraction=1.0), "dev_fraction takes a number >= 0 and < 1, not 1.0"),
    (dict(dev_fraction=0.1, data="prepared"), "data folder"),
    (dict(early_stop_patience=2), "set dev_fraction=0.1"),
    (dict(early_stop_patience=2, dev_fraction=0.1, save_strategy="steps"), "set save_strategy=epoch"),
    (dict(early_stop_patience=0, dev_fraction=0.1), "early_stop_patience takes a whole number >= 1, or null, not 0"),
    (dict(early_stop_patience=1.5, dev_fraction=0.1), "early_stop_patience takes a whole number >= 1, or null"),
])
def test_evaluation_settings_are_checked_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-cpu", overrides)


def test_training_leaves_the_development_speakers_out(corpus_dir, tmp_path, tiny_tokenizer, train_utterances):
    from pronlm.data.prompts import PromptSet
    from pronlm.model.train import load_examples

    cfg = load_config("tiny-cpu", dict(corpus=str(corpus_dir), output_dir=str(tmp_path), dev_fraction=0.34))
    assert dev_speakers(cfg) == DEV_034
    speaker = {u.id: u.speaker for u in train_utterances}
    examples = load_examples(cfg, PromptSet.from_templates(cfg.apa_template, cfg.mdd_template), tiny_tokenizer)
    trained = {speaker[ex.id] for ex in examples.examples}
    assert trained == set(TRAIN_SPEAKERS) - set(DEV_034)
    limited = load_examples(load_config("tiny-cpu", dict(corpus=str(corpus_dir), dev_fraction=0.34, limit=3)),
                            PromptSet.from_templates("short", "short"), tiny_tokenizer)
    assert len(limited) == 6 and {speaker[ex.id] for ex in limited.examples} == {"0005"}  # limit counts after
    save_dev_speakers(cfg, tmp_path)
    assert json.loads((tmp_path / "dev_speakers.json").read_text()) == {
        "split": "train", "fraction": 0.34, "seed": 42, "speakers": DEV_034}


def test_a_resumed_run_keeps_its_development_split(corpus_dir, tmp_path):
    cfg = load_config("tiny-cpu", dict(corpus=str(corpus_dir), output_dir=str(tmp_path), dev_fraction=0.34))
    save_dev_speakers(cfg, tmp_path)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"epoch": 1.0}))
    save_dev_speakers(cfg, tmp_path)  # the same split: fine
    for other in (dict(dev_fraction=0.0), dict(dev_fraction=0.34, seed=1)):
        with pytest.raises(ConfigError, match="resume with the run's own dev_fraction"):
            save_dev_speakers(load_config("tiny-cpu", dict(corpus=str(corpus_dir), **other)), tmp_path)
    assert json.loads((tmp_path / "dev_speakers.json").read_text())["speakers"] == DEV_034


def test_checkpoints_in_step_order_with_the_epoch_they_end(tmp_path):
    for step, epoch in ((10, 2.0), (9, 1.8), (5, 1.0)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"epoch": epoch}))
    (tmp_path / "checkpoint-3").mkdir()  # killed before its state was written: not a checkpoint yet
    (tmp_path / "checkpoint-x").mkdir()
    assert [(t.name, t.epoch, t.step) for t in checkpoint_entries(tmp_path)] == [
        ("checkpoint-5", 1.0, 5), ("checkpoint-9", 1.8, 9), ("checkpoint-10", 2.0, 10)]


def _row(name, step, total, **values):
    return {"checkpoint": name, "epoch": step / 4, "step": step, **dict.fromkeys(COLUMNS), **values,
            "total_pcc": total}


def test_the_development_split_chooses_the_epoch_and_the_test_set_does_not():
    dev = [_row("checkpoint-4", 4, 0.2), _row("checkpoint-8", 8, 0.5), _row("checkpoint-12", 12, 0.5)]
    test = [_row("untrained", 0, 0.9), _row("checkpoint-4", 4, 0.7), _row("checkpoint-8", 8, 0.3),
            _row("checkpoint-12", 12, None)]
    chosen = choose_epoch(dev, test)
    # a tie goes to the earlier epoch
    assert chosen["selected"] == {"checkpoint": "checkpoint-8", "epoch": 2.0, "step": 8, "total_pcc": 0.5}
    assert chosen["honest"] is test[2]
    assert chosen["best_on_test"] is test[1]  # the untrained row is no epoch to choose
    nothing = choose_epoch([_row("checkpoint-4", 4, None)], test)
    assert nothing == {"selected": None, "honest": None, "best_on_test": test[1]}


def test_early_stopping_waits_patience_epochs_after_the_best():
    def rows(*totals):
        return [_row(f"checkpoint-{4 * i}", 4 * i, t) for i, t in enumerate(totals, 1)]

    assert not should_stop(rows(0.2), 1)  # the first score is the best so far
    assert not should_stop(rows(0.2, 0.5), 1)
    assert should_stop(rows(0.2, 0.5, 0.4), 1)
    assert should_stop(rows(0.2, 0.5, 0.5), 1)  # a tie is no improvement
    assert not should_stop(rows(0.2, 0.5, 0.4), 2)
    assert should_stop(rows(0.2, 0.5, 0.4, None), 2)  # an epoch without a total PCC does not improve either
    assert not should_stop(rows(0.2, 0.5, 0.4, 0.6), 2)
    assert not should_stop(rows(None, None, None), 1)  # no best yet: nothing to wait on


def _apa(utt, reverse: bool) -> str:
    s = utt.scores.as_dict()
    scores = {a: (10 - v if reverse else v) for a, v in s.items() if a in ("accuracy", "fluency", "prosodic", "total")}
    return json.dumps(scores) + "<|end|>"


def _write_predictions(path, utts, reverse: bool) -> None:
    """Exact scores (PCC 1) or 10 - score (PCC -1); the heard words and phones (WER 0, PER 0)."""
    lines = []
    for u in utts:
        mdd = json.dumps({"word_transcript": u.text, "phoneme_transcript": " ".join(heard_phones(u))}) + "<|end|>"
        for task, raw in (("apa", _apa(u, reverse)), ("mdd", mdd)):
            lines.append(json.dumps({"id": u.id, "task": task, "raw": raw, **parse_answer(task, raw)}))
    path.write_text("\n".join(lines) + "\n")


def _write_run(corpus_dir, run, dev_reversed: list[bool], **overrides):
    """A run with one checkpoint per epoch (4 steps each) whose dev PCC is -1 where reversed, else 1."""
    cfg = load_config("tiny-cpu", dict(corpus=str(corpus_dir), output_dir=str(run), dev_fraction=0.34, **overrides))
    run.mkdir()
    cfg.to_yaml(run / "config.yaml")
    save_dev_speakers(cfg, run)
    test = list(read_corpus(str(corpus_dir), "test"))
    dev = [u for u in read_corpus(str(corpus_dir), "train") if u.speaker in DEV_034]
    for epoch, reverse in enumerate(dev_reversed, 1):
        folder = run / f"checkpoint-{4 * epoch}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"epoch": float(epoch), "global_step": 4 * epoch}))
        _write_predictions(folder / "test.jsonl", test, reverse=not reverse)
        _write_predictions(folder / "dev.jsonl", dev, reverse=reverse)
    return cfg


@pytest.fixture()
def written_run(corpus_dir, tmp_path):
    """A run whose epoch 1 is right on test and wrong on dev, and epoch 2 the other way round."""
    _write_run(corpus_dir, tmp_path / "run", [True, False], eval_split="test")
    return tmp_path / "run"


def test_the_early_stopping_callback_stops_once_patience_runs_out(corpus_dir, tmp_path):
    from types import SimpleNamespace

    import torch
    from transformers import TrainerControl, TrainerState

    from pronlm.evaluation.table import DevJudge
    from pronlm.model.train import EarlyStopping

    run = tmp_path / "run"  # dev total PCC by epoch: -1, 1, 1 (a tie: no improvement)
    cfg = _write_run(corpus_dir, run, [True, False, False], early_stop_patience=1)
    args = SimpleNamespace(output_dir=str(run), device=torch.device("cpu"))  # the TrainingArguments it reads

    def decide(event, step, max_steps=20, callback=EarlyStopping(DevJudge(cfg))):
        control = TrainerControl()  # every prediction is written already: the judge needs no model
        getattr(callback, event)(args, TrainerState(global_step=step, max_steps=max_steps), control,
                                 model=torch.nn.Linear(1, 1), processing_class=None)
        return control.should_training_stop, json.loads((run / "dev_history.json").read_text())

    assert decide("on_train_begin", 0) == (False, {"patience": 1, "best": None, "stopped_early": False, "rows": []})
    stop, history = decide("on_save", 4)
    assert not stop and history["best"] == "checkpoint-4"
    assert [r["total_pcc"] for r in history["rows"]] == [pytest.approx(-1.0)]
    assert not decide("on_save", 8)[0]
    stop, history = decide("on_save", 12)
    assert stop and history["stopped_early"] and history["best"] == "checkpoint-8"
    assert [(r["checkpoint"], r["epoch"], r["n_apa"]) for r in history["rows"]] == [
        ("checkpoint-4", 1.0, 18), ("checkpoint-8", 2.0, 18), ("checkpoint-12", 3.0, 18)]
    assert [r["total_pcc"] for r in history["rows"]] == pytest.approx([-1.0, 1.0, 1.0])
    assert decide("on_train_begin", 12)[0]  # resumed from the checkpoint it stopped at: no further epoch
    assert decide("on_train_begin", 8) == (False, {**history, "stopped_early": False, "rows": history["rows"][:2]})
    assert decide("on_save", 12, max_steps=12) == (False, {**history, "stopped_early": False})  # the last anyway
    patient = load_config("tiny-cpu", dict(corpus=str(corpus_dir), output_dir=str(run), dev_fraction=0.34,
                                           early_stop_patience=2))
    assert not decide("on_save", 12, callback=EarlyStopping(DevJudge(patient)))[0]

    decide("on_save", 12)
    table = build_table(run)  # the table selects what the history chose
    assert table["dev"]["selected"]["checkpoint"] == "checkpoint-8" and table["dev"]["early_stop"] == history
    assert table["dev"]["rows"] == history["rows"]
    assert "Training stopped early after checkpoint-12 (epoch 3): the development total PCC had not improved " \
           "for 1 epoch(s)" in (run / "table.md").read_text()


def test_every_row_is_decoded_with_the_runs_own_inference_settings(corpus_dir, tmp_path, monkeypatch):
    """Before: the untrained row was decoded with the defaults (constrained, the unk grammar, no boundaries,
    a fresh tiny base) whatever the run said; now every row, untrained included, with the run's config."""
    from pronlm.data.prompts import PromptSet
    from pronlm.evaluation import predict as infer
    from pronlm.evaluation.backend import answer_record

    loaded = []

    class Recorder:  # stands in for the model: records what it was loaded with, answers nothing readable
        def __init__(self, cfg, adapter=None):
            loaded.append((cfg, adapter))
            self.prompts, self.max_audio_seconds = PromptSet.from_templates("short", "short"), 30.0

        def predict_examples(self, examples, audio, batch_size=8):
            return [answer_record(ex, "") for ex in examples]

    monkeypatch.setattr(infer.Predictor, "load", classmethod(lambda cls, *a, **k: Recorder(k.get("cfg", a[0]), a[1])))
    run = tmp_path / "run"
    settings = dict(constrained=False, accent_policy="canonical", word_boundaries=True)
    _write_run(corpus_dir, run, [True, False], eval_split="test", eval_untrained=True, **settings)
    (run / TINY_BASE).mkdir()
    (run / TINY_BASE / "config.json").write_text("{}")
    table = build_table(run)
    assert [r["checkpoint"] for r in table["rows"]] == ["untrained", "checkpoint-4", "checkpoint-8"]
    ((cfg, adapter),) = loaded  # only the untrained row had predictions to make
    assert adapter is None and cfg.base == str(run / TINY_BASE)  # the run's own random base
    assert {k: getattr(cfg, k) for k in settings} == settings
    for row in ("untrained", "checkpoint-4", "checkpoint-8"):
        saved = load_config(str(run / row / "test.config.yaml"))  # beside each row's predictions
        assert {k: getattr(saved, k) for k in settings} == settings, row
        assert (saved.apa_template, saved.split, saved.corpus) == ("short", "test", str(corpus_dir)), row


def test_table_marks_the_epoch_dev_selects_and_reports_its_test_row(written_run):
    table = build_table(written_run)
    rows = {r["checkpoint"]: r for r in table["rows"]}
    assert [r["checkpoint"] for r in table["rows"]] == ["checkpoint-4", "checkpoint-8"]
    assert rows["checkpoint-4"]["total_pcc"] == pytest.approx(1.0) and rows["checkpoint-4"]["per"] == 0.0
    assert rows["checkpoint-8"]["total_pcc"] == pytest.approx(-1.0) and rows["checkpoint-8"]["wer"] == 0.0
    dev = table["dev"]
    assert dev["speakers"] == DEV_034 and dev["n_utterances"] == 18  # only the dev speakers' utterances
    assert [r["total_pcc"] for r in dev["rows"]] == [pytest.approx(-1.0), pytest.approx(1.0)]
    assert dev["rows"][0]["n_apa"] == 18
    assert dev["selected"]["checkpoint"] == "checkpoint-8" and dev["selected"]["epoch"] == 2.0
    assert dev["honest"] == rows["checkpoint-8"]  # the selected epoch's test row: the honest result
    assert dev["best_on_test"] == rows["checkpoint-4"]
    assert json.loads((written_run / "table.json").read_text()) == table
    md = (written_run / "table.md").read_text()
    assert "| **this run** (checkpoint-8, selected on dev) | 2 | -1.000 | -1.000 | -1.000 | -1.000 | 0.000 |" in md
    assert "| **honest: selected on dev** | 2 | -1.000 |" in md
    assert "| best on test (optimistic) | 1 | 1.000 |" in md
    assert "| dev (checkpoint-8) | 2 | 1.000 |" in md
    assert "| paper LoRA | 3 | 0.656 | 0.727 | 0.711 | 0.675 | 0.140 | 0.114 | 0.724 | 0.728 | 0.721 |" in md


def test_building_again_redoes_only_what_is_missing(written_run, capsys):
    build_table(written_run)
    reports = sorted(written_run.glob("checkpoint-*/report-*/report.json"))
    assert len(reports) == 4
    before = {p: p.stat().st_mtime_ns for p in reports}
    shutil.rmtree(written_run / "checkpoint-8" / "report-dev")
    assert main(["table", "--run", str(written_run)]) == 0
    assert "| dev (checkpoint-8) | 2 | 1.000 |" in capsys.readouterr().out
    again = {p: p.stat().st_mtime_ns for p in reports}
    changed = [p for p in reports if again[p] != before[p]]
    assert changed == [written_run / "checkpoint-8" / "report-dev" / "report.json"]
    report = written_run / "checkpoint-4" / "report-test" / "report.json"
    later = report.stat().st_mtime_ns + 10**9  # predictions newer than their report (lines added by hand)
    os.utime(written_run / "checkpoint-4" / "test.jsonl", ns=(later, later))
    build_table(written_run)
    assert report.stat().st_mtime_ns > again[report]


def test_table_command_errors_name_the_fix(tmp_path, written_run, capsys):
    assert main(["table", "--run", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    for folder in written_run.glob("checkpoint-*"):
        shutil.rmtree(folder)
    assert main(["table", "--run", str(written_run)]) == 2
    assert "save_strategy=epoch" in capsys.readouterr().err


def _train(corpus_dir, out, *extra) -> int:
    # batch 2: two steps an epoch, so epoch 1's LoRA has moved past the warm-up step (an all-zero LoRA is refused)
    return main(["train", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", f"output_dir={out}", "limit=4",
                 "num_train_epochs=2", "per_device_train_batch_size=2", "save_strategy=epoch", "eval_split=test",
                 *extra])


@pytest.fixture(scope="module")
def tiny_run(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("table") / "run"
    assert _train(corpus_dir, out, "eval_untrained=true") == 0
    return out


@pytest.mark.slow
def test_each_epoch_row_equals_predict_and_evaluate_by_hand(tiny_run, corpus_dir, tmp_path):
    table = json.loads((tiny_run / "table.json").read_text())
    assert [(r["checkpoint"], r["epoch"]) for r in table["rows"]] == [
        ("untrained", 0), ("checkpoint-4", 1.0), ("checkpoint-8", 2.0)]
    for row in table["rows"]:
        name = row["checkpoint"]
        adapter = None if name == "untrained" else str(tiny_run / name)
        cfg = dataclasses.replace(Run(tiny_run).config(), split="test", limit=None)
        if adapter is None:  # the run's own random base, as its checkpoints'
            cfg = dataclasses.replace(cfg, base=str(tiny_run / TINY_BASE))
        predict(cfg, str(tmp_path / f"{name}.jsonl"), adapter)
        report = evaluate(str(tmp_path / f"{name}.jsonl"), str(corpus_dir), "test", str(tmp_path / name))
        assert {c: row[c] for c in COLUMNS} == metrics_row(report), name
        assert row["expected_pcc"] == {a: report["apa_expected"][a]["pcc"] for a in ASPECTS}, name
        assert row["n_apa"] == report["apa"]["total"]["n"] and row["n_mdd"] == report["mdd"]["n"] == 10
        ours = (tiny_run / name / "test.jsonl").read_text().splitlines()
        assert ours == (tmp_path / f"{name}.jsonl").read_text().splitlines()  # the same model answered
    first, second = ((tiny_run / c / "test.jsonl").read_text() for c in ("checkpoint-4", "checkpoint-8"))
    assert first != second  # so the equality above tells the epochs apart


@pytest.mark.slow
def test_the_table_loads_one_model_and_swaps_the_next_checkpoints_into_it(tiny_run, tmp_path, monkeypatch):
    """Rebuilt with its checkpoints' answers gone, the table loads a model with checkpoint-4 only, swaps
    checkpoint-8's adapter into it, and gives the rows it gave when trained (each checkpoint's own answers,
    by the test above)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for ckpt in ("checkpoint-4", "checkpoint-8"):
        (run / ckpt / "test.jsonl").unlink()
    loads, swaps = [], []
    load, swap = table_module.Predictor.load, table_module.swap_adapter
    monkeypatch.setattr(table_module.Predictor, "load",
                        lambda cfg, adapter=None, **kw: loads.append(Path(adapter).name) or load(cfg, adapter, **kw))
    monkeypatch.setattr(table_module, "swap_adapter", lambda model, folder: swaps.append(Path(folder).name)
                        or swap(model, folder))
    rebuilt = build_table(run)
    assert (loads, swaps) == (["checkpoint-4"], ["checkpoint-8"])
    trained = json.loads((tiny_run / "table.json").read_text())
    assert rebuilt["rows"] == trained["rows"]
    for ckpt in ("checkpoint-4", "checkpoint-8"):
        assert (run / ckpt / "test.jsonl").read_text() == (tiny_run / ckpt / "test.jsonl").read_text()


@pytest.mark.slow
def test_table_md_holds_the_papers_rows_and_ours(tiny_run):
    md = (tiny_run / "table.md").read_text()
    for strategy, epoch, *values in PAPER_TABLE3:
        assert f"| paper {strategy} | {epoch} | " + " | ".join(f"{v:.3f}" for v in values) + " |" in md
    table = json.loads((tiny_run / "table.json").read_text())
    for row, label in zip(table["rows"], ("**this run, no training** (untrained) | 0",
                                          "**this run** (checkpoint-4) | 1", "**this run** (checkpoint-8) | 2")):
        cells = " | ".join("–" if row[c] is None else f"{row[c]:.3f}" for c in COLUMNS)
        assert f"| {label} | {cells} |" in md
    assert "10 utterances of the test split, not the paper's 2,500" in md
    assert "## Expected scores (ours, not the paper's protocol)" in md
    for row in table["rows"]:  # constrained decoding: every answer has expected scores, each row its PCCs
        cells = " | ".join("–" if row["expected_pcc"][a] is None else f"{row['expected_pcc'][a]:.3f}" for a in ASPECTS)
        assert f"| {row['checkpoint']} | {row['epoch']:g} | {cells} |" in md


@pytest.mark.slow
def test_train_resume_adds_only_the_missing_predictions(tiny_run, corpus_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cut = run / "checkpoint-4" / "test.jsonl"
    kept = cut.read_text().splitlines()[:6]
    cut.write_text("\n".join(kept) + "\n")  # as if killed while predicting epoch 1
    untouched = {p: p.stat().st_mtime_ns for p in [*run.glob("checkpoint-8/**/*"), *run.glob("untrained/**/*")]}
    assert _train(corpus_dir, run, "eval_untrained=true", "--resume") == 0
    lines = cut.read_text().splitlines()
    assert lines[:6] == kept and len(lines) == 20
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    table = json.loads((run / "table.json").read_text())
    assert table["rows"][1]["n_mdd"] == 10


@pytest.mark.slow
def test_a_development_split_is_held_out_and_evaluated_every_epoch(corpus_dir, tmp_path):
    out = tmp_path / "run"
    assert _train(corpus_dir, out, "dev_fraction=0.34") == 0
    assert json.loads((out / "dev_speakers.json").read_text())["speakers"] == DEV_034
    dev_ids = {u.id for u in read_corpus(str(corpus_dir), "train") if u.speaker in DEV_034}
    for ckpt in ("checkpoint-4", "checkpoint-8"):
        predicted = {json.loads(line)["id"] for line in (out / ckpt / "dev.jsonl").read_text().splitlines()}
        assert predicted == dev_ids
    table = json.loads((out / "table.json").read_text())
    assert [r["checkpoint"] for r in table["dev"]["rows"]] == ["checkpoint-4", "checkpoint-8"]
    assert {k: table["dev"][k] for k in ("selected", "honest", "best_on_test")} == choose_epoch(
        table["dev"]["rows"], table["rows"])
    assert "## Choosing the epoch on a development split" in (out / "table.md").read_text()


DEV_SCRIPT = {1.0: 0.2, 2.0: 0.5, 3.0: 0.4, 4.0: 0.9, 5.0: 0.9}  # dev total PCC by epoch: epoch 3 does not improve


@pytest.fixture()
def scripted_dev(monkeypatch):
    """The tiny model's dev scores are constant (no PCC): real predictions and reports, scripted total PCC."""
    real = table_module.table_row
    monkeypatch.setattr(table_module, "table_row", lambda t, report: {**real(t, report),
                                                                      "total_pcc": DEV_SCRIPT[t.epoch]})


def _train_early(corpus_dir, out, *extra) -> int:
    return main(["train", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", f"output_dir={out}", "limit=4",
                 "num_train_epochs=5", "per_device_train_batch_size=2", "dev_fraction=0.34",
                 "early_stop_patience=1", *extra])


@pytest.mark.slow
def test_early_stopping_ends_training_when_dev_stops_improving(scripted_dev, corpus_dir, tmp_path):
    out = tmp_path / "run"
    assert _train_early(corpus_dir, out) == 0
    assert [t.name for t in checkpoint_entries(out)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]  # 3 of 5 epochs
    assert json.loads((out / "train_result.json").read_text())["global_step"] == 12
    history = json.loads((out / "dev_history.json").read_text())
    assert {k: history[k] for k in ("patience", "best", "stopped_early")} == {
        "patience": 1, "best": "checkpoint-8", "stopped_early": True}
    assert [(r["checkpoint"], r["epoch"], r["total_pcc"]) for r in history["rows"]] == [
        ("checkpoint-4", 1.0, 0.2), ("checkpoint-8", 2.0, 0.5), ("checkpoint-12", 3.0, 0.4)]
    for before, after in (("checkpoint-4", "checkpoint-8"), ("checkpoint-8", "checkpoint-12")):
        predicted = (out / before / "report-dev" / "report.json").stat().st_mtime_ns
        assert predicted < (out / after / "trainer_state.json").stat().st_mtime_ns  # evaluated while training
    assert len((out / "checkpoint-4" / "dev.jsonl").read_text().splitlines()) == 36  # 18 utterances, 2 tasks
    table = json.loads((out / "table.json").read_text())
    assert table["dev"]["rows"] == history["rows"] and table["dev"]["selected"]["checkpoint"] == "checkpoint-8"
    assert "Training stopped early after checkpoint-12 (epoch 3)" in (out / "table.md").read_text()


@pytest.mark.slow
def test_a_resumed_run_keeps_its_dev_history_and_its_stop(scripted_dev, corpus_dir, tmp_path, monkeypatch):
    from pronlm.model.checkpoints import Slim

    full, cut = tmp_path / "full", tmp_path / "cut"
    dropout = "lora_dropout=0.1"  # draws random numbers: predicting the dev split must not shift them
    with monkeypatch.context() as m:  # every checkpoint keeps its resume state, as checkpoint-8 had it when
        m.setattr(Slim, "on_save", lambda *args, **kwargs: None)  # a kill came before checkpoint-12
        assert _train_early(corpus_dir, full, dropout) == 0
    shutil.copytree(full, cut)
    assert _train_early(corpus_dir, full, dropout, "--resume") == 0  # it had stopped: nothing more to train
    assert [t.name for t in checkpoint_entries(full)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert json.loads((full / "train_result.json").read_text())["global_step"] == 12
    shutil.rmtree(cut / "checkpoint-12")  # killed before epoch 3's checkpoint: epochs 1-2 are the history
    assert _train_early(corpus_dir, cut, dropout, "--resume") == 0
    assert [t.name for t in checkpoint_entries(cut)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert json.loads((cut / "dev_history.json").read_text()) == json.loads((full / "dev_history.json").read_text())
    adapter = "checkpoint-12/adapter_model.safetensors"
    assert (cut / adapter).read_bytes() == (full / adapter).read_bytes()  # the same epoch 3 as without the kill


@pytest.mark.slow
def test_under_torchrun_process_0_decides_and_both_processes_stop(corpus_dir, tmp_path):
    import subprocess
    import sys

    launch = tmp_path / "launch.py"  # the scripted dev scores of `scripted_dev`, in each process
    launch.write_text("import sys\nfrom pronlm.evaluation import table\nreal = table.table_row\n"
                      f"table.table_row = lambda t, r: {{**real(t, r), 'total_pcc': {DEV_SCRIPT!r}[t.epoch]}}\n"
                      "from pronlm.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "ddp"  # limit=8: 16 examples, 2 processes x 2 a step, 4 steps an epoch as above
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launch),
           "train", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", f"output_dir={out}", "limit=8",
           "num_train_epochs=5", "per_device_train_batch_size=2", "dev_fraction=0.34", "early_stop_patience=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]  # process 1 would hang in epoch 4's all-reduce otherwise
    result = json.loads((out / "train_result.json").read_text())
    assert result["global_step"] == 12 and result["replica_digests"][0] == result["replica_digests"][1]
    assert [t.name for t in checkpoint_entries(out)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert json.loads((out / "dev_history.json").read_text())["best"] == "checkpoint-8"


def _models_alive(earlier: frozenset[int] = frozenset()) -> tuple[int, int]:
    """(Phi-4-multimodal networks alive, bytes of their distinct parameter storages), after a garbage collection;
    `earlier`: the ids of networks that other tests' fixtures keep alive in this process, not counted."""
    import gc

    from transformers import Phi4MultimodalForCausalLM

    gc.collect()
    nets = [o for o in gc.get_objects() if type(o) is Phi4MultimodalForCausalLM and id(o) not in earlier]
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for n in nets for p in n.parameters()}
    return len(nets), sum(storages.values())


@pytest.mark.slow
def test_evaluation_during_and_after_training_holds_one_model(corpus_dir, tmp_path, monkeypatch):
    """Issue 18: the dev split during training is predicted by the model being trained, and the table after
    training loads its checkpoints only once training's model, adapter and optimizer state are gone."""
    import gc

    from transformers import Phi4MultimodalForCausalLM

    from pronlm.evaluation.predict import Predictor

    alive = []
    earlier = frozenset(id(o) for o in gc.get_objects() if type(o) is Phi4MultimodalForCausalLM)

    def generate_scored(self, examples, audio):  # what is alive while answering; the answers do not matter
        alive.append(_models_alive(earlier))
        return [("", None)] * len(examples)

    monkeypatch.setattr(Predictor, "generate_scored", generate_scored)
    loads, load = [], Predictor.load.__func__
    monkeypatch.setattr(Predictor, "load", classmethod(lambda cls, cfg, adapter=None, **kw: loads.append(
        adapter and Path(adapter).name) or load(cls, cfg, adapter, **kw)))
    out = tmp_path / "run"
    assert main(["train", "--recipe", "tiny-cpu", f"corpus={corpus_dir}", f"output_dir={out}", "limit=2",
                 "num_train_epochs=2", "per_device_train_batch_size=2", "dev_fraction=0.34", "early_stop_patience=2",
                 "eval_split=test", "eval_untrained=true"]) == 0
    one = sum(p.numel() * p.element_size() for p in Phi4MultimodalForCausalLM.from_pretrained(out / "tiny-base")
              .parameters())
    # dev: 18 utterances x 2 checkpoints during training; test: 10 x (untrained + 2 checkpoints), 8 answers a batch
    assert len(alive) == 2 * 5 + 3 * 3
    assert {n for n, _ in alive} == {1}, alive  # before: 2 networks alive at every prediction
    assert max(b for _, b in alive) < 1.2 * one, (alive, one)  # one model's weights (plus its LoRA), not two
    # after training: the untrained base, then one model for both checkpoints (before: one load each)
    checkpoints = [c.folder.name for c in Run(out).checkpoints()]
    assert len(checkpoints) == 2 and loads == [None, checkpoints[0]], (loads, checkpoints)


@pytest.mark.slow
def test_a_checkpoint_swapped_in_is_the_checkpoint_loaded_alone_and_another_adapter_is_refused(tiny_run, tmp_path):
    """The table's one model (`OneModel`): checkpoint-8 swapped into the model loaded with checkpoint-4 holds
    every weight that loading checkpoint-8 alone gives; an adapter of another shape is refused, not half-loaded."""
    from safetensors.torch import load_file, save_file

    from pronlm.model.adapters import swap_adapter
    from pronlm.errors import ModelError
    from pronlm.model.load import load_model

    cfg = Run(tiny_run).config()
    swapped, _ = load_model(cfg, str(tiny_run / "checkpoint-4"))
    before = {k: v.clone() for k, v in swapped.state_dict().items()}
    swap_adapter(swapped, str(tiny_run / "checkpoint-8"))
    alone, _ = load_model(cfg, str(tiny_run / "checkpoint-8"))
    mine, theirs = swapped.state_dict(), alone.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert any(not torch.equal(before[k], mine[k]) for k in mine)  # the two checkpoints differ
    odd = tmp_path / "odd"
    shutil.copytree(tiny_run / "checkpoint-8", odd)
    weights = load_file(str(odd / "adapter_model.safetensors"))
    key = next(k for k in weights if "lora_A" in k)
    weights[key] = weights[key][:4].contiguous()  # another rank
    save_file(weights, str(odd / "adapter_model.safetensors"))
    with pytest.raises(ModelError, match="another adapter than the loaded one"):
        swap_adapter(swapped, str(odd))
