"""Malformed files: every reader names the path, line and column, and nothing is written."""

from __future__ import annotations

import shutil

import pytest

from pronlm.cli import main
from pronlm.config import load_config
from pronlm.errors import FileFormatError, PronlmError, read_json, read_yaml


def test_bad_json_and_yaml_name_path_line_and_column(tmp_path):
    bad = tmp_path / "scores.json"
    bad.write_text('{\n  "000010011": {"text": "WE CALL IT BEAR",\n  "accuracy": 8,,\n}\n')
    with pytest.raises(FileFormatError, match=r"scores\.json:3:17: not valid JSON: Expecting property name"):
        read_json(bad)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: tiny\nlearning_rate: [1e-3\nseed: 1\n")
    with pytest.raises(FileFormatError, match=r"r\.yaml:3:5: not valid YAML"):
        read_yaml(recipe)
    with pytest.raises(FileFormatError, match=r"cannot read .*nowhere\.json"):
        read_json(tmp_path / "nowhere.json")
    assert issubclass(FileFormatError, PronlmError)


def test_a_recipe_that_is_not_a_mapping_is_refused(tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- base: tiny\n")
    with pytest.raises(PronlmError, match="not a mapping"):
        load_config(str(recipe))


def test_prepare_train_and_evaluate_report_a_broken_scores_json_and_write_nothing(corpus_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    scores = corpus / "resource" / "scores.json"
    scores.write_text(scores.read_text()[:500])  # cut mid-file
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"id": "000030145", "task": "apa", "raw": ""}\n')
    commands = {
        "prepare": ["prepare", "--corpus", str(corpus), "--split", "train", "--out", str(tmp_path / "prep")],
        "train": ["train", "--recipe", "tiny-cpu", f"corpus={corpus}", f"output_dir={tmp_path / 'run'}",
                  "max_steps=1"],
        "evaluate": ["evaluate", "--predictions", str(predictions), "--corpus", str(corpus), "--split", "test",
                     "--out", str(tmp_path / "report")],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert f"{scores}:" in err and "not valid JSON" in err, (name, err)
    assert not (tmp_path / "prep" / "examples.jsonl").exists()
    assert not list((tmp_path / "run").glob("checkpoint-*")) and not (tmp_path / "run" / "log.jsonl").exists()
    assert not (tmp_path / "report").exists()
