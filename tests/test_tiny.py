"""The tiny model hears: its audio embeddings differ between sentences, its input normalisation is
fitted to the training clips' features, saved with the base and used again when it is reloaded."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import Phi4MultimodalForCausalLM

from pronlm.config import load_config
from pronlm.data.audio import load_audio
from pronlm.errors import PronlmError
from pronlm.model.collate import Collator
from pronlm.model.tiny import (
    REFERENCE_LOG_MEL,
    audio_normalisation,
    fit_audio_normalisation,
)
from pronlm.model.train import train
from pronlm.run import TINY_BASE


def clip_embedding(model, tokenizer, samples) -> torch.Tensor:
    """The projector's output (what the LM receives in place of the audio tokens), averaged over the clip."""
    audio = model.model.embed_tokens_extend.audio_embed
    feats = Collator(tokenizer, model.config.audio_config.audio_token_id).features([samples])
    with torch.no_grad():
        hidden = audio.encoder(feats["audio_input_features"], None)
        embeds = audio.down_proj_for_speech(torch.nn.functional.gelu(audio.up_proj_for_speech(hidden)))
    return embeds[0].mean(0)


def one_clip_per_sentence(utterances, n: int) -> list:
    by_text = {}
    for u in utterances:
        by_text.setdefault(u.text, u)
    return list(by_text.values())[:n]


def test_untrained_tiny_model_hears_different_sentences_differently(tiny_model, tiny_tokenizer, train_utterances):
    # With the audio encoder at transformers' default init (0.02) and no input normalisation, the
    # signal drowns below LayerNorm's epsilon and every clip maps to nearly one vector: mean cosine
    # 0.996 here (0.975 or 0.988 with one of the two fixes alone); 0.87 with both.
    utts = one_clip_per_sentence(train_utterances, 4)
    embeds = [clip_embedding(tiny_model, tiny_tokenizer, load_audio(u.audio, u.id)) for u in utts]
    cosines = [float(torch.cosine_similarity(a, b, 0)) for a, b in itertools.combinations(embeds, 2)]
    assert sum(cosines) / len(cosines) < 0.9, cosines


def test_fitted_normalisation_standardises_each_mel_bin(tiny_model, tiny_tokenizer, train_utterances):
    clips = [load_audio(u.audio, u.id) for u in train_utterances[:6]]
    mean, std = fit_audio_normalisation(tiny_model, tiny_tokenizer, iter(clips))
    layer = audio_normalisation(tiny_model)
    assert torch.equal(layer.global_mean, mean) and torch.allclose(layer.global_invstd, 1 / std)
    frames = torch.cat([Collator(tiny_tokenizer, 0).features([c])["audio_input_features"][0] for c in clips])
    normalised = layer(frames)
    assert normalised.mean(0).abs().max() < 1e-3 and (normalised.std(0) - 1).abs().max() < 1e-3
    assert std.min() > 1 and mean.std() > 0.5  # real per-bin values, not one constant
    with pytest.raises(PronlmError, match="no training clips"):
        fit_audio_normalisation(tiny_model, tiny_tokenizer, [])


def test_untrained_tiny_model_uses_the_reference_normalisation(tiny_model):
    layer = audio_normalisation(tiny_model)
    mean, std = REFERENCE_LOG_MEL
    assert torch.all(layer.global_mean == mean) and torch.allclose(layer.global_invstd, torch.tensor(1 / std))


def test_normalisation_survives_save_and_reload(tiny_model, tiny_tokenizer, train_utterances, tmp_path):
    clips = [load_audio(u.audio, u.id) for u in train_utterances[:3]]
    fit_audio_normalisation(tiny_model, tiny_tokenizer, clips)
    tiny_model.save_pretrained(tmp_path / "base")
    reloaded = Phi4MultimodalForCausalLM.from_pretrained(tmp_path / "base").eval()
    saved, loaded = audio_normalisation(tiny_model), audio_normalisation(reloaded)
    assert torch.equal(saved.global_mean, loaded.global_mean)
    assert torch.equal(saved.global_invstd, loaded.global_invstd)
    assert torch.equal(clip_embedding(tiny_model, tiny_tokenizer, clips[0]),
                       clip_embedding(reloaded, tiny_tokenizer, clips[0]))


def test_training_saves_a_tiny_base_normalised_on_its_training_clips(corpus_dir, train_utterances, tiny_tokenizer,
                                                                      tmp_path):
    cfg = load_config("tiny-cpu", dict(corpus=str(corpus_dir), output_dir=str(tmp_path / "run"), limit=2,
                                       max_steps=1, save_strategy="no", per_device_train_batch_size=2))
    train(cfg)
    base = Phi4MultimodalForCausalLM.from_pretrained(tmp_path / "run" / TINY_BASE)
    expected = Phi4MultimodalForCausalLM(base.config)
    mean, std = fit_audio_normalisation(expected, tiny_tokenizer,
                                        [load_audio(u.audio, u.id) for u in train_utterances[:2]])
    layer = audio_normalisation(base)
    assert torch.allclose(layer.global_mean, mean) and torch.allclose(layer.global_invstd, 1 / std)
    assert not torch.all(layer.global_mean == REFERENCE_LOG_MEL[0])


def test_tiny_is_a_model_folder_built_once_and_loaded_by_path(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from pronlm.config import Config
    from pronlm.model.load import load_model, resolve_base
    from pronlm.model.tiny import (
        build_tiny_model,
        build_tiny_tokenizer,
        tiny_base_folder,
    )

    monkeypatch.setenv("PRONLM_CACHE", str(tmp_path))
    folder = tiny_base_folder()
    assert folder.parent == tmp_path / "tiny" and resolve_base(Config(base="tiny")) == str(folder)
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= \
        {p.name for p in folder.iterdir()}
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert tiny_base_folder() == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    built = build_tiny_model(build_tiny_tokenizer(), seed=0).state_dict()
    loaded = Phi4MultimodalForCausalLM.from_pretrained(folder).state_dict()
    assert built.keys() == loaded.keys() and all(torch.equal(built[k], loaded[k]) for k in built)
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == build_tiny_tokenizer().get_vocab()
    model, tokenizer = load_model(Config(base="tiny"), device="cpu")  # the untrained baseline, by path
    assert tokenizer.convert_tokens_to_ids("<|APA|>") < model.config.vocab_size and not model.training
    assert [n for n in tmp_path.joinpath("tiny").iterdir()] == [folder]  # no half-built folder left behind
