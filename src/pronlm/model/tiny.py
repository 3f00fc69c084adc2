"""A tiny, randomly initialised Phi-4-multimodal and a tokenizer for it, built offline.

For CPU runs, tests and the demo: same classes and code paths as the real model (audio encoder,
projector, LM, tied embeddings, `<|audio_1|>` expansion), a few hundred thousand parameters. Not a pronunciation
model: it learns only what it is trained on.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.models.phi4_multimodal.modeling_phi4_multimodal import (
    Phi4MultimodalAudioMeanVarianceNormLayer,
)

from pronlm.config import TEMPLATES, cache_dir
from pronlm.data.targets import ARPABET, cmudict_entries, strip_stress
from pronlm.errors import PronlmError
from pronlm.model.collate import Collator

# Phi-4's own special tokens; the tiny vocabulary keeps their names, not their ids.
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>",
                  "<|endoftext10|>", "<|endoftext11|>"]
IMAGE_TOKEN, AUDIO_TOKEN = "<|endoftext10|>", "<|endoftext11|>"
# The audio input normalisation of a tiny model built without a corpus (training fits per-bin values):
# a round level of speech in Phi-4's log-mel features (log mel power of 16-bit samples, floored at 0).
# The SpeechOcean762 clips measure 14.2 +- 4.1 (a steady noise floor), the demo's espeak-ng clips
# 13.2 +- 6.9 (digital silence at 0); transformers' untouched 0 +- 1 drowns the clips' differences.
REFERENCE_LOG_MEL = (12.0, 6.0)  # (mean, std)
MIN_LOG_MEL_STD = 1.0  # a near-constant bin is not amplified into noise


def _training_text(n_words: int = 4000) -> list[str]:
    """Text the tiny tokenizer learns merges from: our templates, JSON answers, CMU words/phones."""
    # The APA and MDD templates only: the word task's came later, and the tokenizer (with the losses
    # test_train pins on it) stays the one built before it.
    lines = [p.read_text() for p in TEMPLATES.iterdir() if p.name.endswith(".txt") and p.name[:4] in ("apa_", "mdd_")]
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
    """A byte-level BPE tokenizer with Phi-4's special tokens, digits split as o200k splits them;
    deterministic, no download."""
    tok = Tokenizer(models.BPE())
    # Digits as o200k splits them (runs of up to three, never merged with the space before them:
    # `": 8` is `":`, ` `, `8`), so each score 0-10 is one token at one position, as in the real model.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
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
    The audio encoder gets the same range: at 0.02 its signal after the first convolutions falls
    below LayerNorm's epsilon and self-attention averages each clip into nearly one vector.
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
                          audio_token_id=ids(AUDIO_TOKEN), initializer_range=init_range),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_token_id=ids(IMAGE_TOKEN)),
    )


def build_tiny_model(tokenizer, seed: int = 0, **config_kwargs) -> Phi4MultimodalForCausalLM:
    """A random tiny model whose audio encoder normalises with `REFERENCE_LOG_MEL` (see `fit_audio_normalisation`)."""
    torch.manual_seed(seed)
    model = Phi4MultimodalForCausalLM(tiny_config(tokenizer, **config_kwargs))
    mean, std = REFERENCE_LOG_MEL
    set_audio_normalisation(model, torch.tensor(mean), torch.tensor(std))  # every mel bin alike
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    return model.eval()


def tiny_base_folder(hidden_size: int = 64, num_layers: int = 2) -> Path:
    """The tiny model as an ordinary model folder (weights, tokenizer, feature extractor), built once.

    Built with seed 0 into the cache and then loaded by path like any base (`base: tiny` resolves
    here). The folder name carries a digest of this module's source and the transformers version,
    so a change to how the model is built makes a new folder instead of reusing a stale one. Written
    to a temporary folder and renamed into place: parallel processes (DDP) never see half a model.
    """
    digest = hashlib.sha256(Path(__file__).read_bytes() + transformers.__version__.encode()).hexdigest()[:12]
    folder = cache_dir() / "tiny" / f"h{hidden_size}-l{num_layers}-{digest}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".build-"))
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed=0, hidden_size=hidden_size, num_layers=num_layers).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    Phi4MultimodalFeatureExtractor().save_pretrained(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first: theirs is the same model
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def audio_normalisation(model) -> Phi4MultimodalAudioMeanVarianceNormLayer:
    """The audio encoder's input layer: `(features - global_mean) * global_invstd`, per mel bin."""
    return next(m for m in model.modules() if isinstance(m, Phi4MultimodalAudioMeanVarianceNormLayer))


def set_audio_normalisation(model, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Normalise the audio encoder's input to `(features - mean) / std`, per mel bin."""
    layer = audio_normalisation(model)
    with torch.no_grad():
        layer.global_mean.copy_(mean)
        layer.global_invstd.copy_(1.0 / std.clamp_min(MIN_LOG_MEL_STD))


def fit_audio_normalisation(model, tokenizer, clips: Iterable[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the per-bin mean and std of the clips' log-mel frames into the audio encoder; return them.

    The real model's normalisation is learnt and ships with its weights; transformers initialises
    it to mean 0 / std 1, while the features sit around 12 +- 7 and their differences drown. The
    values are buffers saved with the model, so training and prediction hear the same.
    """
    collator = Collator(tokenizer, model.config.audio_config.audio_token_id)  # the features training sees
    frames, total, squares = 0, 0.0, 0.0
    for clip in clips:
        feats = collator.features([clip])["audio_input_features"][0].double()
        frames, total, squares = frames + len(feats), total + feats.sum(0), squares + (feats ** 2).sum(0)
    if frames < 2:
        raise PronlmError("no training clips to fit the tiny model's audio normalisation on")
    mean = total / frames
    std = ((squares - frames * mean ** 2) / (frames - 1)).clamp_min(0).sqrt()
    set_audio_normalisation(model, mean.float(), std.float())
    return mean.float(), std.float()
