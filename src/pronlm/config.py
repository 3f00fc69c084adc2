"""One config for every command, in four sections (model, data, training, inference), filled from a YAML recipe
and `key=value` overrides.

Recipes live in `src/pronlm/recipes/` (`pronlm train --recipe paper-lora`) or anywhere as a path;
with an adapter, its checkpoint's own config.yaml takes the recipe's place (`command_config`).
The resolved config is saved as `config.yaml` beside every command's outputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from pronlm.errors import PronlmError, read_json, read_yaml

STRATEGIES = ("speech-lora", "unfreeze", "new-lora")
TASKS = ("apa", "mdd", "wrd")  # sentence scores, heard words and phones (the paper's two), word scores (ours)
BACKENDS = ("transformers", "vllm")
SPLITS = ("train", "test")  # SpeechOcean762's
PROMPT_LAYOUTS = ("paper", "instructions-first")  # pronlm.data.prompts.render_prompt
NATIVE_REVISION = "refs/pr/70"  # the hub repo's transformers-native (non remote-code) weights
EXPORT_FILE = "pronlm-export.json"  # `pronlm export` wrote the folder: a merged model with its run's config


class ConfigError(PronlmError):
    pass


def cache_dir() -> Path:
    """Where pronlm keeps what it builds or downloads once (the tiny model, the corpus's WAV files)."""
    return Path(os.environ.get("PRONLM_CACHE", Path.home() / ".cache" / "pronlm"))


def setting(default, help: str, **accepts):
    """A config field: its default, one line of meaning (shown by `--help`), and what it accepts beyond its
    type (`choices`; `min`/`max` inclusive, `above` exclusive), checked by `check_field` in every `Config`."""
    return field(default=default, metadata={"help": help, **accepts})


@dataclass
class ModelConfig:
    """What the model is: the base, how it is adapted, and how it is held in memory."""

    base: str = setting("microsoft/Phi-4-multimodal-instruct", 'a hub id, a folder, or "tiny" (built once, cached)')
    revision: str | None = setting(NATIVE_REVISION, "the hub revision of the base (refs/pr/70: the transformers-"
                                   "native weights); null: the default branch")
    trust_remote_code: bool = setting(False, "run the base repo's own code (never needed for the native weights)")
    speech_adapter: str = setting("speech-lora", "sub-folder of the base repo holding the built-in speech LoRA")
    strategy: str = setting("speech-lora", "speech-lora: train the shipped speech LoRA; unfreeze: also the audio "
                            "encoder and projector; new-lora: merge it, train a new LoRA (SPEC §2)", choices=STRATEGIES)
    lora_r: int = setting(64, "rank of the new LoRA (new-lora only; speech-lora keeps the shipped r=320)", min=1)
    lora_alpha: int = setting(128, "scale of the new LoRA (new-lora only; speech-lora keeps alpha=640)", min=1)
    lora_dropout: float = setting(0.05, "dropout on the new LoRA's input (new-lora only)", min=0, below=1)
    quantize_4bit: bool = setting(False, "new-lora only: NF4 on the LM's linear layers (bitsandbytes, CUDA)")
    attn_implementation: str = setting("auto", "auto: flash_attention_2 when installed, else sdpa",
                                       choices=("auto", "flash_attention_2", "sdpa", "eager"))
    dtype: str = setting("auto", "weights for training; auto: bf16 on a GPU that supports it, else fp32",
                         choices=("auto", "bf16", "fp16", "fp32"))
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, slower")
    tiny_hidden_size: int = setting(64, 'hidden size of base="tiny"', min=8)
    tiny_layers: int = setting(2, 'layers of base="tiny"', min=1)

    def check_model(self) -> None:
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

    corpus: str = setting("hf:mispeech/speechocean762", "SpeechOcean762: its folder, or hf:mispeech/speechocean762")
    train_split: str = setting("train", "the corpus split training reads", choices=SPLITS)
    data: str | None = setting(None, "a folder with examples.jsonl (`pronlm prepare` or your own): trains on it "
                               "(predict: predicts it), not the corpus")
    split: str | None = setting(None, "the split prepare, predict and evaluate read; null: prepare train_split, "
                                "the others test", choices=SPLITS)
    apa_template: str = setting("default", "APA prompt instructions: a packaged name (default, short) or a .txt path")
    mdd_template: str = setting("default", "MDD prompt instructions: a packaged name (default, short) or a .txt path")
    tasks: list[str] = field(default_factory=lambda: ["apa", "mdd"], metadata={
        "help": "the tasks trained and asked: apa, mdd (the paper's two) and wrd (word scores), e.g. apa,mdd,wrd",
        "choices": TASKS})
    wrd_template: str = setting("default", "word-task prompt instructions (`{text}`: where the sentence's words go): "
                                "a packaged name (default, short) or a .txt path")
    prompt_layout: str = setting("paper", "where the audio goes: paper (Fig. 3, before the instructions) or "
                                 "instructions-first (after them: a prefix cache such as vLLM's reuses the "
                                 "instructions; quality unmeasured)", choices=PROMPT_LAYOUTS)
    accent_policy: str = setting("unk", "what an accented phone (annotated with *) becomes in the MDD target: <unk>, "
                                 "the canonical phone, or the phone as annotated", choices=("unk", "canonical", "literal"))
    word_boundaries: bool = setting(False, "separate the MDD target's words with | (the paper: no separators)")
    max_audio_seconds: float = setting(30.0, "the longest clip taken, in seconds (the audio encoder takes 40)", above=0)
    limit: int | None = setting(None, "the first N utterances only (smoke runs); null: all", min=1)



@dataclass
class TrainingConfig:
    """How a run trains, saves, and evaluates its checkpoints afterwards (`pronlm.evaluation.table`)."""

    output_dir: str = setting("runs/default", "the run's folder: checkpoints, logs, config, table")
    overwrite: bool = setting(False, "train into an output_dir that holds an earlier run, removing it")
    num_train_epochs: float = setting(4, "epochs to train (the paper evaluates epochs 1-4)", above=0)
    max_steps: int = setting(-1, "optimizer steps to train, overriding the epochs; -1: the epochs decide", min=-1)
    per_device_train_batch_size: int = setting(8, "utterance examples per step on each device (the paper: 8)", min=1)
    gradient_accumulation_steps: int = setting(8, "steps summed per update (the paper: 8, effective batch 64)", min=1)
    learning_rate: float = setting(2e-5, "peak learning rate (the paper: 2e-5)", above=0)
    lr_scheduler_type: str = setting("cosine", "transformers' scheduler name (cosine, linear, constant, ...)")
    warmup_ratio: float = setting(0.03, "share of the steps spent warming the learning rate up", min=0, max=1)
    weight_decay: float = setting(0.01, "AdamW weight decay", min=0)
    adam_beta2: float = setting(0.999, "AdamW beta2", min=0, below=1)
    max_grad_norm: float = setting(1.0, "gradient clipping norm; 0: no clipping", min=0)
    group_by_length: bool = setting(True, "batch examples of similar length together (less padding)")
    save_strategy: str = setting("epoch", "when to save a checkpoint: every epoch, every save_steps, or never",
                                 choices=("epoch", "steps", "no"))
    save_steps: int = setting(500, "steps between checkpoints with save_strategy=steps", min=1)
    logging_steps: int = setting(10, "steps between lines of log.jsonl", min=1)
    dataloader_num_workers: int = setting(0, "processes loading batches; 0: in the training process", min=0)
    seed: int = setting(42, "seed of the data order and the new LoRA's initial weights", min=0)
    eval_split: str | None = setting(None, "after training, evaluate every checkpoint on this corpus split (test: "
                                     "the paper's Table 3); null: none", choices=SPLITS)
    eval_untrained: bool = setting(False, "also the base with no adapter: the paper's \"no training\" row")
    dev_fraction: float = setting(0.0, "this share of train_split's speakers held out as a development split",
                                  min=0, below=1)
    early_stop_patience: int | None = setting(None, "stop once the dev total PCC has not improved for N epochs; "
                                              "null: off", min=1)

    def check_training(self) -> None:
        if self.max_steps == 0:
            raise ConfigError("max_steps is the number of steps to train, at least 1, or -1 (the epochs decide), not 0")
        if self.eval_untrained and not self.eval_split:
            raise ConfigError("eval_untrained adds the untrained row to the eval_split table: set eval_split=test")
        if (self.eval_split or self.dev_fraction) and self.save_strategy == "no":
            raise ConfigError("eval_split and dev_fraction evaluate the saved checkpoints: set save_strategy=epoch")
        if self.early_stop_patience is not None:
            if not self.dev_fraction:
                raise ConfigError("early_stop_patience stops on the development split: set dev_fraction=0.1")
            if self.save_strategy != "epoch":
                raise ConfigError("early_stop_patience evaluates each epoch's checkpoint: set save_strategy=epoch")


@dataclass
class InferenceConfig:
    """How answers are generated: in this process or by a vLLM server, free or under the grammar.

    Saved beside what they produced (`predictions_config`), as everything that shapes an answer; the batch
    size is each command's own (`--batch-size`): it changes how fast, not what is answered.
    """

    constrained: bool = setting(True, "decode under the answer's JSON grammar (pronlm.evaluation.grammar); "
                                "false: free text, as the paper")
    backend: str = setting("transformers", "transformers: the model in this process; vllm: a running vLLM server",
                           choices=BACKENDS)
    vllm_url: str = setting("http://localhost:8000/v1", "the vLLM server's OpenAI-compatible API (backend=vllm)")
    vllm_model: str | None = setting(None, "the served model's name; null: the server's only one (GET /models)")
    request_timeout: float = setting(120.0, "seconds one vLLM request may take before predict stops with an error",
                                     above=0)
    max_new_tokens: int = setting(256, "tokens an answer may take; a longer one is cut (and fails to parse)", min=1)

    def check_inference(self) -> None:
        if not str(self.vllm_url).startswith(("http://", "https://")):
            raise ConfigError(f"vllm_url is the vLLM server's API address, like http://localhost:8000/v1, "
                              f"not {self.vllm_url!r}")


KINDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}
LIST_KIND = "list[str]"  # `tasks`: distinct choices, from a YAML list or comma-separated text


def accepts(f) -> str:
    """What field `f` takes, in words: `a whole number >= 1, or null`."""
    kind, m = f.type.split(" | ")[0], f.metadata
    said = f"one of {', '.join(m['choices'])}" if "choices" in m else KINDS[kind]
    bounds = [f"{sign} {m[key]:g}" for key, sign in (("min", ">="), ("above", ">"), ("max", "<="), ("below", "<"))
              if key in m]
    return said + (" " + " and ".join(bounds) if bounds else "") + (", or null" if f.type.endswith("| None") else "")


def check_field(f, value):
    """`value` as field `f` holds it (an int where a float goes becomes a float), or a `ConfigError` naming
    the field, what it takes and what it was given: the one check of every value, from files and flags alike."""
    kind, m = f.type.split(" | ")[0], f.metadata
    if value is None and f.type.endswith("| None"):
        return None
    if kind == LIST_KIND:
        return _check_list(f, value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "float" and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-5" as text
            value, number = float(value), True
        except ValueError:
            pass
    if kind == "int" and isinstance(value, float) and value.is_integer():
        value = int(value)
    fits = {"bool": isinstance(value, bool), "int": number and isinstance(value, int), "float": number,
            "str": isinstance(value, str) or number}[kind]
    if fits:
        value = float(value) if kind == "float" else str(value) if kind == "str" else value
        fits = (value in m["choices"] if "choices" in m else True) and all(
            ok(value, m[key]) for key, ok in BOUNDS.items() if key in m)
    if not fits:
        raise ConfigError(f"{f.name} takes {accepts(f)}, not {value!r}")
    return value


def _check_list(f, value) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or len(set(items)) != len(items) \
            or any(v not in f.metadata["choices"] for v in items):
        raise ConfigError(f"{f.name} takes distinct items of {', '.join(f.metadata['choices'])} (a list, or "
                          f"comma-separated), not {value!r}")
    return list(items)


BOUNDS = {"min": lambda v, b: v >= b, "above": lambda v, b: v > b, "max": lambda v, b: v <= b,
          "below": lambda v, b: v < b}


SECTIONS = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig, "inference": InferenceConfig}
OWNER = {f.name: section for section, cls in SECTIONS.items() for f in fields(cls)}  # field -> its one section


@dataclass
class Config(InferenceConfig, TrainingConfig, DataConfig, ModelConfig):
    """The whole resolved config: one flat namespace (`cfg.base`, `cfg.seed`), each field owned by one
    section; `load_model` takes the `ModelConfig` part. Validated here, once, on construction."""

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, check_field(f, getattr(self, f.name)))
        self.check_model()
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
MODEL_FIELDS = ("base", "revision", "strategy", "apa_template", "mdd_template", "wrd_template", "prompt_layout",
                "accent_policy", "word_boundaries")
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


SAME = {"base": _same_base, "apa_template": _same_template("apa"), "mdd_template": _same_template("mdd"),
        "wrd_template": _same_template("wrd")}


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


FIELD = {f.name: f for f in fields(Config)}
FIELDS = set(FIELD)


def _coerce(name: str, value):
    """An override (`key=value`, `--flag value`) parsed with YAML (numbers, booleans, null), checked by its field."""
    f = FIELD[name]
    try:
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
    except yaml.YAMLError:
        parsed = value
    if f.type.split(" | ")[0] == "str" and parsed is not None:
        parsed = str(value)  # a path or name that YAML would read as a number ("data=2024")
    return check_field(f, parsed)


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or key not in FIELDS:
        raise ConfigError(f"override {item!r} is not key=value with a known key (keys: {', '.join(sorted(FIELDS))})")
    return key, value


def named(make, values: dict, source: str):
    """`make(**values)`, its `ConfigError` prefixed with the file the values came from."""
    try:
        return make(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


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
    named(Config, values, f"recipe {recipe}" if recipe else "the built-in defaults")
    for item in overrides or []:
        key, value = _split_override(item)
        values[key] = _coerce(key, value)
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

    if adapter and not Path(adapter).is_dir():  # before anything else: no default corpus or base is fetched for it
        raise ConfigError(f"adapter folder {adapter} not found: give a training output_dir or one of its "
                          "checkpoint-N folders")
    if adapter:
        run = Run.of(adapter)
        saved = run.config() if run else None
    else:
        saved = export_config(_stated_base(flags, overrides))
    start = saved or load_config(recipe, None if recipe else defaults)
    given: dict[str, tuple[str, object]] = {}
    for key, (shown, value) in (flags or {}).items():
        given[key] = (shown, _coerce(key, value))
    for item in overrides:
        key, value = _split_override(item)
        value = _coerce(key, value)
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
        untrained = [t for t in values["tasks"] if t not in saved.tasks]
        if untrained:  # its control-token row was never trained: the answer would be noise
            raise ConfigError(f"{given['tasks'][0] if 'tasks' in given else f'recipe {recipe}'} asks for "
                              f"{', '.join(untrained)}, which the checkpoint was not trained on (its tasks: "
                              f"{', '.join(saved.tasks)}): ask for those, or train with tasks=apa,mdd,wrd")
        if "limit" not in given:
            values["limit"] = None  # the run's limit counted its training utterances, not what is asked now
    return Config(**values)
