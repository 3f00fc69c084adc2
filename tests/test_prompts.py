"""Prompt layout (paper Fig. 3), template files, and the <|APA|> / <|MDD|> control tokens."""

from __future__ import annotations

import json
import re

import pytest

from pronlm.config import Config, load_template
from pronlm.data.prompts import PromptSet, build_examples, render_prompt
from pronlm.errors import PronlmError
from pronlm.model.adapters import add_control_tokens

# SpeechOcean762's rubric (SPEC §1): each aspect's bands, and a word from each band's description.
BANDS = {
    "Accuracy": [("9-10", "excellent"), ("7-8", "good"), ("5-6", "understandable"), ("3-4", "poor"),
                 ("0-2", "one or two words")],
    "Fluency": [("8-10", "fluent"), ("6-7", "generally fluent"), ("4-5", "disfluent"), ("0-3", "very disfluent")],
    "Prosodic": [("9-10", "correct intonation"), ("7-8", "nearly correct"), ("5-6", "unstable speed"),
                 ("3-4", "too fast or too slow"), ("0-2", "cannot read")],
    "Total": [("9-10", "native-like"), ("7-8", "good"), ("5-6", "fair"), ("3-4", "poor"), ("0-2", "incomprehensible")],
}


def test_layout_exact():
    assert render_prompt("apa", "Rate it.") == "<|user|><|APA|><|audio_1|>Rate it.<|end|><|assistant|>"
    assert render_prompt("mdd", "Say it.") == "<|user|><|MDD|><|audio_1|>Say it.<|end|><|assistant|>"
    prompts = PromptSet.from_templates()
    assert prompts.apa == "<|user|><|APA|><|audio_1|>" + load_template("apa") + "<|end|><|assistant|>"
    assert prompts.mdd == "<|user|><|MDD|><|audio_1|>" + load_template("mdd") + "<|end|><|assistant|>"
    assert not load_template("apa")[0].isspace() and not load_template("apa")[-1].isspace()


def test_instructions_first_puts_the_audio_after_the_instructions():
    assert render_prompt("apa", "Rate it.", "instructions-first") == \
        "<|user|><|APA|>Rate it.<|audio_1|><|end|><|assistant|>"
    assert render_prompt("mdd", "Say it.", "instructions-first") == \
        "<|user|><|MDD|>Say it.<|audio_1|><|end|><|assistant|>"
    cfg = Config(apa_template="short", mdd_template="short", prompt_layout="instructions-first")
    prompts = PromptSet.from_config(cfg)
    assert prompts.apa == "<|user|><|APA|>" + load_template("apa", "short") + "<|audio_1|><|end|><|assistant|>"
    assert PromptSet.from_config(Config()) == PromptSet.from_templates()  # paper: the default
    with pytest.raises(ValueError, match="prompt layout 'audio-last' is not one of paper, instructions-first"):
        render_prompt("apa", "Rate it.", "audio-last")


def test_apa_template_has_every_band():
    paragraphs = load_template("apa").split("\n\n")
    for aspect, bands in BANDS.items():
        (para,) = [p for p in paragraphs if p.startswith(f"{aspect} (0-10)")]
        lines = re.findall(r"^- (\d+-\d+): (.*)$", para, re.M)
        assert [band for band, _ in lines] == [band for band, _ in bands], aspect
        for (_, text), (band, word) in zip(lines, bands):
            assert word in text, (aspect, band)


def test_templates_show_the_answer_format():
    apa = load_template("apa")
    example = json.loads(apa[apa.index("{"):apa.rindex("}") + 1])
    assert list(example) == ["accuracy", "fluency", "prosodic", "total"]
    mdd = load_template("mdd")
    example = json.loads(mdd[mdd.index("{"):mdd.rindex("}") + 1])
    assert list(example) == ["word_transcript", "phoneme_transcript"]
    assert not re.search(r"\d", example["phoneme_transcript"])  # no stress digits
    assert "<unk>" in mdd and "ARPAbet" in mdd


def test_template_selection(tmp_path):
    assert load_template("apa", "short") != load_template("apa", "default")
    assert len(load_template("mdd", "short")) < len(load_template("mdd", "default"))
    own = tmp_path / "mine.txt"
    own.write_text("Score this.\n")
    prompts = PromptSet.from_templates(apa_template=str(own), mdd_template="short")
    assert prompts.apa == "<|user|><|APA|><|audio_1|>Score this.<|end|><|assistant|>"
    assert prompts.mdd == render_prompt("mdd", load_template("mdd", "short"))


def test_bad_template_name():
    with pytest.raises(PronlmError, match=r"no apa prompt template 'fancy': give a \.txt path or one of .*apa_default"):
        PromptSet.from_templates(apa_template="fancy")
    with pytest.raises(PronlmError, match="unknown task 'asr': expected one of apa, mdd, wrd"):
        load_template("asr")


def test_two_examples_per_utterance(train_utterances):
    utt = next(u for u in train_utterances if u.id == "000010113")
    prompts = PromptSet.from_templates()
    apa, mdd = build_examples(utt, prompts)
    assert (apa.id, apa.task, apa.audio, apa.prompt) == (utt.id, "apa", utt.audio, prompts.apa)
    assert (mdd.id, mdd.task, mdd.audio, mdd.prompt) == (utt.id, "mdd", utt.audio, prompts.mdd)
    assert apa.target == '{"accuracy": 6, "fluency": 9, "prosodic": 8, "total": 5}'
    assert json.loads(mdd.target)["phoneme_transcript"] == "DH EH N HH IY W EH N T T UW TH AH M P AA R K"
    unlabelled = type(utt)(utt.id, utt.speaker, utt.text, utt.audio)
    assert [e.target for e in build_examples(unlabelled, prompts)] == [None, None]


def test_the_word_task_is_opt_in_and_its_prompt_carries_the_words(train_utterances, tmp_path):
    utt = next(u for u in train_utterances if u.id == "000010011")  # WE CALL IT BEAR
    prompts = PromptSet.from_templates()
    assert [e.task for e in build_examples(utt, prompts)] == ["apa", "mdd"]  # the paper's two by default
    apa, mdd, wrd = build_examples(utt, prompts, tasks=("apa", "mdd", "wrd"))
    instructions = load_template("wrd").replace("{text}", "WE CALL IT BEAR")
    assert wrd.prompt == "<|user|><|WRD|><|audio_1|>" + instructions + "<|end|><|assistant|>"
    assert (wrd.text, apa.text, mdd.text) == ("WE CALL IT BEAR", None, None)
    assert wrd.target == ('{"words": [{"word": "WE", "accuracy": 10, "stress": 10, "total": 10}, '
                          '{"word": "CALL", "accuracy": 10, "stress": 10, "total": 10}, '
                          '{"word": "IT", "accuracy": 10, "stress": 10, "total": 10}, '
                          '{"word": "BEAR", "accuracy": 6, "stress": 10, "total": 6}]}')
    assert "text" not in apa.as_dict() and wrd.as_dict()["text"] == "WE CALL IT BEAR"
    unlabelled = type(utt)(utt.id, utt.speaker, "We call it bear!", utt.audio)  # words from the text itself
    assert build_examples(unlabelled, prompts, tasks=("wrd",))[0].text == "WE CALL IT BEAR"
    bad = tmp_path / "nowords.txt"
    bad.write_text("Rate every word.")
    with pytest.raises(PronlmError, match=r"must hold \{text\} exactly once"):
        PromptSet.from_templates(wrd_template=str(bad))
    with pytest.raises(ValueError, match="needs the sentence's words"):
        prompts.for_task("wrd")


def test_the_word_templates_show_the_answer_format():
    for name in ("default", "short"):
        text = load_template("wrd", name)
        example = json.loads(text[text.index('{"words"'):text.rindex("}") + 1])
        assert list(example["words"][0]) == ["word", "accuracy", "stress", "total"]


def test_control_tokens_are_single_tokens(tiny_tokenizer):
    ids = add_control_tokens(tiny_tokenizer)
    assert ids == {"apa": 1024, "mdd": 1025, "wrd": 1026}  # appended after the tiny BPE's 1,024 entries
    assert len(tiny_tokenizer) == 1027  # a second call adds nothing
    for task, token in (("apa", "<|APA|>"), ("mdd", "<|MDD|>"), ("wrd", "<|WRD|>")):
        assert tiny_tokenizer(token, add_special_tokens=False).input_ids == [ids[task]]
        assert tiny_tokenizer.decode([ids[task]]) == token
        prompt = PromptSet.from_templates().for_task(task, "WE CALL IT BEAR")
        prompt_ids = tiny_tokenizer(prompt, add_special_tokens=False).input_ids
        assert prompt_ids[1] == ids[task] and prompt_ids.count(ids[task]) == 1


def test_control_tokens_fit_the_embedding(tiny_tokenizer, tiny_model):
    rows = tiny_model.get_input_embeddings().weight.shape[0]
    ids = add_control_tokens(tiny_tokenizer, tiny_model)
    assert max(ids.values()) < rows == 1088
    assert tiny_model.get_input_embeddings().weight.shape[0] == 1088  # no resize needed


def test_control_tokens_resize_a_small_embedding(tiny_tokenizer, tiny_model):
    tiny_model.resize_token_embeddings(1024)  # rows 0..1023: <|APA|>=1024, <|MDD|>=1025, <|WRD|>=1026 do not fit
    ids = add_control_tokens(tiny_tokenizer, tiny_model)
    rows = tiny_model.get_input_embeddings().weight.shape[0]
    assert rows == 1088 and rows % 64 == 0 and max(ids.values()) < rows
    assert tiny_model.get_output_embeddings().weight.shape[0] == 1088
