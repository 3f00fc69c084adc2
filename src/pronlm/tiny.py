"""A tiny, randomly initialised Phi-4-multimodal and a tokenizer for it, built offline.

For CPU runs, tests and the demo: same classes and code paths as the real model (audio encoder,
projector, LM, tied embeddings, `<|audio_1|>` expansion), a few hundred thousand parameters. Not a pronunciation
model: it learns only what it is trained on.
"""

from __future__ import annotations

import math
from importlib import resources

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM, PreTrainedTokenizerFast

from pronlm.targets import ARPABET, cmudict_entries, strip_stress

# Phi-4's own special tokens; the tiny vocabulary keeps their names, not their ids.
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>",
                  "<|endoftext10|>", "<|endoftext11|>"]
IMAGE_TOKEN, AUDIO_TOKEN = "<|endoftext10|>", "<|endoftext11|>"


def _training_text(n_words: int = 4000) -> list[str]:
    """Text the tiny tokenizer learns merges from: our templates, JSON answers, CMU words/phones."""
    lines = [p.read_text() for p in (resources.files("pronlm") / "prompts").iterdir() if p.name.endswith(".txt")]
    lines.append(" ".join(sorted(ARPABET)) + " <unk> | 0 1 2 3 4 5 6 7 8 9 10")
    lines.append('{"accuracy": 8, "fluency": 8, "prosodic": 9, "total": 8}')
    entries = sorted(cmudict_entries().items())
    step = max(1, len(entries) // n_words)
    for word, prons in entries[::step]:
        if word.isalpha():
            phones = " ".join(strip_stress(p) for p in prons[0])
            lines.append(f'{{"word_transcript": "{word.upper()}", "phoneme_transcript": "{phones}"}}')
    return lines


def build_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Phi-4's special tokens; deterministic, no download."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token=None,
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    fast.padding_side = "right"
    return fast


def tiny_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, extra_rows: int = 2,
                init_range: float = 0.2) -> Phi4MultimodalConfig:
    """Config whose audio/image token ids lie inside the vocabulary (the upstream test config's do not).

    The embedding keeps spare rows, like the real model's 200,064, so control tokens fit unresized.
    `init_range` is 10x Phi-4's 0.02: with hidden 64 and the lm_head frozen, 0.02 caps every logit
    near 1.3, so no LoRA can make a peaked distribution and the loss never leaves ln(vocab).
    """
    vocab = int(math.ceil((len(tokenizer) + extra_rows) / 64) * 64)
    ids = tokenizer.convert_tokens_to_ids
    return Phi4MultimodalConfig(
        vocab_size=vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, original_max_position_embeddings=4096, initializer_range=init_range,
        tie_word_embeddings=True,  # as the real model: lm_head shares the input embedding
        bos_token_id=ids("<|endoftext|>"), pad_token_id=ids("<|endoftext|>"),
        eos_token_id=[ids("<|endoftext|>"), ids("<|end|>")],
        audio_config=dict(hidden_size=32, intermediate_size=64, num_blocks=2, num_attention_heads=2,
                          ext_pw_out_channel=32, depthwise_separable_out_channel=32, nemo_conv_channels=32,
                          audio_token_id=ids(AUDIO_TOKEN)),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_token_id=ids(IMAGE_TOKEN)),
    )


def build_tiny_model(tokenizer, seed: int = 0, **config_kwargs) -> Phi4MultimodalForCausalLM:
    torch.manual_seed(seed)
    model = Phi4MultimodalForCausalLM(tiny_config(tokenizer, **config_kwargs))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    return model.eval()
