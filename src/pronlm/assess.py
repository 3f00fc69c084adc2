"""Feedback for one recording of a known sentence: scores plus Azure-style per-word errors.

The model gives sentence scores (APA) and the phones it heard as one flat list (MDD). The words
of the sentence give the phones that were expected (CMUdict, or a lexicon file). Aligning the two
says, per word, which phones were right, substituted, deleted or inserted, and so each word's
`error_type` (None / Mispronunciation / Omission / Insertion, as Azure Pronunciation Assessment).
`assess` returns the one schema that the CLI and the HTTP service share.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein

from pronlm.data import PronlmError
from pronlm.prompts import TASKS
from pronlm.targets import cmudict_entries, strip_stress

CORRECT, SUBSTITUTED, DELETED, INSERTED = "correct", "substituted", "deleted", "inserted"
NONE, MISPRONUNCIATION, OMISSION, INSERTION = "None", "Mispronunciation", "Omission", "Insertion"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_WORD = re.compile(r"[A-Z0-9]+(?:'[A-Z0-9]+)*")  # DON'T and O'CLOCK stay one word; hyphens split


class AssessError(PronlmError):
    """The sentence or the lexicon cannot be used for assessment."""


# ---------------------------------------------------------------- expected phones


def normalise_words(text: str) -> list[str]:
    """Upper-case words without punctuation; inner apostrophes kept ("don't!" -> ["DON'T"])."""
    return _WORD.findall(text.translate(_APOSTROPHES).upper())


def read_lexicon(path: str | Path) -> dict[str, tuple[str, ...]]:
    """`WORD PH1 PH2 ...` lines (SpeechOcean762's resource/lexicon.txt); first pronunciation wins."""
    path = Path(path)
    if not path.is_file():
        raise AssessError(f"lexicon file not found: {path}")
    entries: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";;;")):
            continue
        word, *phones = line.split()
        if not phones:
            raise AssessError(f"{path}:{number}: {word!r} has no phones; expected 'WORD PH1 PH2 ...'")
        entries.setdefault(word.translate(_APOSTROPHES).upper(), tuple(strip_stress(p) for p in phones))
    return entries


class Lexicon:
    """Word -> canonical phones without stress: a lexicon file's entries first, then CMUdict."""

    def __init__(self, extra: dict[str, tuple[str, ...]] | None = None):
        self.extra = dict(extra or {})

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        return cls(read_lexicon(path) if path else None)

    def phones(self, word: str) -> tuple[str, ...] | None:
        """The first pronunciation of an upper-case word, or None when neither source knows it."""
        if word in self.extra:
            return self.extra[word]
        prons = cmudict_entries().get(word.lower())
        return tuple(strip_stress(p) for p in prons[0]) if prons else None


def expected_words(text: str, lexicon: Lexicon | None = None) -> list[tuple[str, tuple[str, ...] | None]]:
    """(word, canonical phones or None when unknown) for each word of the sentence."""
    words = normalise_words(text)
    if not words:
        raise AssessError(f"the text {text[:80]!r} has no words: send the sentence that was read")
    lexicon = lexicon or Lexicon()
    return [(w, lexicon.phones(w)) for w in words]


# ---------------------------------------------------------------- alignment (pure)


@dataclass(frozen=True)
class PhoneResult:
    expected: str | None
    heard: str | None
    status: str  # correct | substituted | deleted | inserted


@dataclass
class WordResult:
    word: str
    error_type: str  # None | Mispronunciation | Omission | Insertion
    known: bool  # False: neither CMUdict nor the lexicon knows the word, so it is not judged
    expected_phones: list[str] = field(default_factory=list)
    heard_phones: list[str] = field(default_factory=list)
    phones: list[PhoneResult] = field(default_factory=list)


UNKNOWN = None  # an unknown word among the expected phones: a wildcard for any run of heard phones
# Costs in half units. A phone heard where an unknown word stands costs half an insertion, so it
# goes to that word instead of pulling a neighbour's phones out of place; substituting a
# neighbour's phone (2) stays cheaper than deleting it for the unknown word to take (2 + 1).
_SUB = _DEL = _INS = 2
_TAKE = 1


def align_phones(expected: list[str | None], heard: list[str]) -> list[tuple[int, PhoneResult]]:
    """Minimum-cost alignment of heard to expected phones: (index of an expected phone, step) in order.

    A phone heard in addition comes with the index of the expected phone before it (-1 at the
    start); after an `UNKNOWN` wildcard it is that word's. Hand-written dynamic programming rather
    than rapidfuzz because no edit-distance library aligns against a wildcard. Ties go to
    match/substitution, then deletion, then insertion, so the result is deterministic.
    """
    n, m = len(expected), len(heard)
    cost = [[j * _INS for j in range(m + 1)]] + [[0] * (m + 1) for _ in range(n)]
    for i, e in enumerate(expected, 1):
        cost[i][0] = cost[i - 1][0] + (0 if e is UNKNOWN else _DEL)
        for j in range(1, m + 1):
            if e is UNKNOWN:
                cost[i][j] = min(cost[i - 1][j], cost[i][j - 1] + _TAKE)
            else:
                cost[i][j] = min(cost[i - 1][j - 1] + (0 if e == heard[j - 1] else _SUB),
                                 cost[i - 1][j] + _DEL, cost[i][j - 1] + _INS)
    return _backtrace(cost, expected, heard)


def _backtrace(cost: list[list[int]], expected: list[str | None], heard: list[str]) -> list[tuple[int, PhoneResult]]:
    steps = []
    i, j = len(expected), len(heard)
    while i or j:
        e = expected[i - 1] if i else ""
        h = heard[j - 1] if j else None
        if i and j and e is not UNKNOWN and cost[i][j] == cost[i - 1][j - 1] + (0 if e == h else _SUB):
            steps.append((i - 1, PhoneResult(e, h, CORRECT if e == h else SUBSTITUTED)))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + (0 if e is UNKNOWN else _DEL):
            if e is not UNKNOWN:
                steps.append((i - 1, PhoneResult(e, None, DELETED)))
            i -= 1
        else:
            steps.append((i - 1, PhoneResult(None, h, INSERTED)))
            j -= 1
    return steps[::-1]


def inserted_words(expected: list[str], recognised: list[str]) -> list[tuple[int, str]]:
    """(position, word) for each recognised word with no counterpart in the text, said before
    text word `position`. (rapidfuzz's `replace` blocks pair words one to one.)"""
    return [(op.src_start, w) for op in Levenshtein.opcodes(expected, recognised)
            if op.tag == "insert" for w in recognised[op.dest_start:op.dest_end]]


def word_feedback(words: list[tuple[str, tuple[str, ...] | None]], heard: list[str],
                  recognised: list[str], lexicon: Lexicon | None = None) -> list[WordResult]:
    """Per-word results in the order spoken: the text's words, with inserted words where they were said.

    Inserted words (recognised, not in the text) join the alignment with their dictionary phones,
    so that their phones are told apart from their neighbours'; unknown words are wildcards. A
    phone heard in addition belongs to the word before it (at the start, to the first word).
    """
    lexicon = lexicon or Lexicon()
    entries, expected, owner = [], [], []
    for result in _spoken_order(words, recognised, lexicon):
        tokens = result.expected_phones or list(lexicon.phones(result.word) or [UNKNOWN])
        expected += tokens
        owner += [len(entries)] * len(tokens)
        entries.append(result)
    for t, op in align_phones(expected, heard):
        entries[owner[max(t, 0)]].phones.append(op)
    said = _matched_words([w for w, _ in words], recognised)
    text_words = iter(range(len(words)))
    for result in entries:
        if result.error_type == INSERTION:  # nothing was expected: every phone heard is an insertion
            result.phones = [PhoneResult(None, p.heard, INSERTED) for p in result.phones if p.heard is not None]
        else:
            result.error_type = _error_type(result, said=next(text_words) in said)
        result.heard_phones = [p.heard for p in result.phones if p.heard is not None]
    return entries


def _spoken_order(words, recognised: list[str], lexicon: Lexicon) -> list[WordResult]:
    """Empty results for the text's words, with the recognised words that are not in the text between them."""
    inserted = inserted_words([w for w, _ in words], recognised)
    out = []
    for i in range(len(words) + 1):
        out += [WordResult(w, INSERTION, lexicon.phones(w) is not None) for pos, w in inserted if pos == i]
        if i < len(words):
            out.append(WordResult(words[i][0], NONE, words[i][1] is not None, list(words[i][1] or ())))
    return out


def _matched_words(expected: list[str], recognised: list[str]) -> set[int]:
    """Indices of text words that the recognised words contain, aligned in order."""
    return {op.src_start + i for op in Levenshtein.opcodes(expected, recognised)
            if op.tag == "equal" for i in range(op.src_end - op.src_start)}


def _error_type(result: WordResult, said: bool) -> str:
    if not result.known:  # nothing to compare with: omitted only when nothing at all was heard
        return NONE if result.phones or said else OMISSION
    if result.expected_phones and all(p.status == DELETED for p in result.phones):
        return OMISSION
    return NONE if all(p.status == CORRECT for p in result.phones) else MISPRONUNCIATION


# ---------------------------------------------------------------- the shared schema


def feedback(text: str, apa: dict | None, mdd: dict | None, lexicon: Lexicon | None = None) -> dict:
    """The assessment schema from one utterance's APA and MDD prediction records."""
    lexicon = lexicon or Lexicon()
    words = expected_words(text, lexicon)
    apa = apa or {"ok": False, "error": "no APA prediction was returned"}
    mdd = mdd or {"ok": False, "error": "no MDD prediction was returned"}
    heard = (mdd.get("phoneme_transcript") or "").split() if mdd.get("ok") else []
    recognised = normalise_words(mdd.get("word_transcript") or "") if mdd.get("ok") else []
    results = word_feedback(words, [p for p in heard if p != "|"], recognised, lexicon)
    return {
        "text": text,
        "scores": apa.get("scores") if apa.get("ok") else None,
        "word_transcript": (mdd.get("word_transcript") or "") if mdd.get("ok") else "",
        "phoneme_transcript": " ".join(heard),
        "words": [asdict(r) for r in results],
        "errors": [{"task": task, "error": rec.get("error") or "unknown error"}
                   for task, rec in (("apa", apa), ("mdd", mdd)) if not rec.get("ok")],
        "unknown_words": list(dict.fromkeys(w for w, p in words if p is None)),
    }


def assess_batch(predictor, items: list[tuple[np.ndarray, str]], lexicon: Lexicon | None = None,
                 batch_size: int = 8) -> list[dict]:
    """Assess several (16 kHz samples, sentence) pairs with one `predictor.predict` call."""
    lexicon = lexicon or Lexicon()
    for _, text in items:
        expected_words(text, lexicon)  # reject a sentence without words before spending inference
    records = predictor.predict([(str(i), samples) for i, (samples, _) in enumerate(items)],
                                tasks=TASKS, batch_size=batch_size)
    by_key = {(str(r["id"]), r["task"]): r for r in records}
    return [feedback(text, by_key.get((str(i), "apa")), by_key.get((str(i), "mdd")), lexicon)
            for i, (_, text) in enumerate(items)]


def assess(predictor, samples: np.ndarray, text: str, lexicon: Lexicon | None = None) -> dict:
    """Scores and per-word feedback for one recording (16 kHz float32 mono) of `text`."""
    return assess_batch(predictor, [(samples, text)], lexicon)[0]


# ---------------------------------------------------------------- command line


_COLOURS = {NONE: "32", MISPRONUNCIATION: "31", OMISSION: "35", INSERTION: "33"}


def _paint(text: str, code: str | None, colour: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if colour and code else text


def _phone_cell(p: dict, colour: bool) -> str:
    if p["status"] == CORRECT:
        return p["heard"]
    shown = {SUBSTITUTED: f"{p['expected']}>{p['heard']}", DELETED: f"-{p['expected']}",
             INSERTED: f"+{p['heard']}"}[p["status"]]
    return _paint(shown, "31", colour)


def format_table(result: dict, colour: bool = False) -> str:
    """A readable report: scores, then one line per word (`AO>AA` substituted, `-T` deleted, `+S` inserted)."""
    scores = result["scores"]
    lines = ["scores:   " + ("  ".join(f"{k} {v}" for k, v in scores.items()) if scores else "unavailable")]
    lines.append(f"heard:    {result['phoneme_transcript'] or '(nothing)'}")
    width = max(len(w["word"]) for w in result["words"]) + 2
    lines.append(f"{'word':<{width}}{'result':<18}{'expected':<24}heard")
    for w in result["words"]:
        kind = w["error_type"] if w["known"] else f"{w['error_type']} (unknown)"
        heard = " ".join(_phone_cell(p, colour) for p in w["phones"]) or "-"
        lines.append(_paint(f"{w['word']:<{width}}{kind:<18}", _COLOURS.get(w["error_type"]), colour)
                     + f"{' '.join(w['expected_phones']) or ('-' if w['known'] else '?'):<24}{heard}")
    if result["unknown_words"]:
        lines.append("not in the lexicon (not judged): " + ", ".join(result["unknown_words"]))
    lines += [_paint(f"{e['task'].upper()} answer not understood: {e['error']}", "33", colour)
              for e in result["errors"]]
    return "\n".join(lines)


def assess_command(audio: str, text: str, base: str = "tiny", adapter: str | None = None,
                   fmt: str = "table", lexicon: str | None = None, max_new_tokens: int = 256) -> int:
    """`pronlm assess`: print the assessment of one audio file as JSON or as a table."""
    from pronlm.data import load_audio

    lex = Lexicon.load(lexicon)
    expected_words(text, lex)  # a bad sentence or clip fails before the model loads
    samples = load_audio(audio, utt_id=Path(audio).name)
    from pronlm.infer import Predictor

    result = assess(Predictor.load(base, adapter, max_new_tokens=max_new_tokens), samples, text, lex)
    if fmt == "json":
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result, colour=sys.stdout.isatty()))
    return 0
