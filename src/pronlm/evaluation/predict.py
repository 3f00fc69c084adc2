"""Prediction: batched greedy generation for both tasks, parsed into one record schema.

`Predictor` is the one prediction path: `pronlm predict` (a corpus or a data folder, written as
JSON lines and resumable), `pronlm assess` and `pronlm serve` all go through it, or through its
twin for `backend=vllm` (`pronlm.evaluation.vllm_client`); both are a `pronlm.evaluation.backend.Backend`,
picked by `load_predictor`. It refuses clips longer than
the audio encoder takes (`max_audio_seconds`), and a configured limit above that at start-up.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm
from transformers import LogitsProcessorList, Phi4MultimodalFeatureExtractor

from pronlm.config import Config, predictions_config
from pronlm.data.audio import load_audio
from pronlm.data.corpus import read_corpus
from pronlm.data.prepare import read_examples
from pronlm.data.prompts import PAPER_TASKS, TASKS, Example, PromptSet
from pronlm.data.records import WORD_ASPECTS, UtteranceError
from pronlm.data.schema import PHONE_SCORES
from pronlm.data.targets import strip_stress
from pronlm.data.text import sentence_words
from pronlm.errors import PredictionInterrupted, PronlmError
from pronlm.evaluation.backend import Backend, answer_record, task_examples
from pronlm.evaluation.grammar import (
    ValueLogits,
    answer_grammar,
    expected_word_scores,
    score_distributions,
    score_token_ids,
)
from pronlm.evaluation.phone_scores import PhoneScorer, score_tree
from pronlm.model.collate import Collator, audio_limit
from pronlm.model.load import load_feature_extractor, load_model, resolve_base

log = logging.getLogger(__name__)


@dataclass
class Predictor(Backend):
    """The model in this process: batched greedy generation, under the answer grammar when `constrained`."""

    model: torch.nn.Module
    tokenizer: object
    prompts: PromptSet
    max_new_tokens: int = 256
    max_audio_seconds: float | None = 30.0  # None: the audio encoder's own limit
    feature_extractor: object = None  # the base's own; None: transformers' defaults (the tiny model's)
    constrained: bool = True  # answers follow the task's grammar (pronlm.evaluation.grammar); False: free text (the paper)
    accent_policy: str = "unk"  # what the MDD grammar allows: the phone symbols of the run's targets
    word_boundaries: bool = False
    tasks: tuple[str, ...] = PAPER_TASKS  # what the model was trained to answer: assess and serve ask these

    def __post_init__(self):
        self.max_audio_seconds = audio_limit(self.max_audio_seconds, self.model.config)
        self.collator = Collator(self.tokenizer, self.model.config.audio_config.audio_token_id,
                                 self.max_audio_seconds, for_generation=True,
                                 feature_extractor=self.feature_extractor or Phi4MultimodalFeatureExtractor())
        self.stop_ids = list(self.collator.end_ids)
        # A generated audio/image placeholder id would be sent through the audio encoder again.
        self.suppress = [self.model.config.audio_config.audio_token_id, self.model.config.vision_config.image_token_id]
        # vocab_size: the embedding's rows, which can outnumber the tokenizer's tokens (SPEC §2b)
        self.grammar = answer_grammar(self.tokenizer, self.model.config.vocab_size, self.stop_ids, self.accent_policy,
                                      self.word_boundaries) if self.constrained else None
        self.score_ids = self.grammar.score_ids if self.grammar else score_token_ids(self.tokenizer)
        self.phone_scorer = PhoneScorer(self.tokenizer, self.word_boundaries)

    @classmethod
    def load(cls, cfg: Config, adapter: str | None = None, device: str | None = None) -> "Predictor":
        """The model `cfg` describes, ready to answer with `cfg`'s inference settings; with `adapter`, the
        checkpoint on it (`pronlm.config.command_config` gives a checkpoint's own config), else the untrained base."""
        model, tokenizer = load_model(cfg, adapter, device=device)
        prompts = PromptSet.from_config(cfg)
        return cls(model, tokenizer, prompts, cfg.max_new_tokens, cfg.max_audio_seconds,
                   load_feature_extractor(resolve_base(cfg, adapter), cfg.revision),
                   cfg.constrained, cfg.accent_policy, cfg.word_boundaries, tuple(cfg.tasks))

    @classmethod
    def around(cls, model, tokenizer, cfg: Config) -> "Predictor":
        """A predictor for a model already in memory (the one being trained, `pronlm.evaluation.table.DevJudge`),
        with the run's prompts and inference settings: no second copy of the model is loaded."""
        prompts = PromptSet.from_config(cfg)
        features = load_feature_extractor(resolve_base(cfg, cfg.output_dir), cfg.revision)  # a tiny run's own base
        return cls(model, tokenizer, prompts, cfg.max_new_tokens, cfg.max_audio_seconds, features, cfg.constrained,
                   cfg.accent_policy, cfg.word_boundaries)

    def generate(self, examples: list[Example], audio: list[np.ndarray]) -> list[str]:
        """Greedy answers (text after the prompt, special tokens kept) for one left-padded batch."""
        return [text for text, _ in self.generate_scored(examples, audio)]

    @torch.inference_mode()
    def generate_scored(self, examples: list[Example], audio: list[np.ndarray]) -> list[tuple[str, dict | None]]:
        """(answer, score distributions) per example: for APA answers whose scores could be found, each
        aspect's probabilities of 0..10 (`pronlm.evaluation.grammar.score_distributions`); for WRD answers each
        word's expected scores (`expected_word_scores`); else None. Constrained to each task's grammar when
        `constrained`."""
        batch = {k: v.to(self.model.device) for k, v in self.collator(examples, audio).items()}
        words = [ex.text.split() if ex.task == "wrd" else None for ex in examples]
        # a word answer is as long as its words make it: the budget grows with the longest (one entry per word)
        budget = max([self.max_new_tokens] + [self.word_answer_tokens(w) for w in words if w is not None])
        values = ValueLogits(self.score_ids)
        processors = [values]
        if self.grammar is not None:
            processors.append(self.grammar.processor([ex.task for ex in examples], budget, words))
        out = self.model.generate(**batch, max_new_tokens=budget, do_sample=False,
                                  eos_token_id=self.stop_ids, pad_token_id=self.collator.pad_id,
                                  suppress_tokens=self.suppress, logits_processor=LogitsProcessorList(processors))
        answers = []
        for n, (ex, row) in enumerate(zip(examples, out[:, batch["input_ids"].shape[1]:].tolist())):
            stop = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row) - 1)
            ids = row[:stop + 1]
            expected = None
            if ex.task in ("apa", "wrd"):
                pieces = [self.tokenizer.decode([t], skip_special_tokens=False) for t in ids]
                scored = score_distributions if ex.task == "apa" else expected_word_scores
                expected = scored(pieces, ids, values.row(n), self.score_ids)
            answers.append((self.tokenizer.decode(ids, skip_special_tokens=False), expected))
        return answers

    @torch.inference_mode()
    def phone_scores(self, items: list[tuple[np.ndarray, str, list[list[str]]]]) -> list[list[dict]]:
        """A score per canonical phone of each (clip, text, phones of each word) item, in order: the
        MDD answer teacher-forced to the text and its canonical phones, one forward pass per item
        (`pronlm.evaluation.phone_scores`: the formula and the cost)."""
        out = []
        for samples, text, words in items:
            audio = self.collator.features([samples])
            prompt, _ = self.collator.encode(Example("", "mdd", None, self.prompts.mdd, None),
                                             int(audio["audio_embed_sizes"][0]))
            tree = self.phone_scorer.tree(prompt, text, words)
            out.append(score_tree(self.model, tree, audio) if tree.canonical else [])
        return out

    def word_answer_tokens(self, words: list[str]) -> int:
        """Tokens of a word answer for `words` (scores of two digits) and its end: its length under the grammar."""
        answer = json.dumps({"words": [{"word": w, **dict.fromkeys(WORD_ASPECTS, 10)} for w in words]})
        return len(self.tokenizer(answer, add_special_tokens=False).input_ids) + len(self.stop_ids)


    def predict_examples(self, examples: list[Example], audio: list[np.ndarray], batch_size: int = 8) -> list[dict]:
        """One record per example, in order, each asked with its own prompt (a data folder's lines)."""
        records = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            for ex, (raw, expected) in zip(chunk, self.generate_scored(chunk, audio[start:start + batch_size])):
                records.append(answer_record(ex, raw, expected))
        return records


def load_predictor(cfg: Config, adapter: str | None = None):
    """The predictor `cfg.backend` names: `Predictor` (the model in this process) or a vLLM server's client.

    Both answer `predict`, `predict_examples` and `max_audio_seconds` alike, with the same records.
    """
    if cfg.backend == "vllm":
        from pronlm.evaluation.vllm_client import VllmPredictor

        return VllmPredictor.from_config(cfg)
    return Predictor.load(cfg, adapter)


def clip_frames(utt) -> int:
    """Samples in an utterance's clip (0 when unreadable: it fails later, with its reason).

    `predict` batches clips longest first: similar lengths share a batch, so less audio padding
    (which costs time and slightly changes a padded clip's encoding), and memory peaks at once.
    """
    try:
        return sf.info(str(utt.audio)).frames
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return 0


def done_keys(out: Path) -> set[tuple[str, str]]:
    """(id, task) already in a prediction file; a line cut short by a crash is dropped from the file."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):  # killed mid-write: keep only complete lines
        data = data[:data.rfind(b"\n") + 1]
        out.write_bytes(data)
    keys = set()
    for n, line in enumerate(data.decode().splitlines(), 1):
        try:
            rec = json.loads(line)
            keys.add((rec["id"], rec["task"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PronlmError(f"{out} line {n} is not a prediction record ({exc}); move the file away "
                              "or fix the line to resume") from exc
    return keys


def predict(cfg: Config, out: str, adapter: str | None = None, tasks=None, batch_size: int = 8,
            speakers=None, predictor=None) -> dict:
    """Predict `cfg`'s corpus split (test when null) into `out` (JSON lines), skipping what the file already
    holds; `cfg.data`: that folder's examples.jsonl instead (`predict_folder`). `cfg` is saved beside `out`
    (`predictions_config`), so every predictions file says how it was decoded. `tasks`: None asks `cfg.tasks`.

    `speakers`: only their utterances (a development split carved from train, `pronlm.evaluation.table`).
    `predictor`: a function giving one already loaded (around the model being trained), called only when
    something is left to predict, in place of loading `cfg`'s model.
    """
    tasks = tuple(tasks or cfg.tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise PronlmError(f"unknown task(s) {bad}: choose from {', '.join(TASKS)}")
    out_path = Path(out)
    if out_path.is_dir():
        raise PronlmError(f"--out {out} is a folder: give the predictions file to write, e.g. {out_path / 'test.jsonl'}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out_path)
    if cfg.data is not None:
        return predict_folder(cfg, out_path, done, adapter, tasks, batch_size)
    utterances = [u for u in read_corpus(cfg.corpus, cfg.split or "test")
                  if speakers is None or u.speaker in speakers][:cfg.limit]
    todo = sorted((u for u in utterances if any((u.id, t) not in done for t in tasks)), key=clip_frames, reverse=True)
    save_predictions_config(cfg, out_path, bool(todo))
    log.info("%d utterances, %d already predicted, %d to go", len(utterances), len(utterances) - len(todo), len(todo))
    if not todo:
        return {"written": 0, "skipped_audio": 0}
    predictor = predictor() if predictor else load_predictor(cfg, adapter)

    def answer(utts, audio):  # only the (utterance, task) pairs the file lacks: a resumed run asks nothing twice
        examples, clips = task_examples([(u.id, a) for u, a in zip(utts, audio)], tasks, predictor.prompts,
                                        predictor.max_audio_seconds, {u.id: utterance_words(u) for u in utts})
        pairs = [(ex, clip) for ex, clip in zip(examples, clips) if (ex.id, ex.task) not in done]
        records = predictor.predict_examples([ex for ex, _ in pairs], [clip for _, clip in pairs], batch_size)
        return add_phone_scores(predictor, records, {u.id: (u, a) for u, a in zip(utts, audio)})

    written, failed, rate = append_predictions(
        out_path, todo, max(1, batch_size // len(tasks)), "utt",
        lambda u: load_audio(u.audio, u.id, predictor.max_audio_seconds), answer)
    log.info("wrote %d predictions to %s (%.2f utterances/s); %d utterances skipped", written, out, rate, len(failed))
    return {"written": written, "skipped_audio": len(failed), "utterances_per_second": rate}


def save_predictions_config(cfg: Config, out_path: Path, predicting: bool) -> None:
    """`cfg` beside the predictions (once their inputs are read) when it is to make some, or none is there yet:
    a file already complete keeps the config it was made with, untouched."""
    if predicting or not predictions_config(out_path).is_file():
        cfg.to_yaml(predictions_config(out_path))


def add_phone_scores(predictor, records: list[dict], utterances: dict) -> list[dict]:
    """`phone_scores` in each MDD record of a labelled utterance (`utterances`: id -> (utterance, clip)):
    one score per canonical phone (`Predictor.phone_scores`); a backend without them leaves the records as they are."""
    score = getattr(predictor, "phone_scores", None)
    mdd = [r for r in records if r["task"] == "mdd" and r["id"] in utterances and utterances[r["id"]][0].labelled]
    if score is None or not mdd:
        return records
    items = []
    for r in mdd:
        utt, clip = utterances[r["id"]]
        items.append((clip, utt.text, [[strip_stress(p) for p in w.canonical_phones] for w in utt.words]))
    for r, scores in zip(mdd, score(items)):
        r[PHONE_SCORES] = scores
    return records


def append_predictions(out_path: Path, todo: list, step: int, unit: str, read_audio, answer):
    """Predict `todo` `step` items at a time, appending each record to `out_path` as soon as it is known.

    `read_audio(item)` gives an item's samples (an `UtteranceError` skips it, reported);
    `answer(items, audio)` gives their records. A `PredictionInterrupted` (a vLLM server that failed
    part way) has its finished records written before it goes on up. Returns (records written,
    skip reasons, items/s).
    """
    written, failed, t0 = 0, [], time.perf_counter()
    with out_path.open("a") as f, tqdm(total=len(todo), unit=unit, desc="predict") as bar:
        def write(records):
            nonlocal written
            for rec in records:
                f.write(json.dumps(rec) + "\n")
                written += 1
            f.flush()

        for start in range(0, len(todo), step):
            chunk, items, audio = todo[start:start + step], [], []
            for item in chunk:
                try:
                    audio.append(read_audio(item))
                    items.append(item)
                except UtteranceError as exc:
                    log.warning("skipped %s", exc)
                    failed.append(str(exc))
            try:
                write(answer(items, audio))
            except PredictionInterrupted as exc:
                write(exc.answered)
                exc.add_note(f"the {written} predictions this run made before it are in {out_path}: run the same "
                             "command again to go on from there")
                raise
            bar.update(len(chunk))
    return written, failed, len(todo) / (time.perf_counter() - t0)


def utterance_words(utt) -> list[str]:
    """The words the word task scores: the annotated ones, else the text's."""
    return [w.text for w in utt.words] if utt.words else sentence_words(utt.text)


def predict_folder(cfg: Config, out_path: Path, done: set[tuple[str, str]], adapter: str | None = None,
                   tasks=PAPER_TASKS, batch_size: int = 8) -> dict:
    """Predict each line of `cfg.data`/examples.jsonl (its id, task, audio and prompt) not yet in `out_path`.

    Longest clips first, as for a corpus; targets may be null. Bad lines and clips are reported and skipped.
    """
    errors: list[PronlmError] = []
    data = cfg.data
    lines = read_examples(data, errors, need_targets=False, limit=cfg.limit)
    for exc in errors:
        log.warning("skipped %s", exc)
    todo = sorted(((ex, n) for ex, n in lines if ex.task in tasks and (ex.id, ex.task) not in done),
                  key=lambda pair: (-pair[1], pair[0].audio))  # one clip's lines side by side
    save_predictions_config(cfg, out_path, bool(todo))
    log.info("%d lines of %s, %d to predict", len(lines), data, len(todo))
    if not todo:
        return {"written": 0, "skipped_audio": 0}
    predictor = load_predictor(cfg, adapter)
    written, failed, rate = append_predictions(
        out_path, [ex for ex, _ in todo], batch_size, "line",
        lambda ex: load_audio(ex.audio, ex.id, predictor.max_audio_seconds),
        lambda examples, audio: predictor.predict_examples(examples, audio, batch_size))
    log.info("wrote %d predictions to %s (%.2f lines/s); %d lines skipped", written, out_path, rate, len(failed))
    return {"written": written, "skipped_audio": len(failed), "skipped_lines": len(errors), "lines_per_second": rate}
