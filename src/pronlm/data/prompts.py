"""Prompt templates, the paper's prompt layout, control tokens, and the examples of each utterance.

Layout (paper Fig. 3), Phi-4 chat format, no newlines between the parts:
`<|user|><|APA|><|audio_1|>{instructions}<|end|><|assistant|>` and the same with `<|MDD|>`.
The word task (`<|WRD|>`, ours, opt-in through the config's `tasks`) has the same layout; its
instructions carry the sentence's words (the template's `{text}`), so its answer lists exactly those
words and only their scores are free (`pronlm.evaluation.grammar.wrd_grammar`).
`prompt_layout: instructions-first` moves the audio after the instructions (`render_prompt`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pronlm.config import PROMPT_LAYOUTS, TASKS, ConfigError, load_template
from pronlm.data.records import Utterance
from pronlm.data.targets import AccentPolicy, apa_target, mdd_target, wrd_target
from pronlm.data.text import sentence_words

PAPER_TASKS = ("apa", "mdd")  # the paper's two, every recipe's default; `TASKS` (config): every task the code knows
CONTROL_TOKENS = {"apa": "<|APA|>", "mdd": "<|MDD|>", "wrd": "<|WRD|>"}  # ids in this order: WRD's comes last
TEXT_SLOT = "{text}"  # where a word-task template takes the sentence's words
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
    text: str | None = None  # the words the prompt gives (word task): its grammar forces them into the answer

    def as_dict(self) -> dict:
        out = asdict(self)
        if out["text"] is None:
            del out["text"]
        return out


def render_prompt(task: str, instructions: str, layout: str = "paper") -> str:
    """The user turn up to and including `<|assistant|>`; the answer follows directly.

    paper: Fig. 3. instructions-first: the clip is the only part two requests of a task do not share, so
    it goes last, and `<|user|>{control}{instructions}` is a prefix a cache (vLLM's) can reuse; the control
    token stays right after `<|user|>`, where the model learned to read the task first.
    """
    if layout not in PROMPT_LAYOUTS:
        raise ValueError(f"prompt layout {layout!r} is not one of {', '.join(PROMPT_LAYOUTS)}")
    middle = f"{AUDIO_PLACEHOLDER}{instructions}" if layout == "paper" else f"{instructions}{AUDIO_PLACEHOLDER}"
    return f"{USER}{CONTROL_TOKENS[task]}{middle}{END}{ASSISTANT}"


@dataclass(frozen=True)
class PromptSet:
    """The rendered prompt of each task, made once from the chosen templates (wrd's with its `{text}` slot)."""

    apa: str
    mdd: str
    wrd: str | None = None

    @classmethod
    def from_templates(cls, apa_template: str = "default", mdd_template: str = "default",
                       wrd_template: str = "default", layout: str = "paper") -> "PromptSet":
        wrd = load_template("wrd", wrd_template)
        if wrd.count(TEXT_SLOT) != 1:
            raise ConfigError(f"the word-task template {wrd_template!r} must hold {TEXT_SLOT} exactly once, "
                              "where the sentence's words go")
        return cls(render_prompt("apa", load_template("apa", apa_template), layout),
                   render_prompt("mdd", load_template("mdd", mdd_template), layout), render_prompt("wrd", wrd, layout))

    @classmethod
    def from_config(cls, cfg) -> "PromptSet":
        """The prompts a run's config names: its templates in its layout (train and predict alike)."""
        return cls.from_templates(cfg.apa_template, cfg.mdd_template, cfg.wrd_template, cfg.prompt_layout)

    def for_task(self, task: str, text: str | None = None) -> str:
        """The task's prompt; the word task's with `text` (the sentence's words) in its slot."""
        if task != "wrd":
            return getattr(self, task)
        if text is None:
            raise ValueError("the word task's prompt needs the sentence's words")
        return self.wrd.replace(TEXT_SLOT, text)

    def example(self, utt_id: str, task: str, audio: str | None, words: list[str] | None = None,
                target: str | None = None) -> Example:
        """One example of `task`; the word task's carries `words` in its prompt and as its `text`."""
        text = " ".join(words) if task == "wrd" else None
        return Example(utt_id, task, audio, self.for_task(task, text), target, text)


def build_examples(utt: Utterance, prompts: PromptSet, policy: AccentPolicy = AccentPolicy.UNK,
                   word_boundaries: bool = False, tasks: tuple[str, ...] = PAPER_TASKS) -> list[Example]:
    """The utterance's examples, one per task; targets are None for unlabelled audio.

    The word task scores the annotated words (the reference text's words for unlabelled audio).
    """
    words = None
    if "wrd" in tasks:
        words = [w.text for w in utt.words] if utt.words else sentence_words(utt.text)
    out = []
    for task in tasks:
        target = None
        if utt.labelled and task == "apa":
            target = apa_target(utt.scores)
        elif utt.labelled and task == "mdd":
            target = mdd_target(utt, policy, word_boundaries)
        elif utt.labelled:
            target = wrd_target(utt)
        out.append(prompts.example(utt.id, task, utt.audio, words, target))
    return out
