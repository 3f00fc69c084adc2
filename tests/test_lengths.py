"""Token counts with o200k offline, and the shipped SpeechOcean762 length distribution."""

from __future__ import annotations

from pathlib import Path

import pytest

from pronlm.data.lengths import (
    DISTRIBUTION,
    distribution_lengths,
    distribution_rows,
    format_distribution,
    o200k,
    prompt_tokens,
    shipped_distribution,
)
from pronlm.data.prompts import PAPER_TASKS, PromptSet

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
    rows = [("a", 16_000, 30), ("b", 32_000, 40)]
    examples = distribution_lengths(PromptSet.from_templates(), PAPER_TASKS, 3, rows)
    assert [(e.task, e.audio, e.answer) for e in examples] == [
        ("apa", 13, 29), ("mdd", 13, 32), ("apa", 25, 29), ("mdd", 25, 42), ("apa", 13, 29), ("mdd", 13, 32)]
    assert examples[1].total == 125 + 13 + 32
