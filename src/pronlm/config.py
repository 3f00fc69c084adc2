"""One config dataclass for a run, filled from a YAML recipe and `key=value` overrides.

Recipes live in `src/pronlm/recipes/` (`pronlm train --recipe paper-lora`) or anywhere as a path.
The resolved config is saved as `config.yaml` beside every run's outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from pronlm.errors import PronlmError, read_yaml

STRATEGIES = ("speech-lora", "unfreeze", "new-lora")
NATIVE_REVISION = "refs/pr/70"  # the hub repo's transformers-native (non remote-code) weights


class ConfigError(PronlmError):
    pass


@dataclass
class Config:
    # model
    base: str = "microsoft/Phi-4-multimodal-instruct"  # or "tiny": random tiny model built from config
    revision: str | None = NATIVE_REVISION
    trust_remote_code: bool = False
    speech_adapter: str = "speech-lora"  # sub-folder of the base repo holding the built-in speech LoRA
    strategy: str = "speech-lora"  # speech-lora | unfreeze | new-lora (SPEC §2)
    lora_r: int = 64  # new-lora only; speech-lora keeps the shipped r=320, alpha=640
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    quantize_4bit: bool = False  # new-lora only: NF4 on the LM's linear layers (bitsandbytes, CUDA)
    attn_implementation: str = "auto"  # auto: flash_attention_2 when installed, else sdpa
    dtype: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    gradient_checkpointing: bool = False
    tiny_hidden_size: int = 64
    tiny_layers: int = 2
    # data
    corpus: str = "hf:mispeech/speechocean762"
    train_split: str = "train"
    apa_template: str = "default"
    mdd_template: str = "default"
    accent_policy: str = "unk"
    word_boundaries: bool = False
    max_audio_seconds: float = 30.0
    limit: int | None = None  # first N utterances only (smoke runs)
    # training
    output_dir: str = "runs/default"
    overwrite: bool = False  # train into an output_dir that holds an earlier run, removing it
    num_train_epochs: float = 4
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 8
    learning_rate: float = 2e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    group_by_length: bool = True
    save_strategy: str = "epoch"
    save_steps: int = 500
    logging_steps: int = 10
    dataloader_num_workers: int = 0
    seed: int = 42

    def __post_init__(self):
        if self.accent_policy not in ("unk", "canonical", "literal"):
            raise ConfigError(f"accent_policy must be unk, canonical or literal, not {self.accent_policy!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.strategy == "unfreeze" and self.quantize_4bit:
            raise ConfigError("strategy=unfreeze trains the audio encoder and projector, which cannot be done "
                              "on quantised weights: set quantize_4bit=false")
        if self.quantize_4bit and self.strategy != "new-lora":
            raise ConfigError("quantize_4bit needs strategy=new-lora (the speech LoRA is merged first)")

    @property
    def is_tiny(self) -> bool:
        return self.base == "tiny"

    def to_yaml(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))


def run_config(adapter: str | None) -> dict:
    """The config.yaml a training run saved, found in an adapter folder or its run folder; {} if none."""
    if adapter:
        for folder in (Path(adapter), Path(adapter).parent):
            if (folder / "config.yaml").is_file():
                return read_yaml(folder / "config.yaml") or {}
    return {}


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = resources.files("pronlm") / "recipes" / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    names = sorted(p.name.removesuffix(".yaml") for p in (resources.files("pronlm") / "recipes").iterdir())
    raise ConfigError(f"no recipe {name_or_path!r}: give a YAML path or one of {', '.join(names)}")


def _coerce(name: str, value: str, current):
    """Parse an override string with YAML (numbers, booleans, null) and check it fits the field."""
    parsed = yaml.safe_load(value) if isinstance(value, str) else value
    if isinstance(parsed, str) and isinstance(current, float):
        try:  # YAML 1.1 reads "1e-2" as a string
            parsed = float(parsed)
        except ValueError:
            pass
    if isinstance(current, bool) and not isinstance(parsed, bool):
        raise ConfigError(f"{name} takes true or false, not {value!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool) and parsed is not None:
        if not isinstance(parsed, (int, float)) or isinstance(parsed, bool):
            raise ConfigError(f"{name} takes a number, not {value!r}")
        return type(current)(parsed) if isinstance(current, float) else parsed
    if isinstance(current, str) and parsed is not None:
        return str(value)
    return parsed


def load_config(recipe: str | None = None, overrides: list[str] | dict | None = None) -> Config:
    """A recipe (name or path) plus `key=value` overrides, validated into a `Config`."""
    values = read_yaml(recipe_path(recipe)) or {} if recipe else {}
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {recipe} is not a mapping of key: value lines")
    known = {f.name: f for f in fields(Config)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"recipe {recipe} has unknown keys: {', '.join(unknown)}")
    if isinstance(overrides, dict):
        overrides = [f"{k}={v}" for k, v in overrides.items()]
    base = Config(**values)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ConfigError(f"override {item!r} is not key=value with a known key "
                              f"(keys: {', '.join(sorted(known))})")
        values[key] = _coerce(key, value, getattr(base, key))
    return Config(**values)
