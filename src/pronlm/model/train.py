"""The training recipe: examples from the corpus, the strategy's adapter, HF Trainer, checks that it trains.

Runs as is on one device, and under `torchrun` / `accelerate launch` with several processes (DDP).
Before the first step it prints the parameter table and stops when nothing, or something the
strategy does not name, is trainable; it also checks the first batch's labels are answer-only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from pronlm.config import Config, ConfigError
from pronlm.data.audio import load_audio
from pronlm.data.prepare import read_examples, usable_utterances
from pronlm.data.prompts import TASKS, Example, PromptSet, build_examples
from pronlm.data.records import UtteranceError
from pronlm.data.split import dev_speakers, save_dev_speakers
from pronlm.data.targets import AccentPolicy
from pronlm.errors import PronlmError
from pronlm.model.checkpoints import RUN_LOSS, Slim, check_resume, checkpoint_step, loss_before, resume_point, rewind_log
from pronlm.model.collate import IGNORE_INDEX, Collator, audio_limit, n_audio_tokens
from pronlm.model.adapters import check_trainable, parameter_summary, parameter_table, prepare_for_training
from pronlm.model.load import load_feature_extractor, load_model, resolve_base, resolve_dtype
from pronlm.model.sampler import EpochSampler
from pronlm.run import LOG, TINY_BASE, Run

log = logging.getLogger(__name__)


class ExampleDataset(torch.utils.data.Dataset):
    """Examples plus each one's expected sequence length (for length-grouped batches)."""

    def __init__(self, examples: list[Example], lengths: list[int]):
        self.examples, self.lengths = examples, lengths

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def answer_logits_only(inputs: dict) -> dict:
    """A training batch that asks the model for logits only at the positions whose next token is a label
    (`logits_to_keep`, a bool mask: the logits come back flattened, [labels, vocab]) and gives the loss
    those labels in the same order (`shift_labels`, which HF's causal-LM loss takes instead of shifting):
    the loss's terms, sum and divisor are the ones of the logits at every position. No labels: as it was."""
    labels = inputs.get("labels")
    if labels is None:
        return inputs
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    keep = shifted != IGNORE_INDEX
    return {**inputs, "logits_to_keep": keep, "shift_labels": shifted[keep]}


class PronlmTrainer(Trainer):
    """HF Trainer plus a resumable shuffle, examples/s in every log (TensorBoard and JSONL), and the run's
    summed loss in every checkpoint (`loss_before`: the sum up to the checkpoint a resumed run started from)."""

    loss_before = 0.0

    def _save_checkpoint(self, model, trial):
        if self.args.should_save:  # before HF's files: its trainer_state.json, written last, marks a whole checkpoint
            folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            total = self.loss_before + self._total_loss_scalar + self._tr_loss.item()
            (folder / RUN_LOSS).write_text(json.dumps({"loss_sum": total, "steps": self.state.global_step}))
        super()._save_checkpoint(model, trial)

    def log(self, logs: dict, *args, **kwargs):
        now, step = time.perf_counter(), self.state.global_step
        last_time, last_step = getattr(self, "_rate_mark", (None, 0))
        if "loss" in logs and last_time is not None and step > last_step:
            per_step = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            logs["examples_per_second"] = round((step - last_step) * per_step / (now - last_time), 3)
        if "loss" in logs or last_time is None:
            self._rate_mark = (now, step)
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """HF's loss with logits only where a label is, the answers (`answer_logits_only`): at every
        position of the paper recipes' longest batch, the 200,064-row vocabulary's logits took 13.4 GB
        (`pronlm plan` gives the figure now)."""
        return super().compute_loss(model, answer_logits_only(inputs), return_outputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset or self.train_dataset
        return EpochSampler(ds.lengths, self.args.train_batch_size, self.args.seed,
                            self.args.train_sampling_strategy == "group_by_length")

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        sched = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)
        if checkpoint and isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            # the restored optimizer holds the rate the checkpoint's schedule set for the next step; the
            # schedule's shape is this run's (its length may have grown on --resume): the same when it has not
            for group, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * fn(sched.last_epoch)
            sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _load_callback_state(self):
        super()._load_callback_state()
        if self.control.should_training_stop and self.state.global_step >= self.state.max_steps:
            # it stopped because the run was that long: resumed with more epochs or steps, it goes on (an
            # early stop is decided again by its callback's on_train_begin)
            self.control.should_training_stop = False

    def _run_epoch(self, *args, **kwargs):
        # HF checks should_training_stop only after a step: a resumed run that had stopped early trains no more
        if not self.control.should_training_stop:
            super()._run_epoch(*args, **kwargs)


class JsonlLog(TrainerCallback):
    """Every logged step (loss, lr, grad norm, examples/s) as one JSON line in output_dir/log.jsonl; the
    first line of a run (or of a resume) gives the padding share of the epoch's batches."""

    def __init__(self, path: Path, first: dict | None = None):
        self.path, self.first = path, first or {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.first:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **self.first}) + "\n")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class DescribeCheckpoint(TrainerCallback):
    """Each saved checkpoint-N gets the run's config and prompt texts: `predict --adapter` needs nothing else."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            Run(Path(args.output_dir) / f"checkpoint-{state.global_step}").describe(self.cfg)


def sequence_length(tokenizer, prompt_tokens: int, n_samples: int, target: str) -> int:
    """An example's length in tokens: prompt, audio embeddings, answer, <|end|><|endoftext|>."""
    return prompt_tokens + n_audio_tokens(n_samples) + len(tokenizer(target).input_ids) + 2


def load_examples(cfg: Config, prompts: PromptSet, tokenizer, clips: list | None = None) -> ExampleDataset:
    """Both tasks' examples of every usable utterance (of `cfg.data` when set); broken ones are reported and skipped.

    The one pass over the training data before training; `clips`: a list to append each clip's samples to
    (the tiny model fits its audio normalisation on them), so no clip is read twice.
    """
    if cfg.data:
        return load_folder_examples(cfg, prompts, tokenizer, clips)
    errors: list[UtteranceError] = []
    examples, lengths = [], []
    policy = AccentPolicy(cfg.accent_policy)
    prompt_tokens: dict[str, int] = {}  # by prompt text: the word task's holds each sentence's words
    held_out = dev_speakers(cfg)  # dev_fraction: the development split's speakers never train
    for utt, samples in usable_utterances(cfg.corpus, cfg.train_split, errors, cfg.max_audio_seconds, cfg.limit,
                                          held_out):
        if clips is not None:
            clips.append(samples)
        if not utt.labelled:
            errors.append(UtteranceError(utt.id, "has no scores.json entry: nothing to train on"))
            continue
        for ex in build_examples(utt, prompts, policy, cfg.word_boundaries, tuple(cfg.tasks)):
            if ex.prompt not in prompt_tokens:
                prompt_tokens[ex.prompt] = len(tokenizer(ex.prompt, add_special_tokens=False).input_ids)
            examples.append(ex)
            lengths.append(sequence_length(tokenizer, prompt_tokens[ex.prompt], samples.size, ex.target))
    for exc in errors:
        log.warning("skipped %s", exc)
    if not examples:
        raise UtteranceError("*", f"no usable training utterances in {cfg.corpus} ({cfg.train_split})")
    log.info("%d examples from %d utterances (%d skipped)", len(examples), len(examples) // len(cfg.tasks),
             len(errors))
    return ExampleDataset(examples, lengths)


def load_folder_examples(cfg: Config, prompts: PromptSet, tokenizer, clips: list | None = None) -> ExampleDataset:
    """The lines of `cfg.data`/examples.jsonl, each with its own prompt; bad lines are reported and skipped."""
    errors: list[PronlmError] = []
    pairs = read_examples(cfg.data, errors, cfg.max_audio_seconds, limit=cfg.limit)
    for exc in errors:
        log.warning("skipped %s", exc)
    prompt_tokens, lengths = {}, []
    for ex, samples in pairs:
        if ex.prompt not in prompt_tokens:
            prompt_tokens[ex.prompt] = len(tokenizer(ex.prompt, add_special_tokens=False).input_ids)
        lengths.append(sequence_length(tokenizer, prompt_tokens[ex.prompt], samples, ex.target))
    extra = sorted({ex.task for ex, _ in pairs} - set(cfg.tasks))
    if extra:  # their control-token rows would not be trained
        raise ConfigError(f"{cfg.data} has {', '.join(extra)} lines but the run trains tasks {cfg.tasks}: "
                          f"add them to tasks (tasks=[{', '.join(sorted(set(cfg.tasks) | set(extra)))}])")
    for task in TASKS:
        other = sum(ex.task == task and ex.prompt != prompts.for_task(task, ex.text) for ex, _ in pairs)
        if other:  # the run's templates are what predict --corpus, assess and serve will prompt with
            log.warning("%d %s lines of %s differ from the prompt %s_template=%s renders in prompt_layout=%s: later "
                        "commands prompt with those, so set them to the instructions and layout the lines hold",
                        other, task, cfg.data, task, getattr(cfg, f"{task}_template"), cfg.prompt_layout)
    log.info("%d examples of %d utterances from %s (%d lines skipped)", len(pairs),
             len({ex.id for ex, _ in pairs}), cfg.data, len(errors))
    if clips is not None:  # each one checked by read_examples
        clips.extend(load_audio(path) for path in dict.fromkeys(ex.audio for ex, _ in pairs))
    return ExampleDataset([ex for ex, _ in pairs], lengths)


def answer_share(batch: dict) -> float:
    """Share of the real (non-padding) positions that carry a label: the answer part only."""
    real = batch["attention_mask"].bool()
    return float((batch["labels"] != IGNORE_INDEX)[real].float().mean())


def check_first_batch(collator: Collator, dataset: ExampleDataset, n: int) -> float:
    """Labels must be exactly the answer tokens + <|end|><|endoftext|> of each example."""
    examples = dataset.examples[:n]
    batch = collator(examples)
    tok = collator.tokenizer
    for row, ex in zip(batch["labels"], examples):
        expected = tok(ex.target, add_special_tokens=False).input_ids + collator.end_ids
        got = row[row != IGNORE_INDEX].tolist()
        if got != expected:
            raise AssertionError(f"labels of {ex.id}/{ex.task} are not answer-only: {tok.decode(got)!r}")
    share = answer_share(batch)
    log.info("answer-only check passed: %.1f %% of the first batch's positions are answer tokens", 100 * share)
    return share


def replica_digests(model) -> list[list[float]] | None:
    """Under DDP, each process's (sum, sum of squares) of its trainable weights; None in one process."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    vec = torch.cat([p.detach().double().flatten() for p in model.parameters() if p.requires_grad])
    digest = torch.stack([vec.sum(), (vec ** 2).sum()]).to(next(model.parameters()).device)
    gathered = [torch.zeros_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, digest)
    return [g.tolist() for g in gathered]


def training_arguments(cfg: Config) -> TrainingArguments:
    bf16 = resolve_dtype(cfg.dtype) == torch.bfloat16  # autocast; the trainable weights are fp32 masters
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # launched by torchrun / accelerate
    return TrainingArguments(
        output_dir=cfg.output_dir, num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2, max_grad_norm=cfg.max_grad_norm, bf16=bf16, seed=cfg.seed,
        data_seed=cfg.seed, logging_steps=cfg.logging_steps, save_strategy=cfg.save_strategy,
        save_steps=cfg.save_steps, report_to=["tensorboard"],  # events under output_dir/runs/
        remove_unused_columns=False, dataloader_num_workers=cfg.dataloader_num_workers,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        activation_checkpointing=cfg.gradient_checkpointing,  # non-reentrant (official Phi-4 example)
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False if distributed else None,
        use_cpu=not torch.cuda.is_available(), save_only_model=False,
    )


def make_trainer(cfg: Config, model, tokenizer, dataset: ExampleDataset | None = None, feature_extractor=None,
                 args: TrainingArguments | None = None, callbacks=()) -> "PronlmTrainer":
    """Collator (first batch checked answer-only) and Trainer around a prepared model and its examples.

    `dataset` and `feature_extractor` are read here when not given (a test's shortcut; `train` reads each once).
    """
    args = args or training_arguments(cfg)
    audio_limit(cfg.max_audio_seconds, model.config)  # longer clips crash the audio encoder in a batch
    if dataset is None:
        dataset = load_examples(cfg, PromptSet.from_config(cfg), tokenizer)
    feature_extractor = feature_extractor or load_feature_extractor(resolve_base(cfg), cfg.revision)
    collator = Collator(tokenizer, model.config.audio_config.audio_token_id, cfg.max_audio_seconds,
                        feature_extractor=feature_extractor)
    check_first_batch(collator, dataset, cfg.per_device_train_batch_size)
    jsonl = JsonlLog(Path(cfg.output_dir) / LOG)
    callbacks = [jsonl, DescribeCheckpoint(cfg), Slim(), *callbacks]  # after: a
    # checkpoint has its config before `EarlyStopping`'s judge reads it
    trainer = PronlmTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                            processing_class=tokenizer, callbacks=callbacks)
    share = trainer._get_train_sampler().padding_share()
    log.info("padding: %.1f %% of the token positions in the first epoch's batches of %d", 100 * share,
             args.train_batch_size)
    jsonl.first = {"padding_share": round(share, 4), "per_device_train_batch_size": args.train_batch_size}
    return trainer


# judge(model, tokenizer, step, last_step) -> stop?: asked on process 0 at each saved checkpoint, with the
# model being trained (in eval mode) holding that checkpoint's weights (`pronlm.evaluation.table.DevJudge`).
Judge = Callable[[torch.nn.Module, object, int, int], bool]


@contextmanager
def evaluating(model):
    """The training model in eval mode (no dropout) for a moment, training mode again afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class EarlyStopping(TrainerCallback):
    """early_stop_patience: at each checkpoint process 0 asks the judge, which evaluates the development split
    with the model already in memory (no second copy); every process then stops, or goes on, together."""

    def __init__(self, judge: Judge):
        self.judge = judge

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._decide(args, state, control, model, processing_class)  # resumed: the history may already say stop

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._decide(args, state, control, model, processing_class)

    def _decide(self, args, state, control, model, tokenizer):
        stop = False
        if state.is_world_process_zero:
            # generating may draw random numbers; training's stream must not see that, or a resumed run
            # (its RNG restored from the checkpoint) would drift from an uninterrupted one
            with torch.random.fork_rng(devices=[args.device] if args.device.type == "cuda" else []), \
                    evaluating(model):
                stop = self.judge(model, tokenizer, state.global_step, state.max_steps)
        flag = torch.tensor([float(stop)], device=args.device)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():  # the other processes wait here for process 0's decision
            dist.broadcast(flag, src=0)
        control.should_training_stop |= bool(flag.item())


def claim_output_dir(out: Path, resume: bool, overwrite: bool, main_process: bool) -> Path | None:
    """The checkpoint to resume from; refuses to train over an earlier run unless told to (then clears it)."""
    if resume:
        last = resume_point(out) if out.is_dir() else None
        if last is None:
            log.warning("--resume: no checkpoint in %s yet, starting from the beginning", out)
            return None
        state = json.loads((last / "trainer_state.json").read_text())
        print(f"resuming from {last.name} (step {state['global_step']} of {state['max_steps']})", flush=True)
        return last
    earlier = Run(out).earlier_run()
    if earlier and not overwrite:
        raise ConfigError(f"{out} already holds a run ({', '.join(earlier[:3])}): continue it with --resume, "
                          "or start again over it with overwrite=true")
    if earlier and main_process:
        log.warning("overwrite=true: removing the earlier run in %s", out)
        Run(out).clear()
    return None


def train(cfg: Config, resume: bool = False, judge: Judge | None = None) -> "PronlmTrainer":
    """`pronlm train`: the recipe, top to bottom. The summary goes to output_dir/train_result.json; the
    trainer is returned. `judge`: early stopping's evaluation of each checkpoint (`EarlyStopping`)."""
    out = Path(cfg.output_dir)
    args = training_arguments(cfg)
    main_process = args.process_index == 0
    checkpoint = claim_output_dir(out, resume, cfg.overwrite, main_process)
    changes = check_resume(cfg, checkpoint) if checkpoint else {}  # a change resume cannot honour: refused now
    out.mkdir(parents=True, exist_ok=True)

    # model, tokenizer, feature extractor and examples: each read once
    model, tokenizer = load_model(cfg, training=True)
    audio_limit(cfg.max_audio_seconds, model.config)  # before reading any clip: longer ones crash the encoder
    feature_extractor = load_feature_extractor(resolve_base(cfg), cfg.revision)
    prompts = PromptSet.from_config(cfg)
    clips = [] if cfg.is_tiny and main_process else None
    dataset = load_examples(cfg, prompts, tokenizer, clips)
    if clips is not None:  # keep the random base as built, normalised on its clips, so the adapter has one
        from pronlm.model.tiny import fit_audio_normalisation

        fit_audio_normalisation(model, tokenizer, clips)
        del clips
        for part in (model, tokenizer, feature_extractor):
            part.save_pretrained(out / TINY_BASE)

    # the strategy's adapter, checked before the first step
    set_seed(cfg.seed)  # the new LoRA's random A matrices: the same in every run (a hub base draws nothing on load)
    model = prepare_for_training(cfg, model, tokenizer)
    table = parameter_table(model)
    check_trainable(cfg, table)

    # the trainer, then the run's record, now that it is known to start
    trainer = make_trainer(cfg, model, tokenizer, dataset, feature_extractor, args,
                           [EarlyStopping(judge)] if judge else [])
    if main_process:
        if checkpoint:
            start_resumed_log(out / LOG, checkpoint, changes)
        Run(out).describe(cfg)
        save_dev_speakers(cfg, out)
        print(parameter_summary(table), flush=True)
        (out / "parameters.json").write_text(json.dumps(table, indent=2))

    # train, save, and check the replicas agree
    trainer.loss_before = (loss_before(checkpoint) or (0.0, 0))[0]
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(str(out))
    digests = replica_digests(model)
    if digests and any(d != digests[0] for d in digests):
        raise RuntimeError(f"DDP replicas disagree on the trained weights: {digests}")
    if main_process:
        if digests:
            log.info("trainable weights agree across %d processes", len(digests))
        summary = {**result.metrics, **run_loss(result, checkpoint), "global_step": result.global_step,
                   "resumes": [r for r in read_log(out / LOG) if "resumed_from" in r],
                   "replica_digests": digests}
        (out / "train_result.json").write_text(json.dumps(summary))
    return trainer


def start_resumed_log(path: Path, checkpoint: Path, changes: dict) -> None:
    """The log goes on from the checkpoint's step (the lines the killed run wrote after it are dropped),
    with a line saying that the run resumed there and which settings changed from that step on."""
    step = checkpoint_step(checkpoint)
    dropped = rewind_log(path, step)
    row = {"step": step, "resumed_from": checkpoint.name, "dropped_log_lines": dropped,
           "changed": {k: list(v) for k, v in changes.items()}}
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    for name, (old, new) in changes.items():
        print(f"resumed with {name} {old} -> {new} from step {step}", flush=True)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run_loss(result, checkpoint: Path | None) -> dict:
    """The mean training loss of the whole run: a resumed run adds the sum its checkpoint kept."""
    if checkpoint is None:
        return {}
    kept = loss_before(checkpoint)
    if kept is None:  # the checkpoint does not say: the mean of the whole run is unknown
        return {"train_loss": None, "train_loss_since_resume": result.training_loss}
    before, steps = kept
    part = result.training_loss * (result.global_step - steps)
    return {"train_loss": (before + part) / max(result.global_step, 1),
            "train_loss_since_resume": result.training_loss}
