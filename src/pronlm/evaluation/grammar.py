"""The JSON schema of each task's answer: what constrained decoding lets the model write.

A minimal stand-in with the interface other modules rely on (`answer_schema`); the full
version (accent policy, word boundaries) replaces it.
"""

from __future__ import annotations

from pronlm.data.prompts import TASKS
from pronlm.data.records import ApaScores

MDD_KEYS = ("word_transcript", "phoneme_transcript")


def answer_schema(task: str, accent_policy: str = "unk", word_boundaries: bool = False) -> dict:
    """The answer object of `task`: APA's four integer scores 0..10, or MDD's two transcripts, keys in target order."""
    if task == "apa":
        properties = {a: {"type": "integer", "minimum": 0, "maximum": 10} for a in ApaScores.ASPECTS}
    elif task == "mdd":
        properties = {k: {"type": "string"} for k in MDD_KEYS}
    else:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
