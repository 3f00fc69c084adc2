"""The library floors: pyproject.toml says them, `pronlm.versions` checks them when a command starts."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pronlm import cli, versions

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_floors_are_the_checked_ones():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    floors = {}
    for line in listed:
        req = Requirement(line)
        floors |= {req.name: s.version for s in req.specifier if s.operator == ">="}
    assert {name: floors.get(name) for name in versions.MINIMUM} == {n: f for n, (f, _) in versions.MINIMUM.items()}


def test_an_old_transformers_stops_a_command_in_one_line_naming_the_version(monkeypatch, capsys, tmp_path):
    real = versions.version
    monkeypatch.setattr(versions, "version", lambda name: "5.22.0" if name == "transformers" else real(name))
    assert cli.main(["prepare", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()  # stopped before the command ran
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "transformers 5.22.0 is older than pronlm needs (5.23: TrainingArguments(activation_checkpointing" in err
    assert "pip install 'transformers>=5.23'" in err


def test_the_installed_libraries_pass_and_a_missing_optional_one_is_no_error(monkeypatch):
    versions.check_versions()
    versions.check_versions({"no-such-package-pronlm": ("1.0", "nothing")})
    monkeypatch.setattr(versions, "version", lambda name: "2.13.0+cpu")
    versions.check_versions({"torch": ("2.6", "x")})  # a local version label still compares
    with pytest.raises(versions.VersionError, match=r"^torch 2.13.0\+cpu is older than pronlm needs \(2.14"):
        versions.check_versions({"torch": ("2.14", "x")})
