"""A run's checkpoints: which one a resumed run continues, what it may change, and what each one keeps.

Resume restores the optimizer, the scheduler (its learning rates included), the RNG and the sampler's
position from the latest checkpoint, so a setting those hold cannot change on `--resume`: it is
refused, naming the setting, before anything of the run is written. The rest is honoured from the
resume step on, and the log says from which step. Only the latest checkpoint keeps the optimizer
state; older ones keep what the per-epoch table and `predict --adapter` read (`Slim`).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from pronlm.config import SAME, Config, ConfigError, InferenceConfig
from pronlm.run import Run

# Honoured on --resume: what happens from the resume step on, and nothing the restored state holds.
# num_train_epochs / max_steps lengthen (or shorten) the run: the cosine schedule's horizon is the new
# length from the resume step on, its learning rates so far stay as they were.
HONOURED = {"num_train_epochs", "max_steps", "logging_steps", "save_strategy", "save_steps", "max_grad_norm",
            "dataloader_num_workers", "gradient_checkpointing", "eval_split", "eval_untrained",
            "early_stop_patience", "overwrite", "split", *(f.name for f in fields(InferenceConfig))}
# Refused with the reason: the restored optimizer/scheduler/sampler state already holds them.
WHY = {"learning_rate": "the scheduler restored from the checkpoint keeps the learning rate it started with",
       "lr_scheduler_type": "the scheduler's state is restored from the checkpoint",
       "warmup_ratio": "the scheduler's state is restored from the checkpoint",
       "weight_decay": "the optimizer restored from the checkpoint keeps its weight decay",
       "adam_beta2": "the optimizer restored from the checkpoint keeps its betas",
       "per_device_train_batch_size": "the steps done so far and the sampler's order are counted in batches",
       "gradient_accumulation_steps": "the steps done so far and the sampler's order are counted in batches",
       "group_by_length": "the sampler's order is fixed by the run's seed and batching",
       "seed": "the sampler's order and the RNG state come from the checkpoint"}
RESUME_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")  # + rng_state_N.pth under DDP
RUN_LOSS = "run_loss.json"  # the summed training loss up to the checkpoint, so the summary covers the run


ADAPTER_BYTES, ADAM_BYTES = 4, 8  # per trainable parameter: its fp32 master weight; AdamW's two fp32 moments


def run_checkpoint_bytes(trainable: int, n_checkpoints: int, slim: bool = True) -> int:
    """Disk a run's checkpoints take (weights and optimizer state; configs and RNG state are a few KB): every
    one keeps its trainable weights, only the latest the optimizer state (`slim`), or all of them (HF's way)."""
    weights, state = ADAPTER_BYTES * trainable, ADAM_BYTES * trainable
    return n_checkpoints * weights + (min(n_checkpoints, 1) if slim else n_checkpoints) * state


class ResumeError(ConfigError):
    """`--resume` cannot continue the run as asked."""


def checkpoint_step(path: str | Path) -> int:
    return int(Path(path).name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-"))


def checkpoints(out: Path) -> list[Path]:
    """The run's checkpoint-N folders, oldest first."""
    found = [p for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=checkpoint_step)


def resume_point(out: Path) -> Path | None:
    """The latest complete checkpoint (trainer_state.json is written last), which must hold the optimizer."""
    complete = Run(out).checkpoints()  # trainer_state.json written, by step
    if not complete:
        return None
    last = complete[-1].folder
    if not (last / "optimizer.pt").is_file():
        raise ResumeError(f"{last} keeps no optimizer state (only a run's latest checkpoint does, and the later "
                          "ones are gone): --resume cannot continue it exactly; start again with overwrite=true")
    return last


def resume_changes(saved: Config, cfg: Config) -> dict[str, tuple]:
    """The settings `cfg` changes from the checkpoint's config: {name: (saved, new)}, all of them honoured.

    A change resume cannot honour is a `ResumeError` naming the setting and both values."""
    changed = {}
    for f in fields(Config):
        old, new = getattr(saved, f.name), getattr(cfg, f.name)
        same = SAME.get(f.name)
        if (same(new, old) if same and None not in (old, new) else old == new) or f.name == "output_dir":
            continue
        if f.name not in HONOURED:
            why = WHY.get(f.name, "it defines the model or the data the run trains on")
            raise ResumeError(f"--resume cannot change {f.name} ({old} -> {new}): {why}; resume with the run's "
                              f"own {f.name}, or start a new run (another output_dir, or overwrite=true)")
        changed[f.name] = (old, new)
    return changed


def check_resume(cfg: Config, checkpoint: Path) -> dict[str, tuple]:
    """The honoured changes of a resumed run; refused ones raise before anything is written."""
    run = Run.of(checkpoint)
    if run is None:
        raise ResumeError(f"{checkpoint} has no config.yaml: it was not written by pronlm train")
    return resume_changes(run.config(), cfg)


def rewind_log(path: Path, step: int) -> int:
    """Drop the log lines after `step` (what the killed run did past its checkpoint): one history. Returns
    how many were dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    path.write_text("".join(f"{line}\n" for line in kept))
    return len(lines) - len(kept)


def loss_before(checkpoint: Path | None) -> tuple[float, int] | None:
    """(summed training loss, steps) of the run up to `checkpoint`: (0, 0) for a fresh run, None when a
    checkpoint does not say (written before pronlm kept it)."""
    if checkpoint is None:
        return 0.0, 0
    if not (checkpoint / RUN_LOSS).is_file():
        return None
    saved = json.loads((checkpoint / RUN_LOSS).read_text())
    return saved["loss_sum"], saved["steps"]


class Slim(TrainerCallback):
    """After each save, the older checkpoints drop their resume state (optimizer, scheduler, RNG): only
    the latest one is resumed from. HF calls on_save after `_save_checkpoint` has written the new one
    whole (weights, optimizer, trainer_state.json last) and rotated, so a kill never leaves no state."""

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        newest = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        for folder in checkpoints(Path(args.output_dir)):
            if folder.name != newest:
                for path in [*(folder / name for name in RESUME_STATE), *folder.glob("rng_state_*.pth")]:
                    path.unlink(missing_ok=True)
