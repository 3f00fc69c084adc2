"""The error family pronlm reports to a user, and reading the JSON/YAML files it is given.

Every error a user can cause derives from `PronlmError`: the command line prints its message on
one line and exits 2. A malformed file is a `FileFormatError` naming the path, line and column.
"""

from __future__ import annotations

import json
from pathlib import Path


class PronlmError(Exception):
    """Base class of every error pronlm reports to a user."""


class PredictionInterrupted(PronlmError):
    """Prediction stopped part way; `answered` holds the records finished before it (written, never lost)."""

    def __init__(self, message: str, answered: list[dict] | None = None):
        super().__init__(message)
        self.answered = answered or []


class BackendError(PredictionInterrupted):
    """The inference backend (a vLLM server) failed: not the fault of the request or clip that met it."""


class ModelError(PronlmError):
    """A base, adapter or strategy that cannot be loaded or trained as asked (`pronlm.model`)."""


class FileFormatError(PronlmError):
    """A file pronlm reads is not valid JSON / YAML; the message says where."""


def read_json(path: str | Path):
    """The parsed JSON of a file, or a `FileFormatError` with its path, line and column."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


def json_line(path: str | Path, lineno: int, line: str):
    """The parsed JSON of one line of a JSON-lines file, or a `FileFormatError` naming path:line:column."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path}:{lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


def read_yaml(path: str | Path):
    """The parsed YAML of a file, or a `FileFormatError` with its path, line and column."""
    import yaml

    path = Path(path)
    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        reason = getattr(exc, "problem", None) or str(exc)
        raise FileFormatError(f"{where}: not valid YAML: {reason}") from None


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot read {path}: {exc}") from None
