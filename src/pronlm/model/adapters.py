"""Adapters: the control tokens, the base's shipped speech LoRA, each strategy's trainable weights, and the
checks that a saved LoRA landed and that training trains what the strategy names.

Strategies (SPEC §2):
- speech-lora: keep training the base's shipped speech LoRA (the paper's "LoRA-only");
- unfreeze: the same, plus the audio encoder and the speech projector;
- new-lora: merge the speech LoRA into the base, optionally quantise the LM to 4-bit, train a fresh LoRA.
In every strategy the two control-token rows of the input embedding are trained through peft
`trainable_token_indices`; the real model ties lm_head to that matrix (`tie_word_embeddings`), and peft
then shares the same rows' delta with lm_head. The rest of the matrix stays frozen.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch

from pronlm.config import EXPORT_FILE, Config, ConfigError, ModelConfig
from pronlm.data.prompts import CONTROL_TOKENS
from pronlm.errors import ModelError
from pronlm.model.quantize import quantize_lm_4bit

log = logging.getLogger(__name__)

# The language model's own projections; the audio encoder has layers of the same names.
LM_LORA_TARGETS = r"model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))"
AUDIO_ENCODER = "audio_embed.encoder"  # inside model.embed_tokens_extend
SPEECH_PROJECTOR = ("up_proj_for_speech", "down_proj_for_speech")  # not the *_for_vision_speech pair
PEFT_PREFIX = "base_model.model."  # peft's key prefix; the converted speech-lora file has none


def add_control_tokens(tokenizer, model=None) -> dict[str, int]:
    """Add `<|APA|>` / `<|MDD|>` / `<|WRD|>` as special tokens and return {task: id}.

    All three always, in that order, so a task's id is the same in every run, whichever tasks it trains.

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

    ids = add_control_tokens(tokenizer, model)
    token_ids = [ids[task] for task in cfg.tasks]  # the rows of the tasks this run trains, no other
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


def swap_adapter(peft_model, folder: str):
    """Put another checkpoint of the same run into a model loaded with one of its checkpoints, in place:
    every tensor of the model's adapter (LoRA, token rows, saved modules) is overwritten from `folder` and
    checked (`check_lora_landed`). A checkpoint whose tensors are not the model's (another rank, targets,
    strategy) is refused: it needs a model of its own."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    saved = read_lora_file(folder)
    state = get_peft_model_state_dict(peft_model)
    if set(saved) != set(state) or any(saved[k].shape != state[k].shape for k in saved):
        odd = sorted(set(saved) ^ set(state)) or [k for k in saved if saved[k].shape != state[k].shape]
        raise ModelError(f"{folder} holds another adapter than the loaded one (e.g. {odd[:2]}): load it on its own")
    set_peft_model_state_dict(peft_model, saved)
    return check_lora_landed(peft_model, saved, folder, zero_is_error=False)


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
