"""Batches for Phi-4-multimodal: audio features, the audio placeholder expanded, answer-only labels.

Each sequence is `prompt-before-audio + <audio>*n + prompt-after-audio + answer + <|end|> + <|endoftext|>`,
where n is the number of audio embeddings the encoder will produce for that clip (one per 80 ms).
Labels are -100 on every prompt, control-token, audio and padding position: loss on the answer only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean

import numpy as np
import torch
from transformers import Phi4MultimodalFeatureExtractor

from pronlm.config import ConfigError
from pronlm.data.audio import SAMPLE_RATE, load_audio
from pronlm.data.lengths import n_audio_tokens
from pronlm.data.prompts import AUDIO_PLACEHOLDER, END, EOT, TASKS, Example
from pronlm.errors import PronlmError

IGNORE_INDEX = -100


# Phi4MultimodalAudioModel.forward (transformers 5.2x) encodes at most `max_seq_len = 500` positions
# in one window, a constant of the code, not of the config. A longer clip is cut into independent
# 500-position windows, and that path fails for batches of more than one clip ("view size is not
# compatible with input tensor's size and stride": `unfold_tensor` views a permuted tensor); assess
# and serve always batch (APA and MDD together). `bias_max_distance` (500 real, 1000 tiny) only
# clips the relative attention bias and limits nothing.
ENCODER_WINDOW = 500
FEATURE_HOP_SECONDS = 0.01  # one log-mel frame per 10 ms (SPEC §2)


class AudioLimitError(ConfigError):
    """A configured clip limit the audio encoder cannot honour."""


def max_audio_seconds(model_config) -> float:
    """The longest clip the model's audio encoder takes: 500 positions x time_reduction frames x 10 ms.

    40 s for Phi-4-multimodal and the tiny model (time_reduction 8: one position per 80 ms).
    Takes the model's config or its `audio_config`.
    """
    audio = getattr(model_config, "audio_config", model_config)
    return ENCODER_WINDOW * audio.time_reduction * FEATURE_HOP_SECONDS


def audio_limit(configured: float | None, model_config) -> float:
    """The clip limit to enforce: `configured`, or the model's own when None.

    Raises `AudioLimitError` naming both numbers when `configured` is above the model's limit.
    """
    limit = max_audio_seconds(model_config)
    if configured is None:
        return limit
    if configured > limit:
        raise AudioLimitError(f"max_audio_seconds is {configured:g} s, but the model's audio encoder takes at most "
                              f"{limit:g} s per clip: set it to {limit:g} or less (`pronlm assess --split-long` "
                              "cuts a long recording at pauses)")
    return configured


@dataclass
class Collator:
    """Turns `Example`s into model inputs; `for_generation` drops the answer and pads on the left."""

    tokenizer: object
    audio_token_id: int
    max_audio_seconds: float | None = 30.0
    for_generation: bool = False
    feature_extractor: Phi4MultimodalFeatureExtractor = field(default_factory=Phi4MultimodalFeatureExtractor)

    def __post_init__(self):
        self._prefix_cache: dict[str, tuple[list[int], list[int]]] = {}
        ids = self.tokenizer.convert_tokens_to_ids
        self.end_ids = [ids(END), ids(EOT)]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else ids(EOT)

    def _prompt_parts(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the audio placeholder (prompts repeat: cached)."""
        if prompt not in self._prefix_cache:
            if prompt.count(AUDIO_PLACEHOLDER) != 1:
                raise PronlmError(f"a prompt must hold exactly one {AUDIO_PLACEHOLDER}: {prompt[:80]!r}...")
            before, after = prompt.split(AUDIO_PLACEHOLDER)
            enc = self.tokenizer
            self._prefix_cache[prompt] = (enc(before, add_special_tokens=False).input_ids,
                                          enc(after, add_special_tokens=False).input_ids)
        return self._prefix_cache[prompt]

    def encode(self, example: Example, n_audio: int) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one example, unpadded."""
        before, after = self._prompt_parts(example.prompt)
        prompt_ids = before + [self.audio_token_id] * n_audio + after
        if self.for_generation:
            return prompt_ids, [IGNORE_INDEX] * len(prompt_ids)
        if example.target is None:
            raise PronlmError(f"example {example.id}/{example.task} has no target to train on")
        answer = self.tokenizer(example.target, add_special_tokens=False).input_ids + self.end_ids
        return prompt_ids + answer, [IGNORE_INDEX] * len(prompt_ids) + answer

    def features(self, audio: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Log-mel features clip by clip, zero-padded (what the extractor's padding gives) with a mask.

        One clip at a time because the extractor's batched masking fails on some length mixes
        (transformers 5.24: "size of tensor a (75) must match ... (76)" for clips of close lengths).
        """
        one = [self.feature_extractor(a, sampling_rate=SAMPLE_RATE, return_tensors="pt") for a in audio]
        frames = [f["audio_input_features"].shape[1] for f in one]
        feats = torch.zeros(len(one), max(frames), one[0]["audio_input_features"].shape[2])
        mask = torch.zeros(len(one), max(frames), dtype=torch.bool)
        for i, (f, n) in enumerate(zip(one, frames)):
            feats[i, :n] = f["audio_input_features"][0]
            mask[i, :n] = True
        sizes = torch.cat([f["audio_embed_sizes"] for f in one])
        return {"audio_input_features": feats, "audio_embed_sizes": sizes, "audio_attention_mask": mask}

    def load(self, example: Example) -> np.ndarray:
        return load_audio(example.audio, example.id, self.max_audio_seconds)

    def __call__(self, examples: list[Example], audio: list[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        """Collate examples; `audio` (16 kHz float arrays) skips reading the files."""
        examples = [e if isinstance(e, Example) else Example(**e) for e in examples]
        if audio is None:
            audio = [self.load(e) for e in examples]
        feats = self.features(audio)
        sizes = feats["audio_embed_sizes"]
        encoded = [self.encode(e, int(n)) for e, n in zip(examples, sizes)]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        attention = torch.zeros_like(input_ids)
        for row, (ids, lab) in enumerate(encoded):
            span = slice(width - len(ids), width) if self.for_generation else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids)
            labels[row, span] = torch.tensor(lab)
            attention[row, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention, **feats}
        if not self.for_generation:
            batch["labels"] = labels
        return batch


class TokenCounter:
    """Prompt / answer / audio tokens of each example, counted exactly as the collator builds them."""

    def __init__(self, tokenizer, name: str | None = None):
        self.name = name or type(tokenizer).__name__
        # The audio token's id does not change any count; 0 keeps this independent of the model.
        self.prompt_only = Collator(tokenizer, audio_token_id=0, for_generation=True)
        self.full = Collator(tokenizer, audio_token_id=0)
        self.counts: dict[str, dict[str, list[int]]] = {t: {"prompt": [], "answer": [], "audio": []} for t in TASKS}

    def add(self, example: Example, n_samples: int) -> None:
        n_audio = n_audio_tokens(n_samples)
        prompt = len(self.prompt_only.encode(example, n_audio)[0])
        counts = self.counts[example.task]
        counts["prompt"].append(prompt - n_audio)  # the expanded <|audio_1|> is counted apart
        counts["audio"].append(n_audio)
        if example.target is not None:
            counts["answer"].append(len(self.full.encode(example, n_audio)[0]) - prompt)

    def means(self) -> dict[str, dict[str, float | None]]:
        return {task: {k: round(mean(v), 2) if v else None for k, v in c.items()} for task, c in self.counts.items()}
