"""4-bit (QLoRA, new-lora only): NF4 on the language model's linear layers, everything else left as it is.

bitsandbytes needs CUDA; every decision here that the real checkpoint would make (which modules are
quantised, what stays bf16) is a small function the tests check on the real module names on the meta
device (`pronlm.model.phi4_config`).
"""

from __future__ import annotations

import torch

from pronlm.config import ConfigError
from pronlm.errors import ModelError

# 4-bit skip list. transformers 5.2x matches it from the start of the module name or as a suffix
# (quantizers_utils.should_convert_module), so the audio/vision towers are named in full.
NOT_QUANTISED = ["lm_head", "model.embed_tokens_extend"]


def bnb_4bit_config():
    """NF4 for the language model's linear layers; the skip list keeps the encoders, projectors and lm_head."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=NOT_QUANTISED)


def quantisable_linears(model, skip: list[str] = NOT_QUANTISED) -> list[str]:
    """The nn.Linear modules transformers would put in 4-bit with this skip list (its own matching rule)."""
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    not_converted = HfQuantizer.get_modules_to_not_convert(model, skip, model._keep_in_fp32_modules)
    return [n for n, m in model.named_modules()
            if type(m) is torch.nn.Linear and should_convert_module(n, not_converted)]


def check_lm_only(names: list[str]) -> None:
    """Refuse a quantisation that touches anything outside the language model's decoder layers."""
    outside = [n for n in names if not n.startswith("model.layers.")]
    if outside or not names:
        raise ModelError(f"4-bit would quantise {len(outside)} modules outside the language model, "
                         f"e.g. {outside[:3]}" if outside else "4-bit would quantise nothing")


def quantize_lm_4bit(model):
    """NF4 on the language model's linear layers only; audio/vision encoders and lm_head stay bf16."""
    if not torch.cuda.is_available():
        raise ConfigError("quantize_4bit needs a CUDA GPU (bitsandbytes); set quantize_4bit=false on CPU")
    import tempfile

    from transformers import Phi4MultimodalForCausalLM

    check_lm_only(quantisable_linears(model))
    attention = {"": model.config._attn_implementation, "audio_config": model.config.audio_config._attn_implementation,
                 "vision_config": model.config.vision_config._attn_implementation}
    with tempfile.TemporaryDirectory() as tmp:  # bitsandbytes quantises while loading: reload the merged base
        model.save_pretrained(tmp)
        model = Phi4MultimodalForCausalLM.from_pretrained(tmp, quantization_config=bnb_4bit_config(),
                                                          dtype=torch.bfloat16, attn_implementation=attention,
                                                          device_map={"": torch.cuda.current_device()})
    check_lm_only([n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"])
    return freeze_for_4bit_training(model)


def freeze_for_4bit_training(model, dtype: torch.dtype = torch.bfloat16):
    """Freeze every base parameter and keep the ones that are not 4-bit in `dtype` (bf16).

    This replaces peft's `prepare_model_for_kbit_training`, which also casts every parameter that is not
    4-bit to fp32: the tied embedding, the audio/vision towers and projectors, 1.52 B parameters of the
    real model (6.1 GB instead of 3.0 GB) that stay frozen and gain nothing from it. Only the trainable
    weights that peft adds next become fp32 (`upcast_trainable`); the RMSNorms already normalise in fp32.
    Its other parts are not needed: gradient checkpointing is TrainingArguments' and non-reentrant, so
    the inputs need no `requires_grad` hook.
    """
    for p in model.parameters():
        p.requires_grad = False
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return model
