"""Loading Phi-4-multimodal (real or tiny): the base, its tokenizer and feature extractor, and a trained
adapter on it, ready to train or to generate (`load_model`, the one way every command loads a model).

The adapters themselves are `pronlm.model.adapters`, 4-bit is `pronlm.model.quantize`. Every path here
that only runs on the real checkpoint (hub loading, flash-attention, bf16) makes its decision in a small
function that the tests check on the real module names (`pronlm.model.phi4_config`).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from pronlm.config import NATIVE_REVISION, ModelConfig
from pronlm.errors import ModelError, PronlmError
from pronlm.model.adapters import add_control_tokens, check_lora_landed, merge_speech_lora, read_lora_file
from pronlm.run import TINY_BASE, Run

log = logging.getLogger(__name__)


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def resolve_attention(name: str) -> str:
    if name != "auto":
        return name
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() else "sdpa"


def attention_implementation(name: str) -> dict[str, str]:
    """Attention per sub-config: the language model on `name`, the audio and vision encoders on sdpa.

    A plain string propagates to every sub-config, and the audio encoder's attention (a float
    relative-position bias mask, not causal) cannot run on flash-attention: it would crash, or run
    causal without its bias. Eager stays eager everywhere.
    """
    lm = resolve_attention(name)
    encoders = "eager" if lm == "eager" else "sdpa"
    return {"": lm, "audio_config": encoders, "vision_config": encoders}


def resolve_base(cfg: ModelConfig, adapter: str | None = None) -> str:
    """The base as a hub id or a folder. `tiny` is the cached tiny model folder (`tiny_base_folder`);
    for a tiny run's adapter, the run's own copy of it (its audio normalisation fitted on the clips)."""
    if not cfg.is_tiny:
        return cfg.base
    if adapter is None:
        from pronlm.model.tiny import tiny_base_folder

        return str(tiny_base_folder(cfg.tiny_hidden_size, cfg.tiny_layers))
    folder = Run.tiny_base(adapter)
    if folder is not None:
        return str(folder)
    raise ModelError(f"{adapter} is not a tiny run: no {TINY_BASE}/ folder in it or its parents "
                     "(give base=FOLDER, the model it was trained from)")


def load_model(cfg: ModelConfig, adapter: str | None = None, *, training: bool = False,
               device: str | None = None, device_map=None, dtype: str | None = None):
    """(model, tokenizer): the one way every command loads a model, whatever the base.

    `training`: the base as `cfg.strategy` trains it (new-lora: the speech LoRA merged first).
    Else ready to generate, in eval mode on `device`: with `adapter`, the trained checkpoint on its
    base (the speech LoRA merged first when the run was new-lora); without, the untrained baseline
    (the speech LoRA merged: how Phi-4 hears out of the box). `dtype`: the recipe's for training,
    else `auto` (bf16 on a GPU that has it, fp32 on CPU) unless given.
    """
    if adapter is not None:
        check_adapter_folder(adapter)
    base = resolve_base(cfg, adapter)
    net, tokenizer = _from_pretrained(cfg, base, device_map, dtype=dtype or (cfg.dtype if training else "auto"))
    add_control_tokens(tokenizer, net)
    if cfg.strategy == "new-lora" or (not training and adapter is None):
        net = merge_speech_lora(cfg, net, base)
    if training:
        return net, tokenizer
    if adapter is not None:
        from peft import PeftModel
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter)
        net = check_lora_landed(PeftModel.from_pretrained(net, adapter), read_lora_file(adapter), adapter,
                                zero_is_error=False)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return net.to(device).eval(), tokenizer


def _from_pretrained(cfg: ModelConfig, base: str, device_map=None, dtype: str = "auto"):
    from transformers import AutoTokenizer, Phi4MultimodalForCausalLM

    check_base_reachable(base, cfg.revision)
    kw = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, **kw)
        net = Phi4MultimodalForCausalLM.from_pretrained(
            base, dtype=resolve_dtype(dtype), device_map=device_map,
            attn_implementation=attention_implementation(cfg.attn_implementation), **kw)
    except OSError as exc:
        raise ModelError(f"cannot load the base model {base} (revision {cfg.revision}): {exc}") from None
    check_tied_embeddings(net)
    return net, tokenizer


def load_tokenizer(name):
    """A base's tokenizer by name ('tiny', a folder, a hub id) or a loaded one; `<|APA|>`/`<|MDD|>` added."""
    if not isinstance(name, str):
        tokenizer = name
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_base(ModelConfig(base=name)))
        except (OSError, ValueError) as exc:
            raise PronlmError(f"cannot load tokenizer {name!r}: {exc}") from exc
    add_control_tokens(tokenizer)
    return tokenizer


def check_base_reachable(base: str, revision: str | None) -> None:
    """A base that is neither a local folder nor in the hub cache must be reachable on the hub, else say so now.

    Without this, transformers retries for about a minute and ends in a raw OSError.
    """
    import os

    from huggingface_hub import HfApi, try_to_load_from_cache

    if Path(base).is_dir():
        return
    if base.count("/") != 1 or base.startswith((".", "/", "~")):
        raise ModelError(f"base {base!r} is not a folder here, nor a hub id (owner/name): give the folder of a "
                         "Phi-4-multimodal in transformers' format, a hub id, or 'tiny'")
    if isinstance(try_to_load_from_cache(base, "config.json", revision=revision), str):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelError(f"{base} (revision {revision}) is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: "
                         f"download it where there is a network (`hf download {base} --revision {revision} "
                         "--local-dir DIR`) and give the folder as the base")
    try:
        HfApi().model_info(base, revision=revision, timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure here means the download below would fail too
        raise ModelError(f"cannot fetch {base} (revision {revision}) from the Hugging Face hub, and it is not in "
                         f"the local cache ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). Download it "
                         f"where there is a network (`hf download {base} --revision {revision} --local-dir DIR`) "
                         "and give the folder as the base") from None


def check_tied_embeddings(model) -> None:
    """A config that ties lm_head to the input embedding must load with one shared matrix.

    The control-token rows are trained on the input embedding only; with an untied copy, lm_head
    would keep the untrained rows and the model could never emit what it learned to read.
    """
    if model.config.tie_word_embeddings and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise ModelError("the config ties lm_head to the input embedding, but the loaded model holds two "
                         "matrices: the checkpoint or the transformers version does not tie them")


def load_feature_extractor(base: str, revision: str | None = NATIVE_REVISION):
    """The base's own audio feature extractor (its preprocessor_config.json; give `resolve_base`'s answer)."""
    from transformers import Phi4MultimodalFeatureExtractor

    try:
        return Phi4MultimodalFeatureExtractor.from_pretrained(base, revision=revision)
    except OSError as exc:
        raise ModelError(f"no audio feature extractor (preprocessor_config.json) for {base} at revision "
                         f"{revision}: {exc}") from exc


def check_adapter_folder(adapter: str) -> None:
    """An adapter is a training output or checkpoint folder: say what is missing when it is not one."""
    folder = Path(adapter)
    if not folder.is_dir():
        raise ModelError(f"adapter folder {adapter} not found: give a training output_dir or one of its "
                         "checkpoint-N folders")
    if not (folder / "adapter_config.json").is_file():
        inside = sorted(p.name for p in folder.glob("checkpoint-*"))
        hint = f" (it holds {', '.join(inside[-3:])}: give one of those)" if inside else ""
        raise ModelError(f"{adapter} has no adapter_config.json: not a training output or checkpoint{hint}")
