"""A run folder has one owner: `Run` finds the config, prompts, tiny base, checkpoints and dev speakers of a
run or of one of its checkpoints, and knows what a training run leaves behind."""

from __future__ import annotations

import json

import pytest

from pronlm.config import ConfigError, load_config
from pronlm.run import TINY_BASE, Run


def _checkpoint(run, step, epoch):
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"epoch": epoch, "global_step": step}))
    return folder


def test_a_checkpoint_and_its_run_each_describe_themselves(tmp_path):
    run = tmp_path / "run"
    cfg = load_config("tiny-cpu", dict(output_dir=str(run), apa_template="short", word_boundaries=True))
    Run(run).describe(cfg)
    ckpt = _checkpoint(run, 4, 1.0)
    assert Run.of(ckpt).folder == run  # no config.yaml of its own: the run's
    Run(ckpt).describe(cfg)
    assert Run.of(ckpt).folder == ckpt
    back = Run.of(ckpt).config()
    assert back.word_boundaries and back.apa_template == str(ckpt / "prompts" / "apa.txt")  # its copy, by content
    assert (ckpt / "prompts" / "apa.txt").read_text() == (run / "prompts" / "apa.txt").read_text()
    assert Run.of(tmp_path) is None
    with pytest.raises(ConfigError, match="no config.yaml"):
        Run(tmp_path).config()


def test_the_tiny_base_is_found_from_the_run_or_any_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / TINY_BASE).mkdir(parents=True)
    ckpt = _checkpoint(run, 2, 1.0)
    assert Run.tiny_base(ckpt) is None  # not saved yet: no config.json
    (run / TINY_BASE / "config.json").write_text("{}")
    assert Run.tiny_base(ckpt) == Run.tiny_base(run) == run / TINY_BASE
    assert Run.tiny_base(tmp_path / "elsewhere") is None


def test_checkpoints_by_step_only_once_saved(tmp_path):
    for step, epoch in ((10, 2.0), (9, 1.8), (5, 1.0)):
        _checkpoint(tmp_path, step, epoch)
    (tmp_path / "checkpoint-3").mkdir()  # killed before its state was written: not a checkpoint yet
    (tmp_path / "checkpoint-x").mkdir()
    assert [(c.folder.name, c.step, c.epoch) for c in Run(tmp_path).checkpoints()] == [
        ("checkpoint-5", 5, 1.0), ("checkpoint-9", 9, 1.8), ("checkpoint-10", 10, 2.0)]
    assert Run(tmp_path / "checkpoint-9").global_step() == 9 and Run(tmp_path).global_step() is None


def test_what_an_earlier_run_left_is_listed_and_cleared(tmp_path):
    _checkpoint(tmp_path, 2, 1.0)
    (tmp_path / "log.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    assert Run(tmp_path).is_training_output()
    assert Run(tmp_path).earlier_run() == ["checkpoint-2", "log.jsonl"]
    Run(tmp_path).clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and not Run(tmp_path).is_training_output()
