"""Prompt templates, the paper's prompt layout, control tokens, and the two examples per utterance.

Layout (paper Fig. 3), Phi-4 chat format, no newlines between the parts:
`<|user|><|APA|><|audio_1|>{instructions}<|end|><|assistant|>` and the same with `<|MDD|>`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pronlm.config import load_template
from pronlm.data.records import Utterance
from pronlm.data.targets import AccentPolicy, apa_target, mdd_target

TASKS = ("apa", "mdd")
CONTROL_TOKENS = {"apa": "<|APA|>", "mdd": "<|MDD|>"}
AUDIO_PLACEHOLDER = "<|audio_1|>"
USER, ASSISTANT, END, EOT = "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"


@dataclass(frozen=True)
class Example:
    """One training / inference example; the line format of examples.jsonl."""

    id: str
    task: str
    audio: str | None
    prompt: str
    target: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def render_prompt(task: str, instructions: str) -> str:
    """The user turn up to and including `<|assistant|>`; the answer follows directly."""
    return f"{USER}{CONTROL_TOKENS[task]}{AUDIO_PLACEHOLDER}{instructions}{END}{ASSISTANT}"


@dataclass(frozen=True)
class PromptSet:
    """The rendered prompt of each task, made once from the chosen templates."""

    apa: str
    mdd: str

    @classmethod
    def from_templates(cls, apa_template: str = "default", mdd_template: str = "default") -> "PromptSet":
        return cls(render_prompt("apa", load_template("apa", apa_template)),
                   render_prompt("mdd", load_template("mdd", mdd_template)))

    def for_task(self, task: str) -> str:
        return getattr(self, task)


def build_examples(utt: Utterance, prompts: PromptSet, policy: AccentPolicy = AccentPolicy.UNK,
                   word_boundaries: bool = False, tasks: tuple[str, ...] = TASKS) -> list[Example]:
    """The utterance's examples, one per task; targets are None for unlabelled audio."""
    out = []
    for task in tasks:
        target = None
        if utt.labelled:
            target = apa_target(utt.scores) if task == "apa" else mdd_target(utt, policy, word_boundaries)
        out.append(Example(utt.id, task, utt.audio, prompts.for_task(task), target))
    return out
