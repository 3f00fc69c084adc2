"""`pronlm` command line: each subcommand wires its arguments to one function of the pipeline.

Every command but `table` and `demo` runs with one `Config` (`pronlm.config.command_config`): a
`--recipe` (with `--adapter`, the checkpoint's own config instead), then `key=value` overrides; each
field also reads as `--field-name VALUE` (`--accent-policy canonical` is `accent_policy=canonical`).
Flags are for what changes with every invocation: inputs, outputs, the adapter, the server. The
resolved config is saved beside what a command writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from pronlm.app.lexicon import SPARE_WORDS, WORDS_PER_SECOND
from pronlm.config import (
    INFERENCE_DEFAULTS,
    SECTIONS,
    Config,
    ConfigError,
    accepts,
    command_config,
    predictions_config,
)
from pronlm.errors import PronlmError
from pronlm.run import Run
from pronlm.versions import check_versions

FIELD_FLAGS = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(Config)}
SWITCHES = {f.name for f in dataclasses.fields(Config) if f.type == "bool"}  # --word-boundaries alone: true


def _config(a, adapter: str | None = None, defaults: dict | None = None, recipe: str | None = None):
    """The command's `Config`, and the fields its command line set (by flag or override)."""
    flags = {}
    for name, flag in FIELD_FLAGS.items():
        value = getattr(a, f"field_{name}")
        if value is not None:
            flags[name] = (flag if name in SWITCHES else f"{flag} {value}", value)
    cfg = command_config(recipe or a.recipe, a.overrides, flags, adapter, defaults)
    return cfg, set(flags) | {item.partition("=")[0] for item in a.overrides}


def _fresh_folder(out: str) -> Path:
    """An output folder that is not a training run's: its config.yaml describes the run and stays."""
    out = Path(out)
    if Run(out).is_training_output():
        raise ConfigError(f"{out} holds a training run (its config.yaml describes the run): give --out a folder "
                          f"of its own, e.g. {out / 'report'}")
    return out


def _prepare(a):
    from pronlm.data.prepare import prepare

    cfg, _ = _config(a)
    cfg = dataclasses.replace(cfg, split=cfg.split or cfg.train_split)
    out = _fresh_folder(a.out)
    counter = None
    if a.tokenizer:
        from pronlm.model.collate import TokenCounter
        from pronlm.model.load import load_tokenizer

        counter = TokenCounter(load_tokenizer(a.tokenizer), a.tokenizer)
    prepare(cfg.corpus, cfg.split, out, counter=counter, accent_policy=cfg.accent_policy,
            word_boundaries=cfg.word_boundaries, apa_template=cfg.apa_template, mdd_template=cfg.mdd_template,
            max_audio_seconds=cfg.max_audio_seconds, limit=cfg.limit, tasks=cfg.tasks, wrd_template=cfg.wrd_template,
            prompt_layout=cfg.prompt_layout)
    cfg.to_yaml(out / "config.yaml")


def _train(a):
    """The training recipe (`model/train.py`), then, when asked, every checkpoint into table.md.

    The training state is freed first: the table loads one checkpoint's model at a time, never beside it.
    """
    import gc

    import torch

    from pronlm.evaluation.table import DevJudge, build_table
    from pronlm.model.train import train

    cfg = _config(a)[0]
    trainer = train(cfg, resume=a.resume, judge=DevJudge(cfg) if cfg.early_stop_patience else None)
    main_process = trainer.args.process_index == 0
    del trainer  # the model, its adapter and the optimizer state
    if main_process and (cfg.eval_split or cfg.dev_fraction):
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        build_table(cfg.output_dir, cfg)  # every checkpoint on the test / dev split: the paper's Table 3


def _plan(a):
    from pronlm.model.plan import format_plan, plan

    bill = plan(_config(a)[0], predict_batch=a.batch_size, mfu=a.mfu)
    print(json.dumps(bill, indent=2) if a.format == "json" else format_plan(bill))


def _predict(a):
    from pronlm.evaluation.predict import predict

    cfg, given = _config(a, a.adapter, INFERENCE_DEFAULTS)
    cfg = _what_to_predict(cfg, given)
    predict(cfg, a.out, a.adapter, tasks=tuple(cfg.tasks), batch_size=a.batch_size)


def _what_to_predict(cfg: Config, given: set[str]) -> Config:
    """A data folder given now, else the config's corpus and split (test by default).

    A config's own `data` is what its run trained on, not something to predict.
    """
    if cfg.data and "data" in given:
        if "corpus" in given:
            raise ConfigError("give --corpus (and --split) or --data, not both")
        return cfg
    if cfg.data and "corpus" not in given:
        raise ConfigError(f"the config trains on data={cfg.data}, not a corpus: give --corpus or --data "
                          "to say what to predict")
    return dataclasses.replace(cfg, data=None, split=cfg.split or "test")


def _evaluate(a):
    from pronlm.evaluation.evaluate import evaluate

    saved = predictions_config(a.predictions)  # what `pronlm predict` wrote beside them: corpus, split, policy
    cfg, _ = _config(a, recipe=a.recipe or (str(saved) if saved.is_file() else None))
    cfg = dataclasses.replace(cfg, split=cfg.split or "test")
    out = _fresh_folder(a.out)
    evaluate(a.predictions, cfg.corpus, cfg.split, str(out), accent_policy=cfg.accent_policy,
             duplicates=a.duplicates)
    cfg.to_yaml(out / "config.yaml")


def _table(a):
    from pronlm.evaluation.table import table_command

    table_command(a.run, split=a.split, untrained=a.untrained)


def _assess(a):
    from pronlm.app.assess import assess_command

    cfg, _ = _config(a, a.adapter, INFERENCE_DEFAULTS)
    assess_command(cfg, a.audio, a.text, a.adapter, fmt=a.format, lexicon=a.lexicon, split_long=a.split_long)


def _serve(a):
    from pronlm.app.serve import serve

    cfg, _ = _config(a, a.adapter, INFERENCE_DEFAULTS)
    serve(cfg, a.adapter, host=a.host, port=a.port, lexicon=a.lexicon, max_upload_bytes=int(a.max_upload_mb * 2**20),
          max_queue=a.max_queue, max_batch=a.max_batch, api_key=a.api_key, rate_limit=a.rate_limit,
          cors_origins=tuple(a.cors_origin))


def _export(a):
    from pronlm.model.export import export

    summary = export(a.adapter, a.out, layout=a.layout, original=a.original, original_revision=a.original_revision,
                     push_to_hub=a.push_to_hub, private=a.private, dtype=a.dtype)
    print(f"exported {a.adapter} ({summary['layout']} layout, {summary['dtype']}) to {a.out}: "
          f"{summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s"
          + (f"; uploaded: {summary['url']}" if a.push_to_hub else ""))


def _demo(a):
    from pronlm.app.demo import demo

    demo(out=a.out, corpus=a.corpus, steps=a.steps)


def config_options(s, start: str, uses: str):
    """--recipe, trailing key=value overrides, and every config field as --field-name VALUE, listed in --help
    by section with its meaning, what it takes and its default (from the field's metadata, `pronlm.config.setting`)."""
    s.add_argument("--recipe", default=None, metavar="NAME|PATH",
                   help=f"paper-lora, paper-unfreeze, new-lora, tiny-cpu or a YAML path; default: {start}")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help=f"overrides of the config; this command uses {uses}. Every setting below also reads as "
                        "KEY=VALUE (accent_policy=canonical)")
    for section, cls in SECTIONS.items():
        group = s.add_argument_group(f"{section} settings", "defaults are the built-in ones; a recipe or an "
                                     "adapter's config.yaml comes first where given")
        for f in dataclasses.fields(cls):
            kind = {"action": "store_const", "const": "true"} if f.name in SWITCHES else {"metavar": "VALUE"}
            shown = "null" if f.default is None else str(f.default).lower() if isinstance(f.default, bool) else f.default
            text = f"{f.metadata['help']} [{accepts(f)}; default: {shown}]"
            group.add_argument(FIELD_FLAGS[f.name], dest=f"field_{f.name}", default=None,
                               help=text.replace("%", "%%"), **kind)


def at_least(low: float, kind=int):
    """An argparse type: a number of `kind` no less than `low` (per-invocation flags, checked as the config's are)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below {low:g}, the least it takes")
        return value
    return parse


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line naming the problem (not the long usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def model_options(s):
    s.add_argument("--adapter", default=None,
                   help="a training output or checkpoint folder: its config.yaml is the starting config")


INFERENCE_START = "the adapter's config, else the tiny model (base=tiny)"
INFERENCE_USES = ("base, revision, tasks, apa_template, mdd_template, wrd_template, prompt_layout, max_audio_seconds, "
                  "constrained")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pronlm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="SpeechOcean762 -> examples.jsonl (two per utterance), manifest.jsonl, "
                                       "stats.json, config.yaml: a training input (train data=DIR)")
    s.add_argument("--out", required=True)
    s.add_argument("--tokenizer", default=None, help="'tiny', a folder or hub id: adds token counts to stats")
    config_options(s, "the built-in defaults", "corpus, split (default: train_split), accent_policy, "
                   "word_boundaries, apa_template, mdd_template, prompt_layout, max_audio_seconds, limit")
    s.set_defaults(func=_prepare)

    s = sub.add_parser("train", help="fine-tune with LoRA from a recipe")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    config_options(s, "the built-in defaults (Phi-4-multimodal, speech-lora)", "every field")
    s.set_defaults(func=_train)

    s = sub.add_parser("plan", help="what a recipe costs before anything is downloaded: parameters, GPU memory, "
                                    "tokens, FLOPs and hours, prediction memory, disk")
    s.add_argument("--format", default="table", choices=["table", "json"])
    s.add_argument("--batch-size", type=int, default=8, help="prediction's batch size")
    s.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the hours")
    config_options(s, "the built-in defaults", "every model, data and training field")
    s.set_defaults(func=_plan)

    s = sub.add_parser("predict", help="batched generation for the config's tasks (--tasks apa,mdd,wrd), appended "
                                       "as JSON lines (resumable); "
                                       "the config beside them (OUT.config.yaml)")
    model_options(s)
    s.add_argument("--out", required=True)
    s.add_argument("--batch-size", type=at_least(1), default=8,
                   help="examples generated together: speed and memory, this invocation's own (not saved); default 8")
    config_options(s, INFERENCE_START, f"{INFERENCE_USES}, corpus, split (default: test), limit, and data (a "
                   "folder with examples.jsonl, pronlm prepare's or your own, predicted instead of the corpus)")
    s.set_defaults(func=_predict)

    s = sub.add_parser("evaluate", help="metrics, report.md against the paper, plots, config.yaml")
    s.add_argument("--predictions", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--duplicates", default="error", choices=["error", "first", "last"],
                   help="an (id, task) repeated with a different answer: stop (default), or keep the first/last")
    config_options(s, "the config predict saved beside the predictions, else the built-in defaults",
                   "corpus, split (default: test), accent_policy")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("table", help="the paper's Table 3 for a run: every checkpoint predicted and evaluated "
                                     "(resumable; also what train eval_split=test does)")
    s.add_argument("--run", required=True, help="a training output_dir holding checkpoint-N folders")
    s.add_argument("--split", default=None, choices=["test", "train"], help="default: the run's eval_split")
    s.add_argument("--untrained", action="store_true", help="add the untrained row (the base, no adapter)")
    s.set_defaults(func=_table)

    s = sub.add_parser("assess", help="scores and per-word feedback for one recording")
    model_options(s)
    s.add_argument("--audio", required=True)
    s.add_argument("--text", default=None, help=f"the sentence that was read, at most {WORDS_PER_SECOND} words a "
                   f"second of the recording plus {SPARE_WORDS}, as POST /assess takes (left out: free speech, judged "
                   "against the model's own transcript)")
    s.add_argument("--format", default="table", choices=["json", "table"])
    s.add_argument("--lexicon", default=None, help="extra lexicon (WORD PH1 PH2 ...) for words CMUdict lacks")
    s.add_argument("--split-long", action="store_true",
                   help="cut the recording at pauses and assess each piece (for recordings of several sentences)")
    config_options(s, INFERENCE_START, f"{INFERENCE_USES} (the longest clip, or piece with --split-long; the "
                   "model takes at most 40)")
    s.set_defaults(func=_assess)

    s = sub.add_parser("serve", help="HTTP API and web page")
    model_options(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=at_least(0), default=8000)
    s.add_argument("--lexicon", default=None)
    s.add_argument("--max-upload-mb", type=at_least(0.001, float), default=10.0)
    s.add_argument("--max-queue", type=at_least(1), default=64, help="requests waiting beyond this get 503")
    s.add_argument("--max-batch", type=at_least(1), default=8, help="requests answered together in one generate call")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /assess (the page asks for it; / and /health stay "
                        "open); default: $PRONLM_API_KEY, which keeps it out of `ps`")
    s.add_argument("--rate-limit", type=at_least(0), default=0, metavar="N",
                   help="requests a minute per client IP, in bursts of up to N; more get 429 with Retry-After. "
                        "Default 0: off (a full queue already answers 503); behind a proxy on this machine the "
                        "client is taken from X-Forwarded-For")
    s.add_argument("--cors-origin", action="append", default=[], metavar="URL",
                   help="let pages from this origin call the API (repeatable); default: none, same origin only")
    config_options(s, INFERENCE_START, INFERENCE_USES)
    s.set_defaults(func=_serve)

    s = sub.add_parser("export", help="a checkpoint merged into one standalone model folder (transformers, or "
                                      "the original layout for vLLM), with a model card; optionally pushed to the hub")
    s.add_argument("--adapter", required=True, help="a training output or checkpoint folder")
    s.add_argument("--out", required=True, help="a new (or empty) folder")
    s.add_argument("--layout", default="transformers", choices=["transformers", "vllm"],
                   help="transformers (default): loads with from_pretrained and as a pronlm base (base=OUT); "
                        "vllm: Microsoft's original remote-code layout (Phi4MMForCausalLM), which vLLM serves")
    s.add_argument("--original", default=None, metavar="DIR|REPO",
                   help="vllm layout: where the original config, processor and code files come from (default: the "
                        "run's base on the hub, at --original-revision)")
    s.add_argument("--original-revision", default="main", help="the original layout's revision (default: main)")
    s.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="the saved weights (merged in fp32); auto: bf16 for a hub base, fp32 for the tiny model")
    s.add_argument("--push-to-hub", default=None, metavar="REPO", help="then upload the folder to this hub repo")
    s.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    s.set_defaults(func=_export)

    s = sub.add_parser("demo", help="the whole pipeline on a tiny model, on CPU, in minutes")
    s.add_argument("--out", default="demo-out")
    s.add_argument("--corpus", default=None, help="a SpeechOcean762 folder instead of synthesised speech")
    s.add_argument("--steps", type=at_least(1), default=300, help="training steps (at least 1); default 300")
    s.set_defaults(func=_demo)
    for command in sub.choices.values():  # the settings are many: --help lists them, the usage line does not
        command.usage = "%(prog)s [options] [KEY=VALUE ...]"
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with key=value overrides taken from anywhere on the line (argparse keeps one run of them)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [x for x in extra if "=" in x and not x.startswith("-")]
    if len(overrides) < len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = args.overrides + overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_versions()
        args.func(args)
    except PronlmError as exc:
        notes = "".join(f"\n{note}" for note in getattr(exc, "__notes__", ()))  # added on the way up
        print(f"pronlm {args.command}: error: {exc}{notes}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
