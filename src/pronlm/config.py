"""One config for every command, in four sections (model, data, training, inference), filled from a YAML recipe
and `key=value` overrides.

Recipes live in `src/pronlm/recipes/` (`pronlm train --recipe paper-lora`) or anywhere as a path;
with an adapter, its checkpoint's own config.yaml takes the recipe's place (`command_config`).
The resolved config is saved as `config.yaml` beside every command's outputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from pronlm.errors import PronlmError, read_json, read_yaml

STRATEGIES = ("speech-lora", "unfreeze", "new-lora")
BACKENDS = ("transformers", "vllm")
NATIVE_REVISION = "refs/pr/70"  # the hub repo's transformers-native (non remote-code) weights
EXPORT_FILE = "pronlm-export.json"  # `pronlm export` wrote the folder: a merged model with its run's config


class ConfigError(PronlmError):
    pass


def cache_dir() -> Path:
    """Where pronlm keeps what it builds or downloads once (the tiny model, the corpus's WAV files)."""
    return Path(os.environ.get("PRONLM_CACHE", Path.home() / ".cache" / "pronlm"))


@dataclass
class ModelConfig:
    """What the model is: the base, how it is adapted, and how it is held in memory."""

    base: str = "microsoft/Phi-4-multimodal-instruct"  # a hub id, a folder, or "tiny" (built once, cached)
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

    def check_model(self) -> None:
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


@dataclass
class DataConfig:
    """What the model reads: the corpus or a data folder, and how its targets and prompts are made."""

    corpus: str = "hf:mispeech/speechocean762"
    train_split: str = "train"
    data: str | None = None  # a folder with examples.jsonl (`pronlm prepare` or your own): trains on it, not corpus
    split: str | None = None  # the split prepare, predict and evaluate read; null: prepare train_split, the others test
    apa_template: str = "default"
    mdd_template: str = "default"
    accent_policy: str = "unk"
    word_boundaries: bool = False
    max_audio_seconds: float = 30.0
    limit: int | None = None  # first N utterances only (smoke runs)

    def check_data(self) -> None:
        if self.accent_policy not in ("unk", "canonical", "literal"):
            raise ConfigError(f"accent_policy must be unk, canonical or literal, not {self.accent_policy!r}")


@dataclass
class TrainingConfig:
    """How a run trains, saves, and evaluates its checkpoints afterwards (`pronlm.evaluation.table`)."""

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
    eval_split: str | None = None  # e.g. test (of `corpus`); null: no evaluation after training
    eval_untrained: bool = False  # also the base with no adapter: the paper's "no training" row
    dev_fraction: float = 0.0  # this share of train_split's speakers held out as a development split
    early_stop_patience: int | None = None  # stop once the dev total PCC has not improved for N epochs

    def check_training(self) -> None:
        if self.eval_split not in (None, "train", "test"):
            raise ConfigError(f"eval_split must be test, train or null, not {self.eval_split!r}")
        if not 0 <= self.dev_fraction < 1:
            raise ConfigError(f"dev_fraction is a share of the training speakers, 0 <= x < 1, not {self.dev_fraction}")
        if self.eval_untrained and not self.eval_split:
            raise ConfigError("eval_untrained adds the untrained row to the eval_split table: set eval_split=test")
        if (self.eval_split or self.dev_fraction) and self.save_strategy == "no":
            raise ConfigError("eval_split and dev_fraction evaluate the saved checkpoints: set save_strategy=epoch")
        if self.early_stop_patience is not None:
            if type(self.early_stop_patience) is not int or self.early_stop_patience < 1:
                raise ConfigError(f"early_stop_patience is a number of epochs, at least 1 (or null: off), "
                                  f"not {self.early_stop_patience!r}")
            if not self.dev_fraction:
                raise ConfigError("early_stop_patience stops on the development split: set dev_fraction=0.1")
            if self.save_strategy != "epoch":
                raise ConfigError("early_stop_patience evaluates each epoch's checkpoint: set save_strategy=epoch")


@dataclass
class InferenceConfig:
    """How answers are generated: in this process or by a vLLM server, free or under the grammar."""

    constrained: bool = True  # decode under the answer's JSON grammar (pronlm.evaluation.grammar)
    backend: str = "transformers"  # transformers: the model in this process; vllm: a running vLLM server
    vllm_url: str = "http://localhost:8000/v1"  # the server's OpenAI-compatible API (backend=vllm)
    vllm_model: str | None = None  # the served model's name; null: the server's only one (GET /models)
    request_timeout: float = 120.0  # seconds one vLLM request may take before predict stops with an error
    max_new_tokens: int = 256  # tokens an answer may take; a longer one is cut (and fails to parse)

    def check_inference(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if not str(self.vllm_url).startswith(("http://", "https://")):
            raise ConfigError(f"vllm_url is the vLLM server's API address, like http://localhost:8000/v1, "
                              f"not {self.vllm_url!r}")
        if isinstance(self.request_timeout, bool) or not isinstance(self.request_timeout, (int, float)) \
                or self.request_timeout <= 0:
            raise ConfigError(f"request_timeout is in seconds and must be above 0, not {self.request_timeout!r}")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig, "inference": InferenceConfig}
OWNER = {f.name: section for section, cls in SECTIONS.items() for f in fields(cls)}  # field -> its one section


@dataclass
class Config(InferenceConfig, TrainingConfig, DataConfig, ModelConfig):
    """The whole resolved config: one flat namespace (`cfg.base`, `cfg.seed`), each field owned by one
    section; `load_model` takes the `ModelConfig` part. Validated here, once, on construction."""

    def __post_init__(self):
        self.check_model()
        self.check_data()
        self.check_training()
        self.check_inference()
        if self.dev_fraction and self.data:
            raise ConfigError("dev_fraction holds out speakers of corpus/train_split; a data folder trains as it is")

    def section(self, name: str) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(SECTIONS[name])}

    def to_yaml(self, path: str | Path) -> None:
        """The config as YAML, one mapping per section (model, data, training, inference)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump({name: self.section(name) for name in SECTIONS}, sort_keys=False))


def flatten(values: dict, source: str) -> dict:
    """A recipe or config.yaml's mapping as flat fields: `model:`/`data:`/`training:` sections or flat keys.

    A key under a section it does not belong to is an error naming its section.
    """
    flat = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            for name, item in value.items():
                if name in OWNER and OWNER[name] != key:
                    raise ConfigError(f"{source}: {name} belongs under {OWNER[name]}:, not {key}:")
                flat[name] = item
        else:
            flat[key] = value
    return flat


TEMPLATES = resources.files("pronlm") / "templates"  # the packaged prompt templates, `{task}_{name}.txt`


def load_template(task: str, name_or_path: str = "default") -> str:
    """The text of a template field (`apa_template`, `mdd_template`): packaged by name (`default`,
    `short`, in `pronlm/templates/`) or any text file by path."""
    packaged_tasks = sorted({p.name.split("_")[0] for p in TEMPLATES.iterdir()})
    if task not in packaged_tasks:
        raise ConfigError(f"unknown task {task!r}: expected one of {', '.join(packaged_tasks)}")
    path = Path(name_or_path)
    if path.suffix == ".txt" or "/" in name_or_path:
        if not path.is_file():
            raise ConfigError(f"{task} prompt template file {path} not found")
        return path.read_text().strip()
    packaged = TEMPLATES / f"{task}_{name_or_path}.txt"
    if not packaged.is_file():
        names = sorted(p.name for p in TEMPLATES.iterdir())
        raise ConfigError(f"no {task} prompt template {name_or_path!r}: give a .txt path or one of {names}")
    return packaged.read_text().strip()


def export_config(base: str | None) -> Config | None:
    """The run config a `pronlm export` folder carries, with the folder itself as the base; None for any other base.

    So `pronlm predict base=DIR` prompts the exported model as its checkpoint was prompted.
    """
    from pronlm.run import Run  # run.py builds on this module

    if not base or not (Path(base) / EXPORT_FILE).is_file():
        return None
    layout = read_json(Path(base) / EXPORT_FILE).get("layout")
    if layout != "transformers":
        raise ConfigError(f"{base} is a {layout}-layout export (for vLLM): pronlm loads the transformers layout "
                          "(`pronlm export` without --layout vllm)")
    cfg = Run(base).config()
    return dataclasses.replace(cfg, base=str(base), revision=None)


def _stated_base(flags: dict | None, overrides) -> str | None:
    """The base a command line names (`--base X` or `base=X`), if any."""
    bases = [item.partition("=")[2] for item in overrides if item.partition("=")[0] == "base"]
    return bases[-1] if bases else (flags or {}).get("base", (None, None))[1]


# The fields that define a trained model: a later command may not change them (`command_config`).
MODEL_FIELDS = ("base", "revision", "strategy", "apa_template", "mdd_template", "accent_policy", "word_boundaries")
INFERENCE_DEFAULTS = {"base": "tiny"}  # a model command with neither recipe nor checkpoint: offline, on CPU


def agree(shown: str, given, saved, same=None):
    """`given`, unless it disagrees with the checkpoint's `saved`: then an error naming both values."""
    if not (same(given, saved) if same and given is not None and saved is not None else given == saved):
        raise ConfigError(f"{shown} disagrees with the checkpoint, which was trained with {saved}: "
                          "leave it out to use the checkpoint's own")
    return given


def _same_base(given: str, kept: str) -> bool:
    return given == kept or (Path(given).exists() and Path(given).resolve() == Path(kept).resolve())


def _same_template(task: str):
    return lambda given, kept: load_template(task, given) == load_template(task, kept)  # by content


SAME = {"base": _same_base, "apa_template": _same_template("apa"), "mdd_template": _same_template("mdd")}


def predictions_config(predictions: str | Path) -> Path:
    """Where `pronlm predict` saves its config: beside the file (test.jsonl -> test.config.yaml), so a
    predictions file inside a checkpoint folder leaves the checkpoint's own config.yaml alone."""
    return Path(predictions).with_suffix(".config.yaml")


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = resources.files("pronlm") / "recipes" / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    names = sorted(p.name.removesuffix(".yaml") for p in (resources.files("pronlm") / "recipes").iterdir())
    raise ConfigError(f"no recipe {name_or_path!r}: give a YAML path or one of {', '.join(names)}")


FIELDS = {f.name for f in fields(Config)}
STR_FIELDS = {f.name: f.type == "str | None" for f in fields(Config)}  # text fields that may be null


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
    if (isinstance(current, str) or STR_FIELDS.get(name)) and parsed is not None:
        return str(value)  # a path or name that YAML would read as a number ("data=2024")
    return parsed


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or key not in FIELDS:
        raise ConfigError(f"override {item!r} is not key=value with a known key (keys: {', '.join(sorted(FIELDS))})")
    return key, value


def load_config(recipe: str | None = None, overrides: list[str] | dict | None = None) -> Config:
    """A recipe (name or path) plus `key=value` overrides, validated into a `Config`."""
    values = read_yaml(recipe_path(recipe)) or {} if recipe else {}
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {recipe} is not a mapping of key: value lines")
    values = flatten(values, f"recipe {recipe}")
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ConfigError(f"recipe {recipe} has unknown keys: {', '.join(unknown)}")
    if isinstance(overrides, dict):
        overrides = [f"{k}={v}" for k, v in overrides.items()]
    base = Config(**values)
    for item in overrides or []:
        key, value = _split_override(item)
        values[key] = _coerce(key, value, getattr(base, key))
    return Config(**values)


def command_config(recipe: str | None = None, overrides: list[str] = (), flags: dict | None = None,
                   adapter: str | None = None, defaults: dict | None = None) -> Config:
    """The config a command runs with, validated once.

    The starting point is the checkpoint's own config when `adapter` has one (a `recipe` is then only
    checked against it), else the recipe, else `defaults`. Then `flags` ({field: (as typed, value)}:
    `--accent-policy X`) and `key=value` overrides. A flag and an override that disagree, or either
    (or the recipe) disagreeing with the checkpoint on a field that defines the model, is an error
    naming both values.
    """
    from pronlm.run import Run  # run.py builds on this module

    if adapter:
        run = Run.of(adapter)
        saved = run.config() if run else None
    else:
        saved = export_config(_stated_base(flags, overrides))
    start = saved or load_config(recipe, None if recipe else defaults)
    given: dict[str, tuple[str, object]] = {}
    for key, (shown, value) in (flags or {}).items():
        given[key] = (shown, _coerce(key, value, getattr(start, key)))
    for item in overrides:
        key, value = _split_override(item)
        value = _coerce(key, value, getattr(start, key))
        if key in given and key in (flags or {}) and given[key][1] != value:
            raise ConfigError(f"{given[key][0]} disagrees with {item}: give one of them")
        given[key] = (item, value)
    values = dataclasses.asdict(start) | {key: value for key, (_, value) in given.items()}
    if saved is not None:
        stated = load_config(recipe) if recipe else None
        for key in MODEL_FIELDS:
            if key in given:
                agree(given[key][0], given[key][1], getattr(saved, key), SAME.get(key))
            elif stated:
                value = getattr(stated, key)
                agree(f"recipe {recipe} ({key}: {value})", value, getattr(saved, key), SAME.get(key))
        if "limit" not in given:
            values["limit"] = None  # the run's limit counted its training utterances, not what is asked now
    return Config(**values)
