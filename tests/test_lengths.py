"""Token counts with o200k offline, and the shipped SpeechOcean762 length distribution."""

from __future__ import annotations

from pathlib import Path

import pytest

from pronlm.data.lengths import (
    DISTRIBUTION,
    ExampleLength,
    distribution_lengths,
    distribution_rows,
    format_distribution,
    o200k,
    prompt_tokens,
    shipped_distribution,
    three_task_ratios,
    word_answer_per_word,
)
from pronlm.data.corpus import read_kaldi_dir
from pronlm.data.prompts import AUDIO_PLACEHOLDER, PAPER_TASKS, TASKS, PromptSet
from pronlm.data.text import sentence_words
from tests.readme import README

CLIPS = Path(__file__).resolve().parents[2] / "shared/data/speechocean762-audio"


def test_special_tokens_are_one_id_each_and_digits_are_single_tokens():
    counter = o200k()
    assert counter.enc.encode_ordinary("Hello world") == [13225, 2375]
    assert counter.count("<|user|><|APA|>Hello world<|end|><|assistant|>") == 6
    # SPEC §2b: `": 8` is `":`, ` `, `8`; "10" is one token (702)
    assert counter.enc.encode_ordinary('": 8') == [1243, 220, 23]
    assert counter.enc.encode_ordinary("10") == [702]


def test_default_prompts_in_tokens():
    counts = prompt_tokens(PromptSet.from_templates(), PAPER_TASKS)
    assert counts == {"apa": 413, "mdd": 125}  # the APA rubric: 409 tokens + <|user|><|APA|><|end|><|assistant|>


@pytest.mark.skipif(not CLIPS.is_dir(), reason="needs ../shared/data/speechocean762-audio")
def test_the_shipped_distribution_is_what_the_200_clips_give():
    rows = distribution_rows(CLIPS)
    assert len(rows) == 200
    assert format_distribution(rows) == Path(str(DISTRIBUTION)).read_text()
    assert shipped_distribution() == rows


def test_distribution_lengths_cycle_the_clips_and_add_the_end_tokens():
    rows = [("a", 16_000, 30, 5, 100), ("b", 32_000, 40, 7, 130)]
    examples = distribution_lengths(PromptSet.from_templates(), PAPER_TASKS, 3, rows)
    assert [(e.task, e.audio, e.answer) for e in examples] == [
        ("apa", 13, 29), ("mdd", 13, 32), ("apa", 25, 29), ("mdd", 25, 42), ("apa", 13, 29), ("mdd", 13, 32)]
    assert examples[1].total == 125 + 13 + 32
    words = distribution_lengths(PromptSet.from_templates(), ("wrd",), 2, rows)
    template = prompt_tokens(PromptSet.from_templates(), ("wrd",))["wrd"]
    assert [(e.prompt, e.answer) for e in words] == [(template + 5, 102), (template + 7, 132)]


@pytest.mark.skipif(not CLIPS.is_dir(), reason="needs ../shared/data/speechocean762-audio")
def test_the_word_task_counted_from_the_distribution_is_within_a_token_a_side_of_its_real_prompts():
    """The shipped rows keep the words' tokens apart from the template's; the prompts the word task really
    builds for the 200 sentences differ from that sum by at most one merged token where they meet."""
    from pronlm.data.corpus import read_kaldi_dir
    from pronlm.data.text import sentence_words

    prompts, counter = PromptSet.from_templates(), o200k()
    template = prompt_tokens(prompts, ("wrd",))["wrd"]
    texts = {u.id: u.text for split in ("train", "test") for u in read_kaldi_dir(CLIPS, split)}
    gaps = []
    for utt, _, _, words, answer in shipped_distribution():
        real = counter.count(prompts.for_task("wrd", " ".join(sentence_words(texts[utt]))).replace(AUDIO_PLACEHOLDER, ""))
        gaps.append(real - (template + words))
    assert len(gaps) == 200 and all(-2 <= g <= 2 for g in gaps), sorted(set(gaps))


def test_three_task_ratios_count_the_word_task_against_the_paper_tasks():
    lengths = [ExampleLength("apa", 10, 5, 5), ExampleLength("mdd", 4, 5, 11), ExampleLength("wrd", 6, 5, 30)]
    # tokens (20 + 20 + 41) / 40, answers (5 + 11 + 30) / 16, examples 3 / 2
    assert three_task_ratios(lengths) == {"tokens": 81 / 40, "answer": 46 / 16, "examples": 1.5}


def test_the_readmes_word_task_cost_is_the_shipped_distributions():
    """The README's ratios (benchmarks/bench_word_task.py prints them) are computed, not typed."""
    lengths = distribution_lengths(PromptSet.from_templates(), TASKS, len(shipped_distribution()))
    r = three_task_ratios(lengths)
    words = " ".join(README.read_text().split())
    expected = (f"a three-task epoch has {r['tokens']:.2f}× the language-model tokens of a two-task one, "
                f"{r['answer']:.1f}× the answer (loss) tokens, and {r['examples']:.1f}× the examples")
    assert expected in words, expected


def test_the_readmes_word_task_answer_per_word_is_the_200_clips():
    """"25.5 answer tokens per word": the shipped distribution's word-task answers over the words of the
    200 clips' sentences, as benchmarks/bench_word_task.py prints it."""
    if not CLIPS.is_dir():
        pytest.skip(f"the unlabelled SpeechOcean762 clips are not at {CLIPS}")
    n_words = {u.id: len(sentence_words(u.text)) for split in ("train", "test") for u in read_kaldi_dir(CLIPS, split)}
    rows = shipped_distribution()
    lengths = distribution_lengths(PromptSet.from_templates(), TASKS, len(rows))
    per_word = word_answer_per_word(lengths, sum(n_words[row[0]] for row in rows))
    assert 25 < per_word < 26  # 32,225 answer tokens over 1,266 words
    assert f"{per_word:.1f} answer tokens per word" in " ".join(README.read_text().split())
