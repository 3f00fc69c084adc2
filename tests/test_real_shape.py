"""Decisions that only run on the real Phi-4-multimodal, checked on its real module names and sizes.

The full-size model is built on the meta device (no memory, no download) from `pronlm.model.phi4_config`:
which modules get LoRA, how many parameters each recipe trains, what 4-bit quantises, which
attention each tower gets, and whether the control tokens fit the 200,064 embedding rows.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from collections import Counter

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Phi4MultimodalForCausalLM, PreTrainedModel

from pronlm.config import Config, load_config
from pronlm.model import adapters, phi4_config, quantize
from pronlm.errors import ModelError
from pronlm.model.adapters import (
    LM_LORA_TARGETS,
    add_control_tokens,
    parameter_table,
    prepare_for_training,
    speech_lora_config,
    training_dtypes,
)
from pronlm.model.load import attention_implementation, load_model
from pronlm.model.quantize import check_lm_only, quantisable_linears

LAYERS = phi4_config.LM_LAYERS


@pytest.fixture(scope="module")
def real_model():
    with torch.device("meta"):
        return Phi4MultimodalForCausalLM(phi4_config.real_config())


@pytest.fixture(scope="module")
def shipped_speech_lora(tmp_path_factory):
    """The speech-lora adapter_config.json as transformers' conversion script writes it (no weights)."""
    folder = tmp_path_factory.mktemp("speech-lora")
    LoraConfig(r=320, lora_alpha=640, lora_dropout=0.01, task_type="CAUSAL_LM",
               target_modules=r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))",
               ).save_pretrained(folder)
    return str(folder)


def _wrapped(real_model, strategy, folder):
    cfg = load_config("paper-lora", {"strategy": strategy})
    with torch.device("meta"):
        return get_peft_model(copy.deepcopy(real_model), speech_lora_config(cfg, real_model, [200_029, 200_030], folder))


def test_the_real_config_ties_its_embeddings(real_model):
    assert real_model.config.tie_word_embeddings
    assert real_model.lm_head.weight is real_model.model.embed_tokens.weight
    assert real_model.get_input_embeddings().weight.shape == (phi4_config.VOCAB_ROWS, 3072)


def test_lora_targets_four_modules_per_language_model_layer_and_nothing_else(real_model, shipped_speech_lora):
    peft = _wrapped(real_model, "speech-lora", shipped_speech_lora)
    wrapped = sorted(n.removeprefix("base_model.model.").removesuffix(".lora_A")
                     for n, m in peft.named_modules() if n.endswith(".lora_A"))
    assert len(wrapped) == 4 * LAYERS
    per_layer = {re.sub(r"\.\d+\.", ".N.", n) for n in wrapped}
    assert per_layer == {"model.layers.N.self_attn.qkv_proj", "model.layers.N.self_attn.o_proj",
                         "model.layers.N.mlp.gate_up_proj", "model.layers.N.mlp.down_proj"}
    # the audio encoder and the vision tower have o_proj / gate_up_proj / down_proj of their own
    same_names = [n for n, _ in real_model.named_modules()
                  if "embed_tokens_extend" in n and n.rsplit(".", 1)[-1] in ("o_proj", "gate_up_proj", "down_proj")]
    assert len(same_names) >= 3 * phi4_config.AUDIO_BLOCKS
    assert not any(re.fullmatch(LM_LORA_TARGETS, n) for n in same_names)


def test_paper_recipes_train_the_parameter_counts_the_readme_states(real_model, shipped_speech_lora):
    per_layer = 320 * ((3072 + 5120) + (3072 + 3072) + (3072 + 2 * 8192) + (8192 + 3072))  # A + B of each target
    lora = _wrapped(real_model, "speech-lora", shipped_speech_lora)
    table = parameter_table(lora)
    assert table["by_group"] == {"lora": LAYERS * per_layer, "token rows": 2 * 3072}
    assert round(table["by_group"]["lora"] / 1e6) == 461  # README: "r 320, ≈461 M params"
    unfreeze = parameter_table(_wrapped(real_model, "unfreeze", shipped_speech_lora))["by_group"]
    assert round((unfreeze["audio encoder"] + unfreeze["projector"]) / 1e6) == 454  # README: "≈454 M more"


def test_a_four_epoch_run_keeps_the_optimizer_state_once(real_model, shipped_speech_lora):
    """Issue 18.3: every epoch's checkpoint held the full AdamW state; now only the latest does."""
    from pronlm.model.checkpoints import run_checkpoint_bytes

    gb = {}
    for strategy in ("speech-lora", "unfreeze"):
        trainable = parameter_table(_wrapped(real_model, strategy, shipped_speech_lora))["trainable"]
        gb[strategy] = [round(run_checkpoint_bytes(trainable, 4, slim) / 1e9, 1) for slim in (False, True)]
    assert gb["speech-lora"][0] == round(4 * 12 * (LAYERS * 320 * 45056 + 2 * 3072) / 1e9, 1)  # 461.4 M, 12 B each
    assert gb == {"speech-lora": [22.1, 11.1], "unfreeze": [43.9, 22.0]}  # 12 B / 4 B a parameter, by hand


def test_4bit_quantises_the_language_model_layers_and_nothing_else(real_model):
    quantised = quantisable_linears(real_model)
    assert len(quantised) == 4 * LAYERS and all(n.startswith("model.layers.") for n in quantised)
    assert "lm_head" not in quantised
    check_lm_only(quantised)
    # The skip list read as a bare name: transformers matches it from the start, so the towers go 4-bit.
    bare = quantisable_linears(real_model, ["lm_head", "embed_tokens_extend"])
    assert any(".audio_embed.encoder." in n for n in bare) and any("up_proj_for_speech" in n for n in bare)
    with pytest.raises(ModelError, match="outside the language model"):
        check_lm_only(bare)


@pytest.fixture(scope="module")
def real_size_tokenizer():
    """A tokenizer as long as the real one (its last token near id 200,028)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(200_029)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")))


def _nf4_like(model):
    """What bitsandbytes leaves in place of each quantised linear's weight: packed uint8, two values a byte."""
    for name in quantisable_linears(model):
        linear = model.get_submodule(name)
        linear.weight = torch.nn.Parameter(torch.empty(linear.weight.numel() // 2, 1, dtype=torch.uint8,
                                                       device=linear.weight.device), requires_grad=False)
    return model


def test_4bit_training_keeps_every_frozen_weight_that_is_not_4bit_in_bf16(real_model, real_size_tokenizer,
                                                                          monkeypatch):
    """new-lora 4-bit: only LoRA and the two token rows are fp32; the towers and tied embedding stay bf16."""
    quantised = quantisable_linears(real_model)
    lm_linears = LAYERS * 3072 * (5120 + 3072 + 2 * 8192 + 8192)  # qkv, o, gate_up, down of each layer
    lora = LAYERS * 64 * ((3072 + 5120) + (3072 + 3072) + (3072 + 2 * 8192) + (8192 + 3072))  # A + B at r 64
    rest = 4_743_988_032 - lm_linears  # embedding (tied lm_head), audio and vision towers, projectors, norms
    assert round(rest / 1e9, 2) == 1.52
    expected = {"nf4": lm_linears, "bfloat16": rest, "fp32": lora + 2 * 3072}

    cfg = load_config("new-lora", {"quantize_4bit": True})
    with torch.device("meta"):
        model = copy.deepcopy(real_model).to(torch.bfloat16)
        monkeypatch.setattr(adapters, "quantize_lm_4bit", lambda m: quantize.freeze_for_4bit_training(_nf4_like(m)))
        prepared = prepare_for_training(cfg, model, copy.deepcopy(real_size_tokenizer))
    by_dtype = Counter()
    for p in prepared.parameters():
        by_dtype[str(p.dtype).removeprefix("torch.")] += p.numel() * (2 if p.dtype == torch.uint8 else 1)
    assert dict(by_dtype) == {"uint8": expected["nf4"], "bfloat16": expected["bfloat16"], "float32": expected["fp32"]}

    # the rule a memory plan uses, on the unquantised model, predicts the same counts
    with torch.device("meta"):
        planned = get_peft_model(copy.deepcopy(real_model), LoraConfig(
            r=64, target_modules=LM_LORA_TARGETS, trainable_token_indices={"embed_tokens": [200_029, 200_030]}))
    assert dict(training_dtypes(planned, quantised)) == expected


@pytest.fixture()
def flash_available(monkeypatch):
    """`auto` resolves to flash-attention 2, and transformers accepts it without the package or a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn"
                        else real_find_spec(name, *a))
    check = PreTrainedModel._check_and_adjust_attn_implementation

    def accept_flash(self, impl, is_init_check=False, allow_all_kernels=False):
        return impl if impl == "flash_attention_2" else check(self, impl, is_init_check, allow_all_kernels)

    monkeypatch.setattr(PreTrainedModel, "_check_and_adjust_attn_implementation", accept_flash)


def test_auto_attention_keeps_the_encoders_off_flash_attention(flash_available):
    assert attention_implementation("auto") == {"": "flash_attention_2", "audio_config": "sdpa",
                                                "vision_config": "sdpa"}
    config = phi4_config.real_config(lm_layers=1, audio_blocks=1, vision_layers=1)
    config._attn_implementation = attention_implementation("auto")
    assert config._attn_implementation == "flash_attention_2"
    assert (config.audio_config._attn_implementation, config.vision_config._attn_implementation) == ("sdpa", "sdpa")
    assert attention_implementation("eager") == {"": "eager", "audio_config": "eager", "vision_config": "eager"}


def test_a_loaded_base_runs_its_audio_encoder_on_sdpa_when_the_lm_gets_flash(flash_available, tmp_path, tiny_model,
                                                                             tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, _ = load_model(Config(base=str(tmp_path), dtype="fp32", attn_implementation="auto"), training=True)
    encoder = model.model.embed_tokens_extend.audio_embed.encoder
    assert model.config._attn_implementation == "flash_attention_2"
    assert encoder.config._attn_implementation == "sdpa"
    assert model.model.embed_tokens_extend.image_embed.img_processor.config._attn_implementation == "sdpa"
    # what the old string form did: every tower on flash-attention
    plain = Phi4MultimodalForCausalLM.from_pretrained(tmp_path, attn_implementation="flash_attention_2")
    assert plain.model.embed_tokens_extend.audio_embed.encoder.config._attn_implementation == "flash_attention_2"


def test_control_tokens_fit_the_real_embedding_without_a_resize(real_model, real_size_tokenizer):
    """A tokenizer as long as the real one gets ids inside the 200,064 rows."""
    ids = add_control_tokens(copy.deepcopy(real_size_tokenizer), real_model)
    assert ids == {"apa": 200_029, "mdd": 200_030, "wrd": 200_031}
    assert real_model.get_input_embeddings().weight.shape[0] == phi4_config.VOCAB_ROWS  # no resize
