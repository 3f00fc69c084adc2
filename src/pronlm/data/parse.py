"""Model answers -> the shared prediction schema; a malformed answer is data, never an exception.

`parse_answer("apa", raw)` -> `{"ok", "error", "scores", "clamped"}`;
`parse_answer("mdd", raw)` -> `{"ok", "error", "word_transcript", "phoneme_transcript"}`.
Accepted: the text after the last `<|assistant|>` up to `<|end|>` / `<|endoftext|>`, real JSON,
Python-literal pseudo-JSON, code fences, text around the object, key spellings that differ in
case, spaces, hyphens or underscores, numbers written as strings or floats, and (for answers cut
off or written as prose) `key: value` pairs whose value is a number or a quoted string.
"""

from __future__ import annotations

import ast
import json
import math
import re

from pronlm.data.prompts import TASKS
from pronlm.data.records import ASPECTS, WORD_ASPECTS
from pronlm.data.schema import ANSWER_KEYS, SCORE_RANGE, failure
from pronlm.data.targets import ARPABET, UNK, WORD_SEPARATOR, strip_stress

MAX_CANDIDATES = 20  # objects tried per answer; bounds the work on adversarial text

_ASSISTANT = "<|assistant|>"
_STOPS = ("<|end|>", "<|endoftext|>")
_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)")
_TRIM = ".;:!?\"'()[]/"  # punctuation around a phone, never part of one

_ALIASES = {
    "accuracy": ("accuracy", "accuracy_score", "pronunciation_accuracy"),
    "fluency": ("fluency", "fluency_score"),
    "prosodic": ("prosodic", "prosody", "prosodic_score", "prosody_score"),
    "total": ("total", "total_score", "overall", "overall_score"),
    "word_transcript": ("word_transcript", "word_transcription", "words", "word"),
    "phoneme_transcript": ("phoneme_transcript", "phoneme_transcription", "phone_transcript",
                           "phone_transcription", "phonemes", "phones", "phoneme"),
}
_CANONICAL_KEY = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}
_KEY_PATTERN = "|".join(a.replace("_", r"[\s_-]+") for a in sorted(_CANONICAL_KEY, key=len, reverse=True))
_PAIR = re.compile(r"""(?<![A-Za-z])["']?(""" + _KEY_PATTERN + r""")["']?\s*[:=]\s*"""
                   r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[-+]?\d+(?:\.\d+)?)""", re.IGNORECASE)


def parse_answer(task: str, raw: str) -> dict:
    """Parse one generated answer for `task` ("apa" or "mdd"); never raises."""
    try:
        return _parse(task, raw)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; tests assert this stays unused
        return failure(task, f"unexpected parser error: {exc!r}")


def _parse(task: str, raw: str) -> dict:
    if task not in TASKS:
        return failure(task, f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    if not isinstance(raw, str):
        return failure(task, f"answer is {type(raw).__name__}, not text")
    text = answer_text(raw)
    if not text.strip():
        return failure(task, "empty answer")
    if task == "wrd":
        return _wrd(text)
    fields = find_fields(text, ANSWER_KEYS[task])
    if fields is None:
        return failure(task, "no JSON object or key: value pairs found in the answer")
    return _apa(fields) if task == "apa" else _mdd(fields)


def answer_text(raw: str) -> str:
    """The text after the last `<|assistant|>` (if any) up to the first end token."""
    text = raw.rsplit(_ASSISTANT, 1)[-1]
    for stop in _STOPS:
        text = text.split(stop, 1)[0]
    return text


def find_fields(text: str, wanted: tuple[str, ...]) -> dict | None:
    """Key-normalised fields of the first object that has one of `wanted`, else of `key: value` pairs."""
    first = None
    for obj in _objects(text):
        fields = normalise_keys(obj)
        if any(k in fields for k in wanted):
            return fields
        first = fields if first is None else first
    pairs = normalise_keys(_pairs(text))
    if any(k in pairs for k in wanted):
        return pairs
    return first


def normalise_keys(obj: dict) -> dict:
    """Canonical key names; the fields of a nested object (e.g. `{"scores": {...}}`) lifted one level."""
    out = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            for k, v in value.items():
                out.setdefault(key_name(k), v)
        else:
            out[key_name(key)] = value
    return out


def key_name(key) -> str:
    """Lower case, runs of spaces/hyphens/underscores as one underscore, aliases to their canonical name."""
    name = re.sub(r"[\s_-]+", "_", str(key).strip().lower())
    return _CANONICAL_KEY.get(name, name)


def _objects(text: str):
    """Dicts in `text`, inside code fences first; at most MAX_CANDIDATES opening braces are tried."""
    chunks = [c for source in _FENCE.findall(text) + [text] for c in _brace_chunks(source)]
    for chunk in chunks:
        obj = _load(chunk)
        if isinstance(obj, dict):
            yield obj


def _brace_chunks(text: str) -> list[str]:
    """Balanced `{...}` substrings (quotes respected), one per opening brace that closes."""
    chunks, start = [], text.find("{")
    for _ in range(MAX_CANDIDATES):
        if start == -1:
            break
        end = _closing_brace(text, start)
        if end is not None:
            chunks.append(text[start:end + 1])
        start = text.find("{", start + 1)
    return chunks


def _closing_brace(text: str, start: int) -> int | None:
    depth, quote, escaped = 0, None, False
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _load(chunk: str):
    """JSON, else a Python literal (single quotes, True/None); None when neither reads it."""
    try:
        return json.loads(chunk)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(chunk)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _pairs(text: str) -> dict:
    """`key: value` pairs in prose or cut-off JSON; values are numbers or quoted strings."""
    out = {}
    for key, value in _PAIR.findall(text):
        if value[0] in "\"'":
            loaded = _load(value) if value[0] == "'" else _json_string(value)
            value = loaded if isinstance(loaded, str) else value[1:-1]
        out.setdefault(key, value)
    return out


def _json_string(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return None


def _apa(fields: dict) -> dict:
    scores, clamped = {}, []
    for aspect in ASPECTS:
        if aspect not in fields:
            return failure("apa", f"missing aspect {aspect!r}")
        score = to_score(fields[aspect])
        if score is None:
            return failure("apa", f"aspect {aspect!r} is not a number: {str(fields[aspect])[:40]!r}")
        low, high = SCORE_RANGE
        if not low <= score <= high:
            clamped.append(aspect)
            score = min(max(score, low), high)
        scores[aspect] = score
    return {"ok": True, "error": None, "scores": scores, "clamped": clamped}


def _wrd(text: str) -> dict:
    """The first object of the answer holding a `words` list (a bare list of entries is read too)."""
    entries = None
    for obj in _objects(text):
        entries = next((v for k, v in obj.items() if key_name(k) in ("word_transcript", "word_scores")
                        and isinstance(v, list)), None)  # key_name reads "words" as MDD's alias
        if entries is not None:
            break
    if entries is None:
        start = text.find("[")
        loaded = _load(text[start:text.rfind("]") + 1]) if start != -1 else None
        entries = loaded if isinstance(loaded, list) else None
    if entries is None:
        return failure("wrd", "no JSON object with a \"words\" list found in the answer")
    words, clamped = [], []
    for n, entry in enumerate(entries):
        fields = {re.sub(r"[\s_-]+", "_", str(k).strip().lower()): v for k, v in entry.items()} \
            if isinstance(entry, dict) else {}
        word = fields.get("word", fields.get("text"))
        if not isinstance(word, str):
            return failure("wrd", f"word entry {n} has no \"word\" text: {str(entry)[:40]!r}")
        out = {"word": word}
        for aspect in WORD_ASPECTS:
            score = to_score(fields.get(aspect))
            if score is None:
                return failure("wrd", f"word entry {n} ({word}): {aspect!r} missing or not a number")
            low, high = SCORE_RANGE
            if not low <= score <= high:
                clamped.append(f"{n}.{aspect}")
                score = min(max(score, low), high)
            out[aspect] = score
        words.append(out)
    return {"ok": True, "error": None, "words": words, "clamped": clamped}


def to_score(value) -> int | None:
    """An int, a float (halves round up) or a string starting with a number -> int; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = _NUMBER.match(value)
        if not match:
            return None
        value = float(match.group(1))
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return math.floor(value + 0.5)
    return None


def _mdd(fields: dict) -> dict:
    texts = {}
    for key in ANSWER_KEYS["mdd"]:
        if key not in fields:
            return failure("mdd", f"missing {key!r}")
        value = fields[key]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = " ".join(value)
        if not isinstance(value, str):
            return failure("mdd", f"{key!r} is {type(value).__name__}, not text")
        texts[key] = value
    phones = normalise_phones(texts["phoneme_transcript"])
    unknown = [p for p in phones.split() if not is_phone_symbol(p)]
    if unknown:
        return failure("mdd", f"phoneme_transcript holds symbols that are not ARPAbet phones: {unknown[:5]}")
    return {"ok": True, "error": None, "word_transcript": " ".join(texts["word_transcript"].split()),
            "phoneme_transcript": phones}


def is_phone_symbol(token: str) -> bool:
    """An ARPAbet phone, `<unk>`, a word separator, or an accented phone `X*` (literal accent policy)."""
    return token in ARPABET or token in (UNK, WORD_SEPARATOR) or (token.endswith("*") and token[:-1] in ARPABET)


def normalise_phones(transcript: str) -> str:
    """Upper case, stress digits and stray punctuation removed, one space between phones, `<unk>` lower case."""
    phones = []
    for token in re.split(r"[\s,]+", transcript):
        token = token.strip(_TRIM)
        if not token:
            continue
        phones.append(UNK if token.lower() == UNK else strip_stress(token.upper()))
    return " ".join(phones)
