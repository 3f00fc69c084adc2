"""Example lengths in Phi-4-multimodal tokens, counted offline: prompt, audio and answer per task.

Phi-4-multimodal's tokenizer is o200k (the vocabulary the `bpe-openai` package ships) plus its
`<|...|>` special tokens, one id each; the prompt is split at them as the tokenizer splits at its
added tokens. Audio tokens come from clip lengths (one per 80 ms, SPEC §2). When the corpus is not
on this machine, SpeechOcean762's length distribution stands in: `speechocean762_lengths.tsv`, computed
by `distribution_rows` from the 200 clips of ../shared/data/speechocean762-audio (every 25th utterance
of each split; a test recomputes it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import soundfile

from pronlm.data.corpus import read_kaldi_dir
from pronlm.data.prompts import AUDIO_PLACEHOLDER, PAPER_TASKS, PromptSet, build_examples
from pronlm.data.records import WORD_ASPECTS, ApaScores
from pronlm.data.targets import AccentPolicy, apa_target, strip_stress
from pronlm.data.text import sentence_words

SPECIAL = re.compile(r"<\|[^|<>\s]+\|>")  # <|user|>, <|APA|>, <|end|>: one id each in Phi-4's tokenizer
END_TOKENS = 2  # <|end|><|endoftext|> after every answer (model.collate)
DISTRIBUTION = resources.files("pronlm") / "data" / "speechocean762_lengths.tsv"
SPEECHOCEAN762_UTTERANCES = {"train": 2500, "test": 2500}  # the corpus's published split sizes
TYPICAL_SCORES = ApaScores(accuracy=8, fluency=8, prosodic=8, total=8)  # every score 0-10 is one o200k token
TYPICAL_WORD_SCORE = 8


def n_audio_tokens(n_samples: int) -> int:
    """Audio embeddings for a 16 kHz clip: 25 ms window, 10 ms hop, 8x compression (SPEC §2)."""
    frames = (n_samples - 400) // 160 + 1
    return -(-frames // 8)


class O200k:
    """Counts text as Phi-4-multimodal's tokenizer splits it: special tokens one id each, the rest o200k."""

    def __init__(self):
        import bpe_openai  # ships o200k offline: nothing is downloaded

        self.enc = bpe_openai.get_encoding("o200k_base")

    def count(self, text: str) -> int:
        n, start = 0, 0
        for m in SPECIAL.finditer(text):
            n += len(self.enc.encode_ordinary(text[start:m.start()])) + 1
            start = m.end()
        return n + len(self.enc.encode_ordinary(text[start:]))


@lru_cache(maxsize=1)
def o200k() -> O200k:
    return O200k()


@dataclass(frozen=True)
class ExampleLength:
    """One example's tokens: prompt text (control token and specials included), audio, answer (+ end tokens)."""

    task: str
    prompt: int
    audio: int
    answer: int

    @property
    def total(self) -> int:
        return self.prompt + self.audio + self.answer


def prompt_tokens(prompts: PromptSet, tasks, counter: O200k | None = None) -> dict[str, int]:
    """Each task's prompt in tokens, the audio placeholder excluded (it becomes the audio tokens)."""
    counter = counter or o200k()
    return {t: counter.count(prompts.for_task(t, "" if t == "wrd" else None).replace(AUDIO_PLACEHOLDER, ""))
            for t in tasks}


def corpus_lengths(root: str | Path, split: str, prompts: PromptSet, tasks, policy: AccentPolicy = AccentPolicy.UNK,
                   word_boundaries: bool = False, limit: int | None = None) -> list[ExampleLength]:
    """Every example of a local, labelled corpus split (clip lengths read from the WAV headers)."""
    counter = o200k()
    prompt = prompt_tokens(prompts, tasks, counter)
    out = []
    for utt in list(read_kaldi_dir(Path(root), split, []))[:limit]:
        if not utt.labelled or utt.audio is None:
            continue
        n_audio = n_audio_tokens(soundfile.info(utt.audio).frames)
        for ex in build_examples(utt, prompts, policy, word_boundaries, tasks):
            # the word task's prompt holds the sentence's words: counted whole, example by example
            text = counter.count(ex.prompt.replace(AUDIO_PLACEHOLDER, "")) if ex.task == "wrd" else prompt[ex.task]
            out.append(ExampleLength(ex.task, text, n_audio, counter.count(ex.target) + END_TOKENS))
    return out


def word_answer(words: list[str]) -> str:
    """The word task's answer for these words at a typical score: the length of any answer for them
    (`targets.wrd_target`'s layout; every score 0-10 is one o200k token)."""
    return json.dumps({"words": [{"word": w, **dict.fromkeys(WORD_ASPECTS, TYPICAL_WORD_SCORE)} for w in words]})


def distribution_rows(root: str | Path) -> list[tuple[str, int, int, int, int]]:
    """(utterance id, samples, MDD answer tokens, words tokens, word-task answer tokens) of every clip of an
    unlabelled SpeechOcean762 folder.

    The MDD answer is the target of a reading without errors (the canonical phones of
    `resource/text-phone`, stress and position marks removed): heard phones differ in a few phones only.
    The words are the sentence's, as the word task's prompt gives them; its answer is `word_answer`'s.
    """
    root = Path(root)
    phones: dict[str, list[str]] = {}
    for line in (root / "resource" / "text-phone").read_text().splitlines():
        key, *marks = line.split()
        phones.setdefault(key.split(".")[0], []).extend(strip_stress(m.split("_")[0]) for m in marks)
    counter, rows = o200k(), []
    for split in ("train", "test"):
        for utt in read_kaldi_dir(root, split):
            target = json.dumps({"word_transcript": utt.text, "phoneme_transcript": " ".join(phones[utt.id])})
            words = sentence_words(utt.text)
            rows.append((utt.id, soundfile.info(utt.audio).frames, counter.count(target),
                         counter.count(" ".join(words)), counter.count(word_answer(words))))
    return rows


def format_distribution(rows: list[tuple[str, int, int, int, int]]) -> str:
    header = ("# SpeechOcean762 clip lengths: every 25th utterance of each split (../shared/data/speechocean762-audio),\n"
              "# samples at 16 kHz and the o200k tokens of an error-free MDD answer, of the sentence's words and of\n"
              "# the word task's answer; pronlm.data.lengths.distribution_rows\n"
              "utt\tsamples\tmdd_answer_tokens\twords_tokens\twrd_answer_tokens\n")
    return header + "".join("\t".join(map(str, row)) + "\n" for row in rows)


def shipped_distribution() -> list[tuple[str, int, int, int, int]]:
    lines = [ln for ln in DISTRIBUTION.read_text().splitlines() if ln and not ln.startswith("#")][1:]
    return [(u, *map(int, rest)) for u, *rest in (ln.split("\t") for ln in lines)]


def distribution_lengths(prompts: PromptSet, tasks, n_utterances: int, rows=None) -> list[ExampleLength]:
    """`n_utterances` utterances drawn from the shipped distribution in turn (clip i % 200), every task each.

    The word task's prompt is its template's tokens plus the words' own (where the words meet the
    template, o200k could merge a token: at most one per side).
    """
    rows = rows or shipped_distribution()
    counter = o200k()
    prompt = prompt_tokens(prompts, tasks, counter)
    apa = counter.count(apa_target(TYPICAL_SCORES))
    out = []
    for i in range(n_utterances):
        _, samples, mdd, words, wrd = rows[i % len(rows)]
        parts = {"apa": (prompt.get("apa"), apa), "mdd": (prompt.get("mdd"), mdd),
                 "wrd": (prompt.get("wrd", 0) + words, wrd)}
        for task in tasks:
            text, answer = parts[task]
            out.append(ExampleLength(task, text, n_audio_tokens(samples), answer + END_TOKENS))
    return out


def three_task_ratios(lengths: list[ExampleLength]) -> dict[str, float]:
    """A three-task epoch against the paper's two tasks on the same utterances: language-model tokens,
    answer (loss) tokens and examples (each example is one audio-encoder pass)."""
    two = [x for x in lengths if x.task in PAPER_TASKS]
    return {"tokens": sum(x.total for x in lengths) / sum(x.total for x in two),
            "answer": sum(x.answer for x in lengths) / sum(x.answer for x in two),
            "examples": len(lengths) / len(two)}


def word_answer_per_word(lengths: list[ExampleLength], n_words: int) -> float:
    """The word task's answer tokens (end tokens included) per word of the `n_words` the examples score."""
    return sum(x.answer for x in lengths if x.task == "wrd") / n_words
