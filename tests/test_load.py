"""Adapters, strategies and the trainable-parameter checks, on the tiny model with a speech LoRA
saved in the test in the real `speech-lora` layout (a peft LoRA folder, r/alpha from its config)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from pronlm.config import Config, ConfigError, load_config
from pronlm.data.prompts import PromptSet, build_examples
from pronlm.model.collate import Collator
from pronlm.errors import ModelError
from pronlm.model.adapters import (
    LM_LORA_TARGETS,
    check_trainable,
    merge_speech_lora,
    parameter_table,
    prepare_for_training,
)
from pronlm.model.load import load_model, resolve_base
from pronlm.model.tiny import build_tiny_model


def make_speech_adapter(model, folder, seed=1):
    """A random non-zero LoRA on the LM only (the shipped speech-lora's targets), saved as peft does."""
    lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.01, target_modules=LM_LORA_TARGETS)
    peft = get_peft_model(copy.deepcopy(model), lcfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    peft.save_pretrained(folder)
    return folder


@pytest.fixture()
def speech_dir(tmp_path, tiny_model):
    return str(make_speech_adapter(tiny_model, tmp_path / "speech-lora"))


@pytest.fixture()
def batch(train_utterances, tiny_tokenizer, tiny_model):
    prompts = PromptSet.from_templates("short", "short")
    examples = [e for u in train_utterances[:2] for e in build_examples(u, prompts)]
    return Collator(tiny_tokenizer, tiny_model.config.audio_config.audio_token_id)(examples)


def cfg(**kw):
    return load_config("tiny-cpu", kw)


def test_lora_targets_only_the_language_model(tiny_model, tiny_tokenizer):
    peft = prepare_for_training(cfg(strategy="new-lora"), tiny_model, tiny_tokenizer)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in peft.named_parameters() if ".lora_A." in n}
    assert len(wrapped) == 2 * 4  # 2 layers x (qkv_proj, o_proj, gate_up_proj, down_proj)
    assert not any("audio_embed" in n for n in wrapped)  # the encoder has o_proj/gate_up_proj/down_proj too


def test_the_control_token_rows_trained_are_those_of_the_runs_tasks(tiny_model, tiny_tokenizer):
    hidden = tiny_model.config.hidden_size
    two = parameter_table(prepare_for_training(cfg(strategy="new-lora"), tiny_model, tiny_tokenizer))
    assert two["by_group"]["token rows"] == 2 * hidden  # <|WRD|> has an id but no trained row
    three = prepare_for_training(cfg(strategy="new-lora", tasks="apa,mdd,wrd"), build_tiny_model(tiny_tokenizer),
                                 tiny_tokenizer)
    assert parameter_table(three)["by_group"]["token rows"] == 3 * hidden
    adapter = three.get_input_embeddings().token_adapter
    assert sorted(adapter.token_indices["default"]) == [1024, 1025, 1026]


def test_speech_lora_is_continued_with_its_saved_weights(tiny_model, tiny_tokenizer, speech_dir):
    peft = prepare_for_training(cfg(strategy="speech-lora", speech_adapter=speech_dir), tiny_model, tiny_tokenizer)
    saved = load_file(f"{speech_dir}/adapter_model.safetensors")
    params = dict(peft.named_parameters())
    assert len(saved) == 16
    for key, value in saved.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(params[name].detach(), value), name
        assert params[name].requires_grad
    table = parameter_table(peft)
    assert set(table["by_group"]) == {"lora", "token rows"}
    hidden = tiny_model.config.hidden_size
    assert table["by_group"]["token rows"] == 2 * hidden  # 2 tokens x one matrix: lm_head is tied to it
    assert peft.get_output_embeddings().token_adapter.tied_adapter is peft.get_input_embeddings().token_adapter


def test_new_lora_merges_the_speech_lora_first(tiny_model, tiny_tokenizer, speech_dir, batch):
    with torch.no_grad():
        reference = PeftModel.from_pretrained(copy.deepcopy(tiny_model), speech_dir)(**batch).logits
        plain = copy.deepcopy(tiny_model)(**batch).logits
        config = cfg(strategy="new-lora", speech_adapter=speech_dir)
        peft = prepare_for_training(config, merge_speech_lora(config, tiny_model), tiny_tokenizer)
        merged = peft(**batch).logits  # fresh LoRA B = 0: the merged base alone
    assert torch.allclose(merged, reference, atol=1e-3)  # merging reorders float sums: ~2e-4 on logits of ~7
    assert not torch.allclose(merged, plain, atol=1e-2)  # the speech LoRA really changed the model


def test_unfreeze_trains_encoder_and_projector(tiny_model, tiny_tokenizer, speech_dir):
    peft = prepare_for_training(cfg(strategy="unfreeze", speech_adapter=speech_dir), tiny_model, tiny_tokenizer)
    table = parameter_table(peft)
    assert set(table["by_group"]) == {"lora", "token rows", "audio encoder", "projector"}
    check_trainable(cfg(strategy="unfreeze"), table)
    with pytest.raises(ModelError, match="unexpected trainable groups"):
        check_trainable(cfg(strategy="speech-lora"), table)


def test_nothing_trainable_is_refused(tiny_model):
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ModelError, match="nothing is trainable"):
        check_trainable(cfg(), parameter_table(tiny_model))


def test_fully_trainable_base_is_refused(tiny_model):
    with pytest.raises(ModelError, match="unexpected trainable groups"):
        check_trainable(cfg(), parameter_table(tiny_model))


def test_unfreeze_with_4bit_is_refused():
    with pytest.raises(ConfigError, match="quantised"):
        cfg(strategy="unfreeze", quantize_4bit=True)


def test_tiny_speech_lora_without_adapter_says_what_to_do(tiny_model, tiny_tokenizer):
    with pytest.raises(ConfigError, match="no built-in speech LoRA"):
        prepare_for_training(cfg(strategy="speech-lora"), tiny_model, tiny_tokenizer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="4-bit NF4 needs CUDA and bitsandbytes")
def test_4bit_quantises_the_language_model_only(tiny_model, tiny_tokenizer, speech_dir):
    peft = prepare_for_training(cfg(strategy="new-lora", quantize_4bit=True, speech_adapter=speech_dir),
                                tiny_model, tiny_tokenizer)
    kinds = {n: type(m).__name__ for n, m in peft.named_modules()}
    assert any(k == "Linear4bit" for n, k in kinds.items() if "layers.0.self_attn.qkv_proj.base_layer" in n)
    assert not any(k == "Linear4bit" for n, k in kinds.items() if "audio_embed" in n or n.endswith("lm_head"))


def test_4bit_on_cpu_is_a_clear_error(tiny_model, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA"):
        prepare_for_training(cfg(strategy="new-lora", quantize_4bit=True), tiny_model, tiny_tokenizer)


def test_tiny_inference_without_a_tiny_run_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({}))
    with pytest.raises(ModelError, match="not a tiny run"):
        load_model(Config(base="tiny"), str(tmp_path))


def _unprefixed(folder):
    """The speech LoRA as transformers' conversion script writes it: keys without peft's prefix."""
    from safetensors.torch import save_file

    path = f"{folder}/adapter_model.safetensors"
    saved = load_file(path)
    save_file({k.removeprefix("base_model.model."): v for k, v in saved.items()}, path)
    assert not any(k.startswith("base_model.") for k in load_file(path))
    return folder


@pytest.mark.parametrize("form", ["peft", "converted"])
def test_speech_lora_loads_in_both_key_forms_for_training_and_merging(form, tiny_model, tiny_tokenizer, speech_dir,
                                                                      batch):
    folder = _unprefixed(speech_dir) if form == "converted" else speech_dir
    saved = {k.removeprefix("base_model.model."): v for k, v in load_file(f"{folder}/adapter_model.safetensors").items()}
    peft = prepare_for_training(cfg(strategy="speech-lora", speech_adapter=folder), copy.deepcopy(tiny_model),
                                tiny_tokenizer)
    params = {n.removeprefix("base_model.model.").replace(".default", ""): p for n, p in peft.named_parameters()}
    assert all(torch.equal(params[k], v) for k, v in saved.items())
    with torch.no_grad():
        plain = copy.deepcopy(tiny_model)(**batch).logits
        merged = merge_speech_lora(cfg(speech_adapter=folder), copy.deepcopy(tiny_model))(**batch).logits
    assert (merged - plain).abs().max() > 0.1  # the merge changed the model


def test_speech_lora_with_a_missing_tensor_is_refused(tiny_model, tiny_tokenizer, speech_dir):
    from safetensors.torch import save_file

    path = f"{speech_dir}/adapter_model.safetensors"
    saved = load_file(path)
    dropped = next(k for k in saved if "layers.1.mlp.down_proj.lora_A" in k)
    save_file({k: v for k, v in saved.items() if k != dropped}, path)
    with pytest.raises(ModelError, match="no value for 1 of the 16 LoRA tensors"):
        merge_speech_lora(cfg(speech_adapter=speech_dir), tiny_model)


def test_speech_lora_whose_b_are_all_zero_is_refused(tiny_model, speech_dir):
    from safetensors.torch import save_file

    path = f"{speech_dir}/adapter_model.safetensors"
    saved = load_file(path)
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in saved.items()}, path)
    with pytest.raises(ModelError, match="every lora_B .* is zero"):
        merge_speech_lora(cfg(speech_adapter=speech_dir), tiny_model)


def test_unfreeze_keeps_fp32_master_weights_in_a_bf16_model(tiny_model, tiny_tokenizer, speech_dir):
    peft = prepare_for_training(cfg(strategy="unfreeze", speech_adapter=speech_dir, dtype="bf16"),
                                tiny_model.to(torch.bfloat16), tiny_tokenizer)
    trainable = {n: p.dtype for n, p in peft.named_parameters() if p.requires_grad}
    assert any("audio_embed.encoder.modules_to_save" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}, {n: d for n, d in trainable.items() if d != torch.float32}
    frozen = {p.dtype for p in peft.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}  # only the trained weights pay for fp32


def test_control_tokens_round_trip_or_fail(tiny_tokenizer):
    from pronlm.model.adapters import add_control_tokens

    ids = add_control_tokens(tiny_tokenizer)
    assert [tiny_tokenizer.convert_ids_to_tokens(i) for i in ids.values()] == ["<|APA|>", "<|MDD|>", "<|WRD|>"]
    tiny_tokenizer.convert_ids_to_tokens = lambda i: "<|endoftext|>"  # a tokenizer that maps the id elsewhere
    with pytest.raises(ModelError, match="does not round-trip"):
        add_control_tokens(tiny_tokenizer)


def test_a_real_base_uses_its_own_feature_extractor(tmp_path):
    from transformers import Phi4MultimodalFeatureExtractor

    from pronlm.model.load import load_feature_extractor

    Phi4MultimodalFeatureExtractor(audio_compression_rate=4).save_pretrained(tmp_path)
    assert load_feature_extractor(str(tmp_path)).audio_compression_rate == 4
    assert load_feature_extractor(resolve_base(Config(base="tiny"))).audio_compression_rate == 8  # its folder's own
    with pytest.raises(ModelError, match="preprocessor_config.json"):
        load_feature_extractor(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("offline", [None, "1"])
def test_an_unreachable_hub_base_is_one_clear_line_at_once(offline, corpus_dir, tmp_path, capsys, monkeypatch):
    """Online: the hub asked once, then one line. HF_HUB_OFFLINE=1 (before: two lines from transformers): one
    line naming the variable. Either way nothing is downloaded or loaded (at once, counted, not timed)."""
    from huggingface_hub import HfApi
    from transformers import AutoTokenizer

    from pronlm.cli import main

    asked = []

    def unreachable(*args, **kwargs):
        asked.append(args)
        raise ConnectionError("[Errno -2] Name or service not known")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded after the reachability check")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", never)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code = main(["predict", "--base", "someone/phi4-copy", "--corpus", str(corpus_dir), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "hf download someone/phi4-copy" in err
    if offline:
        assert "not in the local Hugging Face cache and HF_HUB_OFFLINE=1" in err and asked == []
    else:
        assert "cannot fetch someone/phi4-copy" in err and len(asked) == 1
    assert main(["predict", "--base", "./no-such-folder", "--corpus", str(corpus_dir), "--out", str(tmp_path / "p")]) == 2
    assert "not a folder here, nor a hub id" in capsys.readouterr().err


def test_adapter_folders_that_are_missing_or_not_adapters_say_what_to_give(tmp_path):
    with pytest.raises(ModelError, match=r"adapter folder .*nope not found: give a training output_dir"):
        load_model(Config(base="tiny"), str(tmp_path / "nope"))
    (tmp_path / "run" / "checkpoint-7").mkdir(parents=True)
    with pytest.raises(ModelError, match=r"no adapter_config.json: not a training output .*checkpoint-7"):
        load_model(Config(base="tiny"), str(tmp_path / "run"))
