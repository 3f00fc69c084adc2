"""The interface both predictors share: `Predictor` (the model in this process, `pronlm.evaluation.predict`) and
`VllmPredictor` (a vLLM server, `pronlm.evaluation.vllm_client`), and the one record schema they answer with.

`predict`, `assess` and `serve` ask a `Backend` and never which one it is (`predict.load_predictor` picks it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pronlm.data.audio import SAMPLE_RATE
from pronlm.data.parse import parse_answer
from pronlm.data.prompts import PAPER_TASKS, Example, PromptSet
from pronlm.data.records import AudioError
from pronlm.errors import PronlmError
from pronlm.evaluation.grammar import score_fields


class Backend(ABC):
    """Answers examples with records; each backend has `prompts` (the run's) and `max_audio_seconds` (its limit)."""

    prompts: PromptSet
    max_audio_seconds: float

    @abstractmethod
    def predict_examples(self, examples: list[Example], audio: list[np.ndarray], batch_size: int = 8) -> list[dict]:
        """One record (`answer_record`) per example, in order, each asked with its own prompt."""

    tasks: tuple[str, ...] = PAPER_TASKS  # what the model was trained to answer: assess and serve ask these

    def predict(self, items: list[tuple[str, np.ndarray]], tasks=PAPER_TASKS, batch_size: int = 8,
                words: dict[str, list[str]] | None = None) -> list[dict]:
        """One record per (item, task), in order; items are (id, 16 kHz float32 mono samples).

        `words`: each item's words (id -> the text's words), which the word task scores.
        Raises `AudioError` naming the first item longer than `max_audio_seconds`, before anything is asked.
        """
        examples, audio = task_examples(items, tasks, self.prompts, self.max_audio_seconds, words)
        return self.predict_examples(examples, audio, batch_size)


def answer_record(example: Example, raw: str, dists: dict | None = None) -> dict:
    """The one prediction schema: id, task, the raw answer and what `parse_answer` makes of it; an APA
    record also has, from the score distributions `dists`, `scores_expected`, `scores_sd` and
    `scores_interval` (`pronlm.evaluation.grammar.score_fields`; null when unknown: a failed answer, a
    backend that gives no logits), beside the greedy integers of `scores`."""
    record = {"id": example.id, "task": example.task, "raw": raw, **parse_answer(example.task, raw)}
    if example.task == "apa":
        record |= score_fields(dists if record["ok"] else None)
    if example.task == "wrd":  # `dists` is the expected word scores here (`expected_word_scores`)
        record["words_expected"] = dists if record["ok"] and len(dists or ()) == len(record["words"]) else None
    return record


def task_examples(items: list[tuple[str, np.ndarray]], tasks, prompts: PromptSet, max_seconds: float,
                  words: dict[str, list[str]] | None = None) -> tuple[list[Example], list[np.ndarray]]:
    """The examples of every (item, task) pair, in order, and their clips; the word task's with the
    item's `words` (id -> words) in its prompt.

    Raises `AudioError` naming the first item longer than `max_seconds`, before anything is asked.
    """
    if "wrd" in tasks and any(utt_id not in (words or {}) for utt_id, _ in items):
        raise PronlmError("the word task scores the words of each recording's text: give them (words=)")
    for utt_id, samples in items:
        if len(samples) > max_seconds * SAMPLE_RATE:
            raise AudioError(utt_id, f"audio lasts {len(samples) / SAMPLE_RATE:.2f} s, over the limit of "
                                     f"{max_seconds:g} s")
    jobs = [(utt_id, samples, task) for utt_id, samples in items for task in tasks]
    return [prompts.example(i, t, None, (words or {}).get(i)) for i, _, t in jobs], [s for _, s, _ in jobs]
