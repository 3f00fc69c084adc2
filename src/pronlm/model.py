"""Loading Phi-4-multimodal (real or tiny), control tokens, adapters, quantisation, parameter checks.

Strategies (SPEC §2):
- speech-lora: keep training the base's shipped speech LoRA (the paper's "LoRA-only");
- unfreeze: the same, plus the audio encoder and the speech projector;
- new-lora: merge the speech LoRA into the base, optionally quantise the LM to 4-bit, train a fresh LoRA.
In every strategy the two control-token rows of the input embedding and of the untied lm_head are
trained through peft `trainable_token_indices`; the rest of both matrices stays frozen.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from pathlib import Path

import torch

from pronlm.config import Config, ConfigError, run_config
from pronlm.data import PronlmError
from pronlm.prompts import CONTROL_TOKENS

log = logging.getLogger(__name__)

# The language model's own projections; the audio encoder has layers of the same names.
LM_LORA_TARGETS = r"model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))"
AUDIO_ENCODER = "audio_embed.encoder"  # inside model.embed_tokens_extend
SPEECH_PROJECTOR = ("up_proj_for_speech", "down_proj_for_speech")  # not the *_for_vision_speech pair
TINY_BASE_DIR = "tiny-base"  # a tiny run saves its random base here, so an adapter always has its base


class ModelError(PronlmError):
    pass


def add_control_tokens(tokenizer, model=None) -> dict[str, int]:
    """Add `<|APA|>` / `<|MDD|>` as special tokens and return {task: id}.

    Phi-4's embedding has spare rows above the tokenizer's last id (200,064 rows), so the new ids
    normally fit; when they do not, the embedding is resized to a multiple of 64.
    """
    missing = [t for t in CONTROL_TOKENS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = {task: tokenizer.convert_tokens_to_ids(tok) for task, tok in CONTROL_TOKENS.items()}
    if model is not None:
        rows = model.get_input_embeddings().weight.shape[0]
        if max(ids.values()) >= rows:
            log.warning("control token ids %s exceed the %d embedding rows: resizing", ids, rows)
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        assert max(ids.values()) < model.get_input_embeddings().weight.shape[0]
    return ids


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def resolve_attention(name: str) -> str:
    if name != "auto":
        return name
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() else "sdpa"


def load_base(cfg: Config, device_map=None):
    """(model, tokenizer) of the base: the hub/local Phi-4-multimodal, or the tiny random one."""
    if cfg.is_tiny:
        from pronlm.tiny import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer, seed=cfg.seed, hidden_size=cfg.tiny_hidden_size,
                                 num_layers=cfg.tiny_layers)
        return model, tokenizer
    from transformers import AutoTokenizer, Phi4MultimodalForCausalLM

    kw = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base, **kw)
    model = Phi4MultimodalForCausalLM.from_pretrained(
        cfg.base, dtype=resolve_dtype(cfg.dtype), attn_implementation=resolve_attention(cfg.attn_implementation),
        device_map=device_map, **kw)
    return model, tokenizer


def speech_adapter_dir(cfg: Config) -> str:
    """The built-in speech LoRA: a folder path, `<base>/speech-lora` locally, or from the hub."""
    for local in (Path(cfg.speech_adapter), Path(cfg.base) / cfg.speech_adapter):
        if (local / "adapter_config.json").is_file():
            return str(local)
    if cfg.is_tiny:
        raise ConfigError("the tiny model has no built-in speech LoRA: set speech_adapter=FOLDER "
                          "(a peft LoRA folder) or strategy=new-lora")
    from huggingface_hub import snapshot_download

    root = snapshot_download(cfg.base, revision=cfg.revision, allow_patterns=[f"{cfg.speech_adapter}/*"])
    return str(Path(root) / cfg.speech_adapter)


def _token_indices(model, token_ids: list[int]) -> dict[str, list[int]]:
    """Control-token rows to train: the input embedding, and lm_head when it is a separate matrix."""
    targets = {"embed_tokens": token_ids}
    if not model.config.tie_word_embeddings:
        targets["lm_head"] = token_ids
    return targets


def _modules_to_save(cfg: Config) -> list[str] | None:
    return [AUDIO_ENCODER, *SPEECH_PROJECTOR] if cfg.strategy == "unfreeze" else None


def merge_speech_lora(cfg: Config, model):
    """The base with its speech LoRA merged in: where new-lora starts, and how an untrained Phi-4 hears.

    The tiny model has no speech LoRA unless `speech_adapter` names one: then it is left as it is.
    """
    from peft import PeftModel

    if cfg.is_tiny and not (Path(cfg.speech_adapter) / "adapter_config.json").is_file():
        return model
    return PeftModel.from_pretrained(model, speech_adapter_dir(cfg)).merge_and_unload()


def prepare_for_training(cfg: Config, model, tokenizer):
    """Wrap the base in the strategy's peft adapter; returns the PeftModel.

    For new-lora, `model` must already have the speech LoRA merged in (`merge_speech_lora`).
    """
    from peft import LoraConfig, get_peft_model

    token_ids = list(add_control_tokens(tokenizer, model).values())
    if cfg.strategy in ("speech-lora", "unfreeze"):
        speech_dir = speech_adapter_dir(cfg)
        lcfg = LoraConfig.from_pretrained(speech_dir)  # the shipped r, alpha, dropout
        lcfg.inference_mode = False
        lcfg.target_modules = LM_LORA_TARGETS
        lcfg.trainable_token_indices = _token_indices(model, token_ids)
        lcfg.modules_to_save = _modules_to_save(cfg)
        return load_lora_weights(get_peft_model(model, lcfg), speech_dir)
    if cfg.quantize_4bit:
        model = quantize_lm_4bit(model)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=LM_LORA_TARGETS, trainable_token_indices=_token_indices(model, token_ids),
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def load_lora_weights(peft_model, folder: str):
    """Put a saved LoRA's weights into a model that also has token rows / saved modules.

    `PeftModel.from_pretrained` with extra `trainable_token_indices` fails (peft 0.21 looks for
    the token deltas in the file), so start from the model's own adapter state and overwrite it.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / "adapter_model.safetensors"))
    state = get_peft_model_state_dict(peft_model)
    unknown = sorted(set(saved) - set(state))
    if unknown:
        raise ModelError(f"{folder} holds weights outside the language model's LoRA targets, e.g. {unknown[:3]}")
    state.update(saved)
    set_peft_model_state_dict(peft_model, state)
    return peft_model


def quantize_lm_4bit(model):
    """NF4 on the language model's linear layers only; audio/vision encoders and lm_head stay bf16."""
    if not torch.cuda.is_available():
        raise ConfigError("quantize_4bit needs a CUDA GPU (bitsandbytes); set quantize_4bit=false on CPU")
    import tempfile

    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, Phi4MultimodalForCausalLM

    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16,
                              llm_int8_skip_modules=["lm_head", "embed_tokens_extend"])
    with tempfile.TemporaryDirectory() as tmp:  # bitsandbytes quantises while loading: reload the merged base
        model.save_pretrained(tmp)
        model = Phi4MultimodalForCausalLM.from_pretrained(tmp, quantization_config=qcfg, dtype=torch.bfloat16,
                                                          device_map={"": torch.cuda.current_device()})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


# ------------------------------------------------------------------ what is trained


def parameter_group(name: str) -> str:
    if "lora_" in name:
        return "lora"
    if "trainable_tokens" in name:
        return "token rows"
    if AUDIO_ENCODER + "." in name:
        return "audio encoder"
    if any(p + "." in name for p in SPEECH_PROJECTOR):
        return "projector"
    return "other"


def parameter_table(model) -> dict:
    """Totals and trainable counts by group; token rows count only the rows actually trained."""
    total, trainable = 0, Counter()
    for name, p in model.named_parameters():
        if "trainable_tokens" in name:
            continue  # a delta beside the frozen embedding, not a base parameter
        total += p.numel()
        if p.requires_grad:
            trainable[parameter_group(name)] += p.numel()
    for name, p in model.named_parameters():
        if "trainable_tokens" in name and p.requires_grad:
            trainable["token rows"] += p.numel()
    return {"total": total, "trainable": sum(trainable.values()), "by_group": dict(trainable)}


def check_trainable(cfg: Config, table: dict) -> None:
    """Refuse to train when nothing, or something the strategy does not name, is trainable."""
    expected = {"lora", "token rows"} | ({"audio encoder", "projector"} if cfg.strategy == "unfreeze" else set())
    groups = {g for g, n in table["by_group"].items() if n}
    if not groups:
        raise ModelError("nothing is trainable: the adapter was not applied (this is how a run 'trains' "
                         "with loss 0.0 and learns nothing)")
    if groups - expected:
        raise ModelError(f"unexpected trainable groups {sorted(groups - expected)} for strategy {cfg.strategy}")
    if expected - groups:
        raise ModelError(f"strategy {cfg.strategy} should train {sorted(expected - groups)} but they are frozen")


def format_table(table: dict) -> str:
    lines = [f"parameters: {table['total']:,} total, {table['trainable']:,} trainable "
             f"({100 * table['trainable'] / max(table['total'], 1):.3f} %)"]
    lines += [f"  {g:<14}{n:>14,}" for g, n in sorted(table["by_group"].items())]
    return "\n".join(lines)


# ------------------------------------------------------------------ inference


def load_for_inference(base: str, adapter: str | None = None, device: str | None = None,
                       revision: str | None = "refs/pr/70"):
    """(model, tokenizer) ready to generate: the base, plus a trained adapter folder when given.

    A speech-lora / unfreeze adapter *is* the (continued) speech LoRA; a new-lora adapter was
    trained on the base with the speech LoRA merged, and so is the untrained model (no adapter).
    """
    from peft import PeftModel

    if base == "tiny":
        if adapter is None:
            from pronlm.tiny import build_tiny_model, build_tiny_tokenizer

            tokenizer = build_tiny_tokenizer()
            add_control_tokens(tokenizer)
            model = build_tiny_model(tokenizer)
        else:
            model, tokenizer = _load_tiny_base(adapter)
    else:
        cfg = Config(base=base, revision=revision)
        model, tokenizer = load_base(cfg)
        add_control_tokens(tokenizer, model)
        if adapter is None or run_config(adapter).get("strategy") == "new-lora":
            model = merge_speech_lora(cfg, model)
    if adapter is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter)
        model = PeftModel.from_pretrained(model, adapter)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def _load_tiny_base(adapter: str):
    """A tiny run's own random base, saved beside its checkpoints."""
    from transformers import AutoTokenizer, Phi4MultimodalForCausalLM

    for folder in (Path(adapter), *Path(adapter).parents[:2]):
        if (folder / TINY_BASE_DIR).is_dir():
            base = folder / TINY_BASE_DIR
            return Phi4MultimodalForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    raise ModelError(f"{adapter} is not a tiny run: no {TINY_BASE_DIR}/ folder in it or its parents "
                     "(use --base with the model it was trained from)")
