"""`pronlm` command line: each subcommand wires its arguments to one function of the pipeline."""

from __future__ import annotations

import argparse
import logging
import sys

from pronlm.data import PronlmError


def _prepare(a):
    from pronlm.prepare import prepare

    prepare(a.corpus, a.split, a.out, tokenizer=a.tokenizer, accent_policy=a.accent_policy,
            word_boundaries=a.word_boundaries, apa_template=a.apa_template, mdd_template=a.mdd_template,
            max_audio_seconds=a.max_audio_seconds, limit=a.limit)


def _train(a):
    from pronlm.config import load_config
    from pronlm.train import train

    train(load_config(a.recipe, a.overrides), resume=a.resume)


def _predict(a):
    from pronlm.infer import predict

    if a.data and a.corpus:
        raise PronlmError("give --corpus (and --split) or --data, not both")
    corpus = a.corpus or (None if a.data else _trained_on(a.adapter))
    predict(base=a.base, adapter=a.adapter, corpus=corpus, split=a.split, out=a.out,
            tasks=tuple(a.tasks.split(",")), batch_size=a.batch_size, limit=a.limit,
            max_new_tokens=a.max_new_tokens, apa_template=a.apa_template, mdd_template=a.mdd_template,
            data=a.data)


def _trained_on(adapter: str | None) -> str:
    """The corpus an adapter's run was trained on: predict's default --corpus."""
    from pronlm.config import ConfigError, checkpoint_config

    saved = checkpoint_config(adapter) if adapter else None
    if saved is None:
        raise ConfigError("--corpus or --data is needed: no --adapter with a saved config to take the corpus from")
    if saved.data:
        raise ConfigError(f"the adapter was trained on data={saved.data}, not a corpus: give --corpus or --data")
    return saved.corpus


def _evaluate(a):
    from pronlm.report import evaluate

    evaluate(a.predictions, a.corpus, a.split, a.out, accent_policy=a.accent_policy, duplicates=a.duplicates)


def _table(a):
    from pronlm.table import table_command

    table_command(a.run, split=a.split, untrained=a.untrained)


def _assess(a):
    from pronlm.assess import assess_command

    assess_command(audio=a.audio, text=a.text, base=a.base, adapter=a.adapter, fmt=a.format, lexicon=a.lexicon,
                   max_new_tokens=a.max_new_tokens, max_audio_seconds=a.max_audio_seconds, split_long=a.split_long)


def _serve(a):
    from pronlm.serve import serve

    serve(host=a.host, port=a.port, base=a.base, adapter=a.adapter, lexicon=a.lexicon,
          max_new_tokens=a.max_new_tokens, max_upload_bytes=int(a.max_upload_mb * 2**20),
          max_audio_seconds=a.max_audio_seconds, max_queue=a.max_queue, max_batch=a.max_batch,
          api_key=a.api_key, rate_limit=a.rate_limit, cors_origins=tuple(a.cors_origin))


def _demo(a):
    from pronlm.demo import demo

    demo(out=a.out, corpus=a.corpus, steps=a.steps)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pronlm", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def data_options(s):
        s.add_argument("--accent-policy", default="unk", choices=["unk", "canonical", "literal"],
                       help="what an accented phone X* becomes in the heard phones (default: <unk>)")

    def model_options(s):
        s.add_argument("--base", default=None,
                       help="hub id or local folder of Phi-4-multimodal (native format), or 'tiny'; default: the "
                            "adapter's own base, or 'tiny' without an adapter")
        s.add_argument("--adapter", default=None, help="a training output or checkpoint folder")
        s.add_argument("--max-new-tokens", type=int, default=256)

    s = sub.add_parser("prepare", help="SpeechOcean762 -> examples.jsonl (two per utterance), manifest.jsonl, "
                                                "stats.json: a training input (train data=DIR)")
    s.add_argument("--corpus", required=True, help="corpus folder (Kaldi layout) or hf:mispeech/speechocean762")
    s.add_argument("--split", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--tokenizer", default=None, help="'tiny', a folder or hub id: adds token counts to stats")
    s.add_argument("--word-boundaries", action="store_true", help="put | between words in the phone target")
    s.add_argument("--apa-template", default="default")
    s.add_argument("--mdd-template", default="default")
    s.add_argument("--max-audio-seconds", type=float, default=30.0)
    s.add_argument("--limit", type=int, default=None)
    data_options(s)
    s.set_defaults(func=_prepare)

    s = sub.add_parser("train", help="fine-tune with LoRA from a recipe")
    s.add_argument("--recipe", required=True, help="recipe name (paper-lora, paper-unfreeze, new-lora, tiny-cpu) "
                                                   "or YAML path")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    s.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    s.set_defaults(func=_train)

    s = sub.add_parser("predict", help="batched generation for both tasks, appended as JSON lines (resumable)")
    model_options(s)
    s.add_argument("--corpus", default=None, help="default: the corpus the adapter was trained on")
    s.add_argument("--split", default="test")
    s.add_argument("--data", default=None, help="instead of --corpus: a folder with examples.jsonl (pronlm prepare's "
                                                "or your own); each line is asked with its own prompt")
    s.add_argument("--out", required=True)
    s.add_argument("--tasks", default="apa,mdd")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--apa-template", default=None, help="default: the adapter's training template")
    s.add_argument("--mdd-template", default=None)
    s.set_defaults(func=_predict)

    s = sub.add_parser("evaluate", help="metrics, report.md against the paper, plots")
    s.add_argument("--predictions", required=True)
    s.add_argument("--corpus", required=True)
    s.add_argument("--split", default="test")
    s.add_argument("--out", required=True)
    s.add_argument("--duplicates", default="error", choices=["error", "first", "last"],
                   help="an (id, task) repeated with a different answer: stop (default), or keep the first/last")
    data_options(s)
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
    s.add_argument("--text", required=True, help="the sentence that was read")
    s.add_argument("--format", default="table", choices=["json", "table"])
    s.add_argument("--lexicon", default=None, help="extra lexicon (WORD PH1 PH2 ...) for words CMUdict lacks")
    s.add_argument("--max-audio-seconds", type=float, default=30.0,
                   help="longest clip (or piece, with --split-long) assessed; the model takes at most 40")
    s.add_argument("--split-long", action="store_true",
                   help="cut the recording at pauses and assess each piece (for recordings of several sentences)")
    s.set_defaults(func=_assess)

    s = sub.add_parser("serve", help="HTTP API and web page")
    model_options(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--lexicon", default=None)
    s.add_argument("--max-upload-mb", type=float, default=10.0)
    s.add_argument("--max-audio-seconds", type=float, default=30.0)
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond this get 503")
    s.add_argument("--max-batch", type=int, default=8, help="requests answered together in one generate call")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /assess (the page asks for it; / and /health stay "
                        "open); default: $PRONLM_API_KEY, which keeps it out of `ps`")
    s.add_argument("--rate-limit", type=int, default=0, metavar="N",
                   help="requests a minute per client IP, in bursts of up to N; more get 429 with Retry-After. "
                        "Default 0: off (a full queue already answers 503); behind a proxy on this machine the "
                        "client is taken from X-Forwarded-For")
    s.add_argument("--cors-origin", action="append", default=[], metavar="URL",
                   help="let pages from this origin call the API (repeatable); default: none, same origin only")
    s.set_defaults(func=_serve)

    s = sub.add_parser("demo", help="the whole pipeline on a tiny model, on CPU, in minutes")
    s.add_argument("--out", default="demo-out")
    s.add_argument("--corpus", default=None, help="a SpeechOcean762 folder instead of synthesised speech")
    s.add_argument("--steps", type=int, default=300)
    s.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except PronlmError as exc:
        print(f"pronlm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
