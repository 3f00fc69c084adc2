"""Collator: audio placeholder expansion, token-exact answer-only labels, and a loss checked by hand."""

from __future__ import annotations

import pytest
import torch

from pronlm.data.audio import load_audio
from pronlm.data.prompts import PromptSet, build_examples
from pronlm.model.collate import IGNORE_INDEX, Collator, n_audio_tokens
from pronlm.model.tiny import AUDIO_TOKEN

SHORT, LONG = "000050049", "014350017"  # 34,064 and 71,840 samples


def test_n_audio_tokens():
    assert n_audio_tokens(16000) == 13  # SPEC §2: 1 s -> 13 tokens
    assert n_audio_tokens(34064) == 27  # (33664 // 160 + 1) = 211 frames -> ceil(211 / 8)
    assert n_audio_tokens(71840) == 56  # 447 frames
    assert n_audio_tokens(400) == 1


@pytest.fixture()
def batch_parts(train_utterances, tiny_tokenizer):
    """Two real clips of different lengths, both tasks each: four examples."""
    by_id = {u.id: u for u in train_utterances}
    prompts = PromptSet.from_templates()
    examples = [e for uid in (SHORT, LONG) for e in build_examples(by_id[uid], prompts)]
    audio = [load_audio(e.audio, e.id) for e in examples]
    audio_id = tiny_tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    return examples, audio, audio_id


def test_labels_are_exactly_the_answer(batch_parts, tiny_tokenizer):
    examples, audio, audio_id = batch_parts
    batch = Collator(tiny_tokenizer, audio_token_id=audio_id)(examples)
    assert [len(a) for a in audio] == [34064, 34064, 71840, 71840]
    assert batch["audio_embed_sizes"].tolist() == [27, 27, 56, 56]
    for row, example in enumerate(examples):
        labels = batch["labels"][row]
        answer = labels[labels != IGNORE_INDEX].tolist()
        assert tiny_tokenizer.decode(answer) == example.target + "<|end|><|endoftext|>"
        assert (batch["input_ids"][row] == audio_id).sum().item() == n_audio_tokens(len(audio[row]))
        # the answer is the last non-padding stretch, and labels equal the inputs there
        length = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert labels[length - len(answer):length].tolist() == answer
        assert batch["input_ids"][row, length - len(answer):length].tolist() == answer
        assert (labels[:length - len(answer)] == IGNORE_INDEX).all()
        assert (labels[length:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, length:] == tiny_tokenizer.pad_token_id).all()
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) == 4 and max(lengths) == batch["input_ids"].shape[1]  # mixed lengths, right-padded


def test_generation_mode_pads_left(batch_parts, tiny_tokenizer):
    examples, audio, audio_id = batch_parts
    batch = Collator(tiny_tokenizer, audio_token_id=audio_id, for_generation=True)(examples, audio)
    assert "labels" not in batch
    assistant = tiny_tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert (batch["input_ids"][:, -1] == assistant).all()
    assert batch["attention_mask"][:, -1].all()
    for row in range(4):
        length = int(batch["attention_mask"][row].sum())
        width = batch["input_ids"].shape[1]
        assert not batch["attention_mask"][row, :width - length].any()
        assert (batch["input_ids"][row, :width - length] == tiny_tokenizer.pad_token_id).all()
        assert (batch["input_ids"][row] == audio_id).sum().item() == n_audio_tokens(len(audio[row]))
    assert batch["attention_mask"][0, 0] == 0  # the short APA prompt is padded on the left


def test_loss_is_answer_only_cross_entropy(batch_parts, tiny_tokenizer, tiny_model):
    examples, audio, audio_id = batch_parts
    assert tiny_model.config.audio_config.audio_token_id == audio_id
    batch = Collator(tiny_tokenizer, audio_token_id=audio_id)(examples, audio)
    tiny_model.train()
    out = tiny_model(**batch)
    assert torch.isfinite(out.loss)

    logits = out.logits[:, :-1].float()  # position t predicts token t + 1
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits[keep], dim=-1)
    by_hand = -log_probs.gather(1, targets[keep].unsqueeze(1)).mean()
    n_answer = sum(len(tiny_tokenizer(e.target, add_special_tokens=False).input_ids) + 2 for e in examples)
    assert keep.sum().item() == n_answer
    assert abs(out.loss.item() - by_hand.item()) < 1e-5

    out.loss.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert tiny_model.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("layout, apa_prefix, mdd_prefix, suffix", [
    # <|user|>=1, <|APA|>=1024, <|MDD|>=1025, "Rate it."/"Say it." on the tiny BPE, <|end|>=3, <|assistant|>=2
    ("paper", [1, 1024], [1, 1025], {"apa": [56, 504, 75, 227, 892, 20, 3, 2], "mdd": [57, 71, 95, 227, 892, 20, 3, 2]}),
    ("instructions-first", [1, 1024, 56, 504, 75, 227, 892, 20], [1, 1025, 57, 71, 95, 227, 892, 20],
     {"apa": [3, 2], "mdd": [3, 2]}),
])
def test_token_ids_under_each_prompt_layout(layout, apa_prefix, mdd_prefix, suffix, train_utterances,
                                            tiny_tokenizer, tmp_path):
    """The prompt up to the audio, the 27 audio tokens of the short clip, the rest, then the answer: the only labels."""
    (tmp_path / "apa.txt").write_text("Rate it.")
    (tmp_path / "mdd.txt").write_text("Say it.")
    prompts = PromptSet.from_templates(str(tmp_path / "apa.txt"), str(tmp_path / "mdd.txt"), layout=layout)
    utt = next(u for u in train_utterances if u.id == SHORT)
    examples = build_examples(utt, prompts)
    audio_id = tiny_tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    batch = Collator(tiny_tokenizer, audio_token_id=audio_id)(examples)
    for row, (example, prefix) in enumerate(zip(examples, (apa_prefix, mdd_prefix))):
        answer = tiny_tokenizer(example.target, add_special_tokens=False).input_ids + [3, 0]  # <|end|><|endoftext|>
        prompt = prefix + [audio_id] * 27 + suffix[example.task]
        length = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :length].tolist() == prompt + answer
        assert batch["labels"][row, :length].tolist() == [IGNORE_INDEX] * len(prompt) + answer
