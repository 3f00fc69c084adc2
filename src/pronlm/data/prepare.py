"""`pronlm prepare`: one corpus split -> `examples.jsonl` (one example per utterance and task), `manifest.jsonl`
(each clip's length) and `stats.json`; and `read_examples`, which reads such a folder back for
`train data=DIR` and `predict --data DIR`, whether `prepare` wrote it or a user did (README, "Your own data").

Every utterance's audio is read once here, so a broken clip is reported and skipped now rather
than crashing a training run hours later.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from pathlib import Path
from statistics import mean
from typing import Iterator

import numpy as np

from pronlm.data.audio import SAMPLE_RATE, load_audio
from pronlm.data.corpus import read_corpus
from pronlm.data.parse import parse_answer
from pronlm.data.prompts import (
    ASSISTANT,
    AUDIO_PLACEHOLDER,
    CONTROL_TOKENS,
    PAPER_TASKS,
    TASKS,
    Example,
    PromptSet,
    build_examples,
)
from pronlm.data.records import AudioError, Utterance, UtteranceError
from pronlm.data.targets import AccentPolicy, aligned_word_phones
from pronlm.errors import FileFormatError, PronlmError, json_line, read_text

log = logging.getLogger(__name__)

EXAMPLES_FILE, MANIFEST_FILE = "examples.jsonl", "manifest.jsonl"
ANSWER_EXAMPLES = {"apa": '{"accuracy": 8, "fluency": 9, "prosodic": 9, "total": 8}',
                   "mdd": '{"word_transcript": "WE CALL IT BEAR", "phoneme_transcript": "W IY K AO L IH T B EH R"}',
                   "wrd": '{"words": [{"word": "WE", "accuracy": 10, "stress": 10, "total": 10}]}'}


def prepare(corpus: str, split: str, out: str | Path, counter=None, accent_policy: str = "unk",
            word_boundaries: bool = False, apa_template: str = "default", mdd_template: str = "default",
            max_audio_seconds: float | None = 30.0, limit: int | None = None, tasks=PAPER_TASKS,
            wrd_template: str = "default", prompt_layout: str = "paper") -> dict:
    """Validate every utterance of `split`, write an example per task in `tasks`, and return the stats.

    `counter`: a `pronlm.model.collate.TokenCounter`, to add each example's token counts to the stats.
    """
    corpus = str(corpus)
    policy = AccentPolicy(accent_policy)
    prompts = PromptSet.from_templates(apa_template, mdd_template, wrd_template, prompt_layout)
    errors: list[UtteranceError] = []
    start = time.perf_counter()  # tokenizer loading excluded: it is not per-utterance work
    utterances = usable_utterances(corpus, split, errors, max_audio_seconds, limit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: list[float] = []
    n_examples = n_unlabelled = n_phones = n_mispronounced = 0
    with open(out / EXAMPLES_FILE, "w") as f, open(out / MANIFEST_FILE, "w") as manifest:
        for utt, samples in utterances:
            try:
                examples = build_examples(utt, prompts, policy, word_boundaries, tuple(tasks))
                pairs = [p for w in utt.words for p in aligned_word_phones(w, policy, utt.id)]
            except UtteranceError as exc:
                errors.append(exc)
                continue
            audio = str(Path(utt.audio).absolute())  # the folder is read from anywhere: no cwd-relative paths
            manifest.write(json.dumps({"audio": audio, "samples": int(samples.size)}) + "\n")
            for ex in examples:
                ex = dataclasses.replace(ex, audio=audio)
                f.write(json.dumps(ex.as_dict()) + "\n")
                if counter is not None:
                    counter.add(ex, samples.size)
            seconds.append(samples.size / SAMPLE_RATE)
            n_examples += len(examples)
            n_unlabelled += not utt.labelled
            n_phones += len(pairs)
            n_mispronounced += sum(c != h for c, h in pairs)
    elapsed = time.perf_counter() - start

    stats = {
        "corpus": corpus, "split": split, "accent_policy": policy.value, "word_boundaries": word_boundaries,
        "tasks": list(tasks), "templates": {t: name for t, name in zip(("apa", "mdd", "wrd"),
                                                                      (apa_template, mdd_template, wrd_template))
                                            if t in tasks}, "prompt_layout": prompt_layout,
        "tokenizer": counter.name if counter is not None else None,
        "utterances": len(seconds), "examples": n_examples, "unlabelled": n_unlabelled,
        "skipped": len(errors), "skip_reasons": {e.utt_id: e.problem for e in errors},
        "phones": n_phones, "mispronounced_phones": n_mispronounced,
        "audio_seconds": {"total": round(sum(seconds), 3), "mean": round(mean(seconds), 3) if seconds else None,
                          "max": round(max(seconds), 3) if seconds else None},
        "tokens": counter.means() if counter is not None else None,
        "elapsed_seconds": round(elapsed, 3),
        "utterances_per_second": round(len(seconds) / elapsed, 2) if elapsed > 0 else None,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    _log_summary(stats, out)
    return stats


def usable_utterances(corpus: str, split: str, errors: list[UtteranceError], max_audio_seconds: float | None = 30.0,
                      limit: int | None = None, exclude_speakers=()) -> Iterator[tuple[Utterance, np.ndarray]]:
    """(utterance, 16 kHz samples) for the first `limit` utterances whose audio loads; the rest go to `errors`.

    A wrong folder or split raises at once, before the caller writes anything. Utterances of
    `exclude_speakers` (a held-out development split) are left out before `limit` counts.
    """
    utterances = read_corpus(corpus, split, errors)
    if exclude_speakers:
        utterances = (u for u in utterances if u.speaker not in set(exclude_speakers))
    first = next(utterances, None)  # read_corpus is lazy: make it check the split and files now
    return _with_audio(itertools.islice(itertools.chain([first] if first else [], utterances), limit),
                       split, errors, max_audio_seconds)


def _with_audio(utterances, split: str, errors: list[UtteranceError], max_audio_seconds: float | None):
    for utt in utterances:
        try:
            if utt.audio is None:
                raise AudioError(utt.id, f"no audio listed for it in {split}/wav.scp")
            samples = load_audio(utt.audio, utt.id, max_audio_seconds)
        except UtteranceError as exc:
            errors.append(exc)
            continue
        yield utt, samples


def _log_summary(stats: dict, out: Path) -> None:
    for utt_id, reason in stats["skip_reasons"].items():
        log.warning("skipped %s: %s", utt_id, reason)
    log.info("%s/%s: %d utterances -> %d examples in %s (%d skipped, %d unlabelled); %d of %d phones mispronounced; "
             "%.1f s of audio; %.1f utterances/s", stats["corpus"], stats["split"], stats["utterances"],
             stats["examples"], out / "examples.jsonl", stats["skipped"], stats["unlabelled"],
             stats["mispronounced_phones"], stats["phones"], stats["audio_seconds"]["total"],
             stats["utterances_per_second"] or 0.0)
    for task, counts in (stats["tokens"] or {}).items():
        if counts["audio"] is None:
            continue  # a task this folder does not hold
        log.info("%s: mean tokens prompt %s, answer %s, audio %s", task, counts["prompt"], counts["answer"],
                 counts["audio"])


def read_examples(folder: str | Path, errors: list[PronlmError], max_audio_seconds: float | None = None,
                  need_targets: bool = True, limit: int | None = None) -> list[tuple[Example, int]]:
    """(example, its clip's 16 kHz samples) for each usable line of `folder`/examples.jsonl, in file order.

    Audio paths come back absolute. A clip listed in manifest.jsonl (`prepare` checked it) is not
    read again, its length is taken from there; any other clip is read once, checked as the corpus
    path checks it (missing, unreadable, truncated, silent, too short or long) and measured. A bad
    line or an unusable clip is appended to `errors` as `path:line: problem` and skipped, so no clip
    can stop a training run half-way; a folder without one usable line raises.
    `limit`: the lines of the first `limit` ids only.
    """
    folder = Path(folder)
    path = folder / EXAMPLES_FILE
    if not path.is_file():
        raise FileFormatError(f"no {EXAMPLES_FILE} in {folder}: give a folder written by `pronlm prepare` or one "
                              "with your own examples (README, \"Your own data\")")
    manifest = read_manifest(folder)
    lengths: dict[Path, int | AudioError] = {}
    seen: dict[tuple[str, str], int] = {}
    ids: set[str] = set()
    out = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            ex = example_from_json(json_line(path, n, line), need_targets)
            if (ex.id, ex.task) in seen:
                raise ValueError(f"repeats the {ex.task} example of {ex.id} (line {seen[ex.id, ex.task]})")
            if limit is not None and ex.id not in ids and len(ids) >= limit:
                continue
            audio = resolve_audio(folder, ex.audio)
            samples = clip_samples(audio, ex.id, manifest, lengths, max_audio_seconds)
        except FileFormatError as exc:
            errors.append(exc)
            continue
        except (ValueError, UtteranceError) as exc:
            errors.append(FileFormatError(f"{path}:{n}: {exc}"))
            continue
        seen[ex.id, ex.task] = n
        ids.add(ex.id)
        out.append((dataclasses.replace(ex, audio=str(audio)), samples))
    if not out:
        raise FileFormatError(f"{path}: no usable line ({len(errors)} skipped"
                              + (f"; the first: {errors[0]})" if errors else ")"))
    return out


def example_from_json(obj, need_target: bool = True) -> Example:
    """An `Example` from one parsed line; `ValueError` saying what is wrong with it otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object with id, task, audio, prompt, target; got {type(obj).__name__}")
    bad = [k for k in ("id", "task", "audio", "prompt") if not isinstance(obj.get(k), str) or not obj[k]]
    if bad:
        raise ValueError(f"{', '.join(bad)}: missing or not a non-empty string")
    task, prompt, target = obj["task"], obj["prompt"], obj.get("target")
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if prompt.count(AUDIO_PLACEHOLDER) != 1:
        raise ValueError(f"the prompt must hold {AUDIO_PLACEHOLDER} exactly once, where the audio goes")
    others = [CONTROL_TOKENS[t] for t in TASKS if t != task]
    if CONTROL_TOKENS[task] not in prompt or any(t in prompt for t in others):
        raise ValueError(f"the prompt of a {task} example must hold {CONTROL_TOKENS[task]} and no other control token")
    if not prompt.endswith(ASSISTANT):
        raise ValueError(f"the prompt must end with {ASSISTANT}: the answer follows it")
    text = obj.get("text")
    if task == "wrd" and (not isinstance(text, str) or not text.split() or text not in prompt):
        raise ValueError("a wrd line needs \"text\": the words its prompt gives, space-separated, which the "
                         "answer scores in order")
    if target is None:
        if need_target:
            raise ValueError(f"{obj['id']}/{task} has no target: nothing to train on")
    else:
        check_target(task, target)
        if task == "wrd" and [w["word"] for w in parse_answer(task, target)["words"]] != text.split():
            raise ValueError("the words of a wrd target must be those of its \"text\", in order")
    return Example(obj["id"], task, obj["audio"], prompt, target, text if task == "wrd" else None)


def check_target(task: str, target) -> None:
    """A target is the answer's JSON text, one that `predict` would read back unchanged in meaning."""
    if not isinstance(target, str):
        raise ValueError(f"target must be the answer's JSON text (a string) or null, not {type(target).__name__}")
    try:
        is_object = isinstance(json.loads(target), dict)
    except json.JSONDecodeError as exc:
        raise ValueError(f"target is not JSON text ({exc.msg}): expected e.g. {ANSWER_EXAMPLES[task]}") from None
    parsed = parse_answer(task, target)
    if not is_object or not parsed["ok"] or parsed.get("clamped"):
        problem = "not a JSON object" if not is_object else parsed["error"] or "a score outside 0-10"
        raise ValueError(f"target is not an {task.upper()} answer ({problem}): expected e.g. {ANSWER_EXAMPLES[task]}")


def resolve_audio(folder: Path, audio: str) -> Path:
    """An audio path of a line or the manifest: absolute, or relative to the folder."""
    path = Path(audio).expanduser()
    return path if path.is_absolute() else (folder / path).absolute()


def read_manifest(folder: Path) -> dict[Path, int]:
    """Clip -> 16 kHz samples from manifest.jsonl ({} when absent); a bad line is reported and ignored."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {}
    lengths = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json_line(path, n, line)
            if not (isinstance(row, dict) and isinstance(row.get("audio"), str) and type(row.get("samples")) is int
                    and row["samples"] >= 0):
                raise FileFormatError(f"{path}:{n}: expected {{\"audio\": PATH, \"samples\": 16 kHz samples}}")
        except FileFormatError as exc:
            log.warning("%s; the clip is read to measure it instead", exc)
            continue
        lengths[resolve_audio(folder, row["audio"])] = row["samples"]
    return lengths


def clip_samples(audio: Path, utt_id: str, manifest: dict[Path, int], cache: dict[Path, int | AudioError],
                 max_seconds: float | None) -> int:
    """A clip's length in 16 kHz samples, from the manifest or by reading it; `AudioError` when unusable."""
    if audio not in cache:
        try:
            if audio not in manifest:
                cache[audio] = int(load_audio(audio, utt_id).size)
            elif audio.is_file():
                cache[audio] = manifest[audio]
            else:
                raise AudioError(utt_id, f"audio file not found: {audio}")
        except AudioError as exc:
            cache[audio] = exc
    samples = cache[audio]
    if isinstance(samples, AudioError):
        raise AudioError(utt_id, samples.problem)
    if samples < 400:  # as `check_audio`: no feature frame at all
        raise AudioError(utt_id, f"audio {audio} is too short ({samples} samples at 16 kHz)")
    if max_seconds is not None and samples > max_seconds * SAMPLE_RATE:
        raise AudioError(utt_id, f"audio {audio} lasts {samples / SAMPLE_RATE:.1f} s, over the maximum of "
                                 f"{max_seconds:g} s (raise max_audio_seconds to keep it)")
    return samples

