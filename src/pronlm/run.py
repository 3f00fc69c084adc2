"""A run folder (a `pronlm train` output_dir) and its checkpoints: the one owner of their files.

A run describes itself (litgpt's `Config.from_checkpoint`): `config.yaml` and `prompts/` (the instructions
by content) in the run and in every `checkpoint-N/`, the tiny base it trained from (`tiny-base/`), the
development speakers, each checkpoint's `trainer_state.json`, the training log, the dev history and the
tables. Every command that reads or writes one of them asks a `Run`, so a later command needs only the folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pronlm.config import FIELDS, Config, ConfigError, flatten, load_template
from pronlm.errors import read_yaml

CONFIG = "config.yaml"
PROMPTS = {"apa_template": "prompts/apa.txt", "mdd_template": "prompts/mdd.txt",
           "wrd_template": "prompts/wrd.txt"}  # the instructions, by content
TINY_BASE = "tiny-base"  # a tiny run saves its random base here, so an adapter always has its base
DEV_SPEAKERS = "dev_speakers.json"
DEV_HISTORY = "dev_history.json"  # early_stop_patience: the development rows as training went, and the decision
TRAINER_STATE = "trainer_state.json"
LOG = "log.jsonl"
TABLE_JSON, TABLE_MD = "table.json", "table.md"  # the paper's Table 3 for the run (`pronlm.evaluation.table`)
# What a training run writes at its top level: a later `train` over the folder refuses, or removes them.
WRITTEN = (LOG, "train_result.json", "adapter_model.safetensors", "adapter_config.json", DEV_HISTORY)


@dataclass(frozen=True)
class Checkpoint:
    """A saved `checkpoint-N` of a run: its folder is an adapter; `epoch` is where it ends."""

    folder: Path
    step: int
    epoch: float


class Run:
    """A training output_dir, or one of its checkpoints (each describes itself the same way)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def __truediv__(self, name: str) -> Path:
        return self.folder / name

    @classmethod
    def of(cls, adapter: str | Path) -> Run | None:
        """The described folder an adapter belongs to: the adapter itself, or the run above it; None if neither."""
        return next((cls(f) for f in (Path(adapter), Path(adapter).parent) if (f / CONFIG).is_file()), None)

    def config(self) -> Config:
        """The config the folder was trained with, its templates read from its own prompt copies."""
        path = self / CONFIG
        if not path.is_file():
            raise ConfigError(f"{self.folder} has no {CONFIG}: give the output_dir of a `pronlm train` run")
        values = {k: v for k, v in flatten(read_yaml(path) or {}, str(path)).items() if k in FIELDS}
        for key, copy in PROMPTS.items():
            if (self / copy).is_file():
                values[key] = str(self / copy)
        return Config(**values)

    def describe(self, cfg: Config) -> None:
        """config.yaml and the prompt instructions actually used (by content), so the folder describes itself."""
        cfg.to_yaml(self / CONFIG)
        for key, copy in PROMPTS.items():
            if key[:3] not in cfg.tasks:
                continue  # a task the run does not have (the word task of a two-task run)
            (self / copy).parent.mkdir(parents=True, exist_ok=True)
            (self / copy).write_text(load_template(key[:3], getattr(cfg, key)) + "\n")

    def copy_description(self, out: Path) -> None:
        """config.yaml and the prompt texts as the run wrote them, into `out` (an export: `Run(out).config()`)."""
        shutil.copyfile(self / CONFIG, Path(out) / CONFIG)
        for copy in PROMPTS.values():
            if (self / copy).is_file():
                (Path(out) / copy).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self / copy, Path(out) / copy)

    @staticmethod
    def tiny_base(adapter: str | Path) -> Path | None:
        """The tiny base a tiny run saved: in the adapter folder, its run, or the run's parent; None if none."""
        return next((f / TINY_BASE for f in (Path(adapter), *Path(adapter).parents[:2])
                     if (f / TINY_BASE / "config.json").is_file()), None)

    def checkpoints(self) -> list[Checkpoint]:
        """The run's checkpoint-N folders that finished saving (a trainer_state.json), by step."""
        found = []
        for folder in self.folder.glob("checkpoint-*"):
            step = folder.name.removeprefix("checkpoint-")
            if step.isdigit() and (folder / TRAINER_STATE).is_file():
                found.append(Checkpoint(folder, int(step), json.loads((folder / TRAINER_STATE).read_text())["epoch"]))
        return sorted(found, key=lambda c: c.step)

    def global_step(self) -> int | None:
        """The step a checkpoint folder was saved at (its trainer_state.json); None for a folder without one."""
        state = self / TRAINER_STATE
        return json.loads(state.read_text()).get("global_step") if state.is_file() else None

    def dev_speakers(self) -> list[str]:
        """The development split's speakers this run held out (`pronlm.data.split`)."""
        path = self / DEV_SPEAKERS
        if not path.is_file():
            raise ConfigError(f"{path} not found: the run was trained without dev_fraction, so there is no "
                              "development split to evaluate")
        return json.loads(path.read_text())["speakers"]

    def is_training_output(self) -> bool:
        """Whether a training run wrote into the folder (its config.yaml then describes that run)."""
        return any((self / name).is_file() for name in ("adapter_config.json", TRAINER_STATE, LOG))

    def earlier_run(self) -> list[str]:
        """What an earlier training run left here: its checkpoints and top-level files."""
        return [p.name for p in sorted(self.folder.glob("checkpoint-*"))] + [f for f in WRITTEN if (self / f).exists()]

    def clear(self) -> None:
        """Remove what an earlier training run left here (`overwrite=true`)."""
        for path in self.folder.glob("checkpoint-*"):
            shutil.rmtree(path)
        for name in WRITTEN:
            (self / name).unlink(missing_ok=True)
