"""Loading Phi-4-multimodal (real or tiny), control tokens, adapters, quantisation, parameter checks.

Strategies (SPEC §2):
- speech-lora: keep training the base's shipped speech LoRA (the paper's "LoRA-only");
- unfreeze: the same, plus the audio encoder and the speech projector;
- new-lora: merge the speech LoRA into the base, optionally quantise the LM to 4-bit, train a fresh LoRA.
In every strategy the two control-token rows of the input embedding are trained through peft
`trainable_token_indices`; the real model ties lm_head to that matrix (`tie_word_embeddings`), and peft
then shares the same rows' delta with lm_head. The rest of the matrix stays frozen.

Every path here that only runs on the real checkpoint (hub loading, flash-attention, 4-bit, bf16) makes
its decision in a small function that the tests check on the real module names (`pronlm.model.phi4_config`).
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from pathlib import Path

import torch

from pronlm.config import EXPORT_FILE, NATIVE_REVISION, Config, ConfigError, ModelConfig
from pronlm.data.prompts import CONTROL_TOKENS
from pronlm.errors import PronlmError
from pronlm.run import TINY_BASE, Run

log = logging.getLogger(__name__)

# The language model's own projections; the audio encoder has layers of the same names.
LM_LORA_TARGETS = r"model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))"
AUDIO_ENCODER = "audio_embed.encoder"  # inside model.embed_tokens_extend
SPEECH_PROJECTOR = ("up_proj_for_speech", "down_proj_for_speech")  # not the *_for_vision_speech pair
# 4-bit skip list. transformers 5.2x matches it from the start of the module name or as a suffix
# (quantizers_utils.should_convert_module), so the audio/vision towers are named in full.
NOT_QUANTISED = ["lm_head", "model.embed_tokens_extend"]
PEFT_PREFIX = "base_model.model."  # peft's key prefix; the converted speech-lora file has none


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
    for task, tok in CONTROL_TOKENS.items():
        back = tokenizer.convert_ids_to_tokens(ids[task])
        pieces = tokenizer(tok, add_special_tokens=False).input_ids
        if back != tok or pieces != [ids[task]]:
            raise ModelError(f"control token {tok} does not round-trip in the tokenizer (id {ids[task]} -> "
                             f"{back!r}, text -> ids {pieces}): the task would be unreadable to the model")
    if model is not None:
        rows = model.get_input_embeddings().weight.shape[0]
        if max(ids.values()) >= rows:
            log.warning("control token ids %s exceed the %d embedding rows: resizing", ids, rows)
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        if max(ids.values()) >= model.get_input_embeddings().weight.shape[0]:
            raise ModelError(f"control token ids {ids} do not fit the embedding even after resizing")
    return ids


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


def resolve_base(model: ModelConfig, adapter: str | None = None) -> str:
    """The base as a hub id or a folder. `tiny` is the cached tiny model folder (`tiny_base_folder`);
    for a tiny run's adapter, the run's own copy of it (its audio normalisation fitted on the clips)."""
    if not model.is_tiny:
        return model.base
    if adapter is None:
        from pronlm.model.tiny import tiny_base_folder

        return str(tiny_base_folder(model.tiny_hidden_size, model.tiny_layers))
    folder = Run.tiny_base(adapter)
    if folder is not None:
        return str(folder)
    raise ModelError(f"{adapter} is not a tiny run: no {TINY_BASE}/ folder in it or its parents "
                     "(give base=FOLDER, the model it was trained from)")


def load_model(model: ModelConfig, adapter: str | None = None, *, training: bool = False,
               device: str | None = None, device_map=None, dtype: str | None = None):
    """(model, tokenizer): the one way every command loads a model, whatever the base.

    `training`: the base as `model.strategy` trains it (new-lora: the speech LoRA merged first).
    Else ready to generate, in eval mode on `device`: with `adapter`, the trained checkpoint on its
    base (the speech LoRA merged first when the run was new-lora); without, the untrained baseline
    (the speech LoRA merged: how Phi-4 hears out of the box). `dtype`: the recipe's for training,
    else `auto` (bf16 on a GPU that has it, fp32 on CPU) unless given.
    """
    if adapter is not None:
        check_adapter_folder(adapter)
    base = resolve_base(model, adapter)
    net, tokenizer = _from_pretrained(model, base, device_map, dtype=dtype or (model.dtype if training else "auto"))
    add_control_tokens(tokenizer, net)
    if model.strategy == "new-lora" or (not training and adapter is None):
        net = merge_speech_lora(model, net, base)
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


def _from_pretrained(model: ModelConfig, base: str, device_map=None, dtype: str = "auto"):
    from transformers import AutoTokenizer, Phi4MultimodalForCausalLM

    check_base_reachable(base, model.revision)
    kw = dict(revision=model.revision, trust_remote_code=model.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, **kw)
        net = Phi4MultimodalForCausalLM.from_pretrained(
            base, dtype=resolve_dtype(dtype), device_map=device_map,
            attn_implementation=attention_implementation(model.attn_implementation), **kw)
    except OSError as exc:
        raise ModelError(f"cannot load the base model {base} (revision {model.revision}): {exc}") from None
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

    if Path(base).is_dir() or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    if base.count("/") != 1 or base.startswith((".", "/", "~")):
        raise ModelError(f"base {base!r} is not a folder here, nor a hub id (owner/name): give the folder of a "
                         "Phi-4-multimodal in transformers' format, a hub id, or 'tiny'")
    if isinstance(try_to_load_from_cache(base, "config.json", revision=revision), str):
        return
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


def speech_adapter_dir(cfg: ModelConfig, base: str | None = None) -> str | None:
    """The built-in speech LoRA: a folder path, `<base>/speech-lora` locally, or from the hub.

    None for a local base folder that has none (the tiny model) and for a `pronlm export` folder,
    whose speech LoRA is merged already, whatever `speech_adapter` its run named.
    """
    base = base or cfg.base
    if (Path(base) / EXPORT_FILE).is_file():
        return None
    for local in (Path(cfg.speech_adapter), Path(base) / cfg.speech_adapter):
        if (local / "adapter_config.json").is_file():
            return str(local)
    if Path(base).is_dir() or cfg.is_tiny:
        return None
    from huggingface_hub import snapshot_download

    root = snapshot_download(cfg.base, revision=cfg.revision, allow_patterns=[f"{cfg.speech_adapter}/*"])
    return str(Path(root) / cfg.speech_adapter)


def _token_indices(model, token_ids: list[int]) -> dict[str, list[int]]:
    """Control-token rows to train: the input embedding; lm_head too only when it is a separate matrix
    (tied, peft gives lm_head the embedding's own delta)."""
    targets = {"embed_tokens": token_ids}
    if not model.config.tie_word_embeddings:
        targets["lm_head"] = token_ids
    return targets


def _modules_to_save(cfg: Config) -> list[str] | None:
    return [AUDIO_ENCODER, *SPEECH_PROJECTOR] if cfg.strategy == "unfreeze" else None


def speech_lora_config(cfg: Config, model, token_ids: list[int] | None = None, folder: str | None = None):
    """The shipped speech LoRA's own r, alpha and dropout, on the language model's targets.

    With `token_ids` (training), the control-token rows and, for unfreeze, the encoder and projector
    are trainable too.
    """
    from peft import LoraConfig

    lcfg = LoraConfig.from_pretrained(folder or speech_adapter_dir(cfg))
    lcfg.inference_mode = False
    lcfg.target_modules = LM_LORA_TARGETS
    lcfg.task_type = "CAUSAL_LM"
    if token_ids is not None:
        lcfg.trainable_token_indices = _token_indices(model, token_ids)
        lcfg.modules_to_save = _modules_to_save(cfg)
    return lcfg


def with_speech_lora(cfg: Config, model, token_ids: list[int] | None = None, folder: str | None = None):
    """The base wrapped in its shipped speech LoRA, every weight loaded and checked (`load_lora_weights`).

    The one way the speech LoRA is read: continued in training (speech-lora, unfreeze) or merged
    (`merge_speech_lora`: new-lora and the untrained baseline). `folder`: `speech_adapter_dir`'s
    answer when the caller has it already.
    """
    from peft import get_peft_model

    folder = folder or speech_adapter_dir(cfg)
    if folder is None:
        raise ConfigError(f"the base {cfg.base} has no built-in speech LoRA ({cfg.speech_adapter}/ is not in it): "
                          "set speech_adapter=FOLDER (a peft LoRA folder) or strategy=new-lora")
    return load_lora_weights(get_peft_model(model, speech_lora_config(cfg, model, token_ids, folder)), folder)


def merge_speech_lora(cfg: ModelConfig, model, base: str | None = None):
    """The base with its speech LoRA merged in: where new-lora starts, and how an untrained Phi-4 hears.

    A local base folder without one (the tiny model, an export that has it merged) is left as it is.
    """
    folder = speech_adapter_dir(cfg, base)
    if folder is None:
        log.info("the base %s has no speech LoRA folder: nothing to merge", base or cfg.base)
        return model
    return with_speech_lora(cfg, model, folder=folder).merge_and_unload()


def prepare_for_training(cfg: Config, model, tokenizer):
    """Wrap the base in the strategy's peft adapter; returns the PeftModel, trainable weights in fp32.

    For new-lora, `model` must already have the speech LoRA merged in (`merge_speech_lora`).
    """
    from peft import LoraConfig, get_peft_model

    token_ids = list(add_control_tokens(tokenizer, model).values())
    if cfg.strategy in ("speech-lora", "unfreeze"):
        return upcast_trainable(with_speech_lora(cfg, model, token_ids))
    if cfg.quantize_4bit:
        model = quantize_lm_4bit(model)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=LM_LORA_TARGETS, trainable_token_indices=_token_indices(model, token_ids),
                      task_type="CAUSAL_LM")
    return upcast_trainable(get_peft_model(model, lcfg))


def upcast_trainable(model):
    """Every trainable parameter in fp32: the optimizer's master weights (compute stays bf16 under autocast).

    HF Trainer keeps no fp32 copy of bf16 weights, and at lr 2e-5 an Adam step (~lr) is below bf16's
    resolution for most weights (2^-8 of their size): unfreeze's encoder and projector would barely move.
    """
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def read_lora_file(folder: str) -> dict[str, torch.Tensor]:
    """A saved LoRA's tensors under peft's keys, whether the file carries peft's prefix or not.

    transformers' conversion script (`extract_adapters_data`) writes the shipped speech-lora as
    `model.layers.0.self_attn.qkv_proj.lora_A.weight`; peft itself saves `base_model.model.model.…`.
    """
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        raise ModelError(f"no adapter_model.safetensors in {folder}")
    return {k if k.startswith(PEFT_PREFIX) else PEFT_PREFIX + k: v for k, v in load_file(str(path)).items()}


def load_lora_weights(peft_model, folder: str):
    """Put a saved LoRA's weights into a model that also has token rows / saved modules, and verify them.

    `PeftModel.from_pretrained` with extra `trainable_token_indices` fails (peft 0.21 looks for
    the token deltas in the file), and with keys it does not expect it leaves lora_B at zero behind a
    warning. So start from the model's own adapter state, overwrite it, and refuse to go on when a
    LoRA tensor of the targets got no value, when every lora_B is zero, or when a value did not land.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    saved = read_lora_file(folder)
    state = get_peft_model_state_dict(peft_model)
    unknown = sorted(set(saved) - set(state))
    if unknown:
        raise ModelError(f"{folder} holds weights outside the language model's LoRA targets, e.g. {unknown[:3]}")
    state.update(saved)
    set_peft_model_state_dict(peft_model, state)
    return check_lora_landed(peft_model, saved, folder)


def check_lora_landed(peft_model, saved: dict[str, torch.Tensor], folder: str, zero_is_error: bool = True):
    """Every LoRA tensor of the model's targets got the file's value, and not every lora_B is zero.

    All-zero lora_B is an error for the shipped speech LoRA (a failed conversion); for a trained
    adapter it only means it has not moved yet (a checkpoint after a warm-up step): a warning.
    """
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    lora_keys = {k for k in state if ".lora_A." in k or ".lora_B." in k}
    missing = sorted(lora_keys - set(saved))
    if missing:
        raise ModelError(f"{folder} has no value for {len(missing)} of the {len(lora_keys)} LoRA tensors of the "
                         f"language model's targets, e.g. {missing[:3]}")
    if not any(saved[k].any() for k in lora_keys if ".lora_B." in k):
        if zero_is_error:
            raise ModelError(f"every lora_B in {folder} is zero: this LoRA would change nothing")
        log.warning("every lora_B in %s is zero: this adapter has not moved from its start yet", folder)
    wrong = [k for k in saved if k in state and not torch.equal(state[k].to(saved[k].dtype).cpu(), saved[k])]
    if wrong:
        raise ModelError(f"{len(wrong)} tensors of {folder} did not reach the model, e.g. {wrong[:3]}")
    return peft_model


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


def training_dtypes(model, quantised: list[str] = (), dtype: torch.dtype = torch.bfloat16) -> Counter:
    """Parameter counts by the dtype training holds them in: the rule `prepare_for_training` applies.

    Trainable parameters are fp32 (master weights), the weights of the `quantised` linears (module names,
    e.g. `quantisable_linears(model)`) "nf4", every other parameter `dtype`. Works on the meta device, so
    a memory plan can count the real model without loading it. A tied embedding/lm_head counts once.
    """
    four_bit = {f"{name}.weight" for name in quantised}
    counts = Counter()
    for name, p in model.named_parameters():  # named_parameters() lists a shared tensor once
        base = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
        kind = "fp32" if p.requires_grad else "nf4" if base in four_bit else str(dtype).removeprefix("torch.")
        counts[kind] += p.numel()
    return counts


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


def parameter_summary(table: dict) -> str:
    lines = [f"parameters: {table['total']:,} total, {table['trainable']:,} trainable "
             f"({100 * table['trainable'] / max(table['total'], 1):.3f} %)"]
    lines += [f"  {g:<14}{n:>14,}" for g, n in sorted(table["by_group"].items())]
    return "\n".join(lines)


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
