"""Feedback for one recording of a known sentence: scores plus Azure-style per-word errors.

The model gives sentence scores (APA) and the phones it heard as one flat list (MDD). The words
of the sentence (normalised by `pronlm.text`: résumé -> RESUME, 42 -> FORTY TWO) give the phones
that were expected (CMUdict, or a lexicon file). Aligning the two says, per word, which phones
were right, substituted, deleted or inserted, and so each word's `error_type`: None /
Mispronunciation / Omission / Insertion, as Azure Pronunciation Assessment, or `NotJudged` when
the MDD answer could not be read (the word may well have been said: `errors` says why; its
`phones` are then empty). `assess` returns the one schema that the CLI and the HTTP service
share; `assess_long` adds `chunks` (one per piece of a long recording cut at pauses).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein

from pronlm.data import SAMPLE_RATE, ApaScores, PronlmError
from pronlm.prompts import TASKS
from pronlm.targets import cmudict_entries, strip_stress
from pronlm.text import TextError, plain_word, sentence_words, words as spoken_words

CORRECT, SUBSTITUTED, DELETED, INSERTED = "correct", "substituted", "deleted", "inserted"
NONE, MISPRONUNCIATION, OMISSION, INSERTION = "None", "Mispronunciation", "Omission", "Insertion"
NOT_JUDGED = "NotJudged"  # the heard phones could not be read: unknown, not omitted


class AssessError(PronlmError):
    """The sentence or the lexicon cannot be used for assessment."""


# ---------------------------------------------------------------- expected phones


def normalise_words(text: str) -> list[str]:
    """Upper-case words without punctuation, as `pronlm.text` spells them ("don't!" -> ["DON'T"])."""
    return spoken_words(text)


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
        entries.setdefault(plain_word(word), tuple(strip_stress(p) for p in phones))
    return entries


class Lexicon:
    """Word -> canonical phones without stress: a lexicon file's entries first, then CMUdict."""

    def __init__(self, extra: dict[str, tuple[str, ...]] | None = None):
        self.extra = dict(extra or {})

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        return cls(read_lexicon(path) if path else None)

    def phones(self, word: str) -> tuple[str, ...] | None:
        """The first pronunciation of an upper-case word, or None when neither source knows it.

        A hyphenated word that no source lists (WELL-KNOWN) is its parts' phones in order.
        """
        found = self._entry(word)
        if found is None and "-" in word:
            parts = [self._entry(part) for part in word.split("-")]
            found = tuple(p for part in parts for p in part) if all(parts) else None
        return found

    def _entry(self, word: str) -> tuple[str, ...] | None:
        if word in self.extra:
            return self.extra[word]
        prons = cmudict_entries().get(word.lower())
        return tuple(strip_stress(p) for p in prons[0]) if prons else None


def expected_words(text: str, lexicon: Lexicon | None = None) -> list[tuple[str, tuple[str, ...] | None]]:
    """(word, canonical phones or None when unknown) for each word of the sentence."""
    try:
        words = sentence_words(text)
    except TextError as exc:
        raise AssessError(str(exc)) from None
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
    error_type: str  # None | Mispronunciation | Omission | Insertion | NotJudged
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


def match_words(expected: list[str], recognised: list[str]) -> tuple[set[int], list[tuple[int, str]]]:
    """Text words against the recognised ones: (indices of text words that were recognised,
    [(position, word)] for each recognised word with no counterpart in the text, said before text
    word `position`). Compared part by part, so that WELL-KNOWN matches WELL KNOWN; rapidfuzz's
    `replace` blocks pair words one to one."""
    parts, owner = [], []
    for i, word in enumerate(expected):
        parts += word.split("-")
        owner += [i] * len(word.split("-"))
    heard = [part for word in recognised for part in word.split("-")]
    said, inserted = set(), []
    for op in Levenshtein.opcodes(parts, heard):
        if op.tag == "equal":
            said.update(owner[op.src_start:op.src_end])
        elif op.tag == "insert":
            at = op.src_start
            if at == len(parts):
                position = len(expected)
            elif at > 0 and owner[at - 1] == owner[at]:  # inside a compound (WELL <THE> KNOWN): after it
                position = owner[at] + 1
            else:
                position = owner[at]
            inserted += [(position, w) for w in heard[op.dest_start:op.dest_end]]
    return said, inserted


def word_feedback(words: list[tuple[str, tuple[str, ...] | None]], heard: list[str],
                  recognised: list[str], lexicon: Lexicon | None = None) -> list[WordResult]:
    """Per-word results in the order spoken: the text's words, with inserted words where they were said.

    Inserted words (recognised, not in the text) join the alignment with their dictionary phones,
    so that their phones are told apart from their neighbours'; unknown words are wildcards. A
    phone heard in addition belongs to the word before it (at the start, to the first word).
    """
    lexicon = lexicon or Lexicon()
    said, inserted = match_words([w for w, _ in words], recognised)
    entries, expected, owner = [], [], []
    for result in _spoken_order(words, inserted, lexicon):
        tokens = result.expected_phones or list(lexicon.phones(result.word) or [UNKNOWN])
        expected += tokens
        owner += [len(entries)] * len(tokens)
        entries.append(result)
    for t, op in align_phones(expected, heard):
        entries[owner[max(t, 0)]].phones.append(op)
    text_words = iter(range(len(words)))
    for result in entries:
        if result.error_type == INSERTION:  # nothing was expected: every phone heard is an insertion
            result.phones = [PhoneResult(None, p.heard, INSERTED) for p in result.phones if p.heard is not None]
        else:
            result.error_type = _error_type(result, said=next(text_words) in said)
        result.heard_phones = [p.heard for p in result.phones if p.heard is not None]
    return entries


def _spoken_order(words, inserted: list[tuple[int, str]], lexicon: Lexicon) -> list[WordResult]:
    """Empty results for the text's words, with the recognised words that are not in the text between them."""
    out = []
    for i in range(len(words) + 1):
        out += [WordResult(w, INSERTION, lexicon.phones(w) is not None) for pos, w in inserted if pos == i]
        if i < len(words):
            out.append(WordResult(words[i][0], NONE, words[i][1] is not None, list(words[i][1] or ())))
    return out


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
    answers = _answers(apa, mdd)
    if any(e["task"] == "mdd" for e in answers["errors"]):
        # what was heard is unknown: no word is judged, and none is called omitted
        results = [WordResult(w, NOT_JUDGED, p is not None, list(p or ())) for w, p in words]
    else:
        heard = [p for p in answers["phoneme_transcript"].split() if p != "|"]
        results = word_feedback(words, heard, normalise_words(answers["word_transcript"]), lexicon)
    return {"text": text, "scores": answers["scores"], "scores_expected": answers["scores_expected"],
            "word_transcript": answers["word_transcript"],
            "phoneme_transcript": answers["phoneme_transcript"], "words": [asdict(r) for r in results],
            "errors": answers["errors"], "unknown_words": list(dict.fromkeys(w for w, p in words if p is None))}


def _answers(apa: dict | None, mdd: dict | None) -> dict:
    """Scores, heard words and phones, and what failed, from one APA and one MDD prediction record."""
    apa = apa or {"ok": False, "error": "no APA prediction was returned"}
    mdd = mdd or {"ok": False, "error": "no MDD prediction was returned"}
    return {
        "scores": apa.get("scores") if apa.get("ok") else None,
        # the probability-weighted scores (pronlm.grammar.expected_scores), when the model gave them
        "scores_expected": apa.get("scores_expected") if apa.get("ok") else None,
        "word_transcript": (mdd.get("word_transcript") or "") if mdd.get("ok") else "",
        "phoneme_transcript": " ".join((mdd.get("phoneme_transcript") or "").split()) if mdd.get("ok") else "",
        "errors": [{"task": task, "error": rec.get("error") or "unknown error"}
                   for task, rec in (("apa", apa), ("mdd", mdd)) if not rec.get("ok")],
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


def assess_long(predictor, samples: np.ndarray, text: str, lexicon: Lexicon | None = None,
                batch_size: int = 8) -> dict:
    """A recording of `text` of any length, cut at pauses into pieces the model takes (`speech_chunks`).

    Each piece gets its own scores and heard words and phones (`chunks`, with its start and end in
    seconds). The text is not split: its words are judged against the pieces' heard phones joined
    in order, and `scores` is the pieces' scores averaged by duration (one decimal). When a piece's
    heard phones cannot be read, no word is judged (which words it held is unknown).
    """
    from pronlm.data import speech_chunks

    lexicon = lexicon or Lexicon()
    expected_words(text, lexicon)
    spans = speech_chunks(samples, predictor.max_audio_seconds)
    if not spans:
        raise AssessError("no speech found in the recording: check the microphone and the file")
    records = predictor.predict([(str(k), samples[a:b]) for k, (a, b) in enumerate(spans)], tasks=TASKS,
                                batch_size=batch_size)
    by_key = {(str(r["id"]), r["task"]): r for r in records}
    chunks = [{"start": round(a / SAMPLE_RATE, 2), "end": round(b / SAMPLE_RATE, 2),
               **_answers(by_key.get((str(k), "apa")), by_key.get((str(k), "mdd")))} for k, (a, b) in enumerate(spans)]
    errors = [{"task": e["task"], "error": f"piece {k + 1} ({c['start']:.1f}-{c['end']:.1f} s): {e['error']}"}
              for k, c in enumerate(chunks) for e in c["errors"]]
    scored = [(c["scores"], c["end"] - c["start"]) for c in chunks if c["scores"]]
    apa = {"ok": True, "scores": _weighted(scored)} if scored else None
    expected = [(c["scores_expected"], c["end"] - c["start"]) for c in chunks if c["scores"]]
    if apa and all(s for s, _ in expected):
        apa["scores_expected"] = _weighted(expected)
    mdd = {"ok": not any(e["task"] == "mdd" for e in errors), "error": "see the pieces' errors",
           "word_transcript": " ".join(c["word_transcript"] for c in chunks if c["word_transcript"]),
           "phoneme_transcript": " ".join(c["phoneme_transcript"] for c in chunks if c["phoneme_transcript"])}
    return {**feedback(text, apa, mdd, lexicon), "errors": errors, "chunks": chunks}


def _weighted(scored: list[tuple[dict, float]]) -> dict:
    """Scores averaged by the pieces' durations, one decimal."""
    return {a: round(sum(s[a] * d for s, d in scored) / sum(d for _, d in scored), 1) for a in ApaScores.ASPECTS}


# ---------------------------------------------------------------- command line


_COLOURS = {NONE: "32", MISPRONUNCIATION: "31", OMISSION: "35", INSERTION: "33", NOT_JUDGED: "90"}


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
    lines = ["scores:   " + _scores(result["scores"], result.get("scores_expected"))]
    for k, c in enumerate(result.get("chunks", []), 1):
        unread = any(e["task"] == "mdd" for e in c["errors"])
        scores = _scores(c["scores"], c.get("scores_expected"))
        lines.append(f"piece {k:<3}{c['start']:6.1f}-{c['end']:.1f} s  {scores}  heard: "
                     f"{c['word_transcript'] or ('(not read)' if unread else '(nothing)')}")
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
    if any(w["error_type"] == NOT_JUDGED for w in result["words"]):
        lines.append("no word is judged: the phones heard could not be read (below); the scores stand")
    lines += [_paint(f"{e['task'].upper()} answer not understood: {e['error']}", "33", colour)
              for e in result["errors"]]
    return "\n".join(lines)


def _scores(scores: dict | None, expected: dict | None = None) -> str:
    """`accuracy 7.8 (8)`: the expected score with one decimal, the model's integer beside it."""
    if not scores:
        return "unavailable"
    if not expected:
        return "  ".join(f"{k} {v}" for k, v in scores.items())
    return "  ".join(f"{k} {expected[k]:.1f} ({v})" for k, v in scores.items())


def assess_command(audio: str, text: str, base: str | None = None, adapter: str | None = None,
                   fmt: str = "table", lexicon: str | None = None, max_new_tokens: int = 256,
                   max_audio_seconds: float = 30.0, split_long: bool = False, cfg=None,
                   constrained: bool | None = None) -> int:
    """`pronlm assess`: print the assessment of one audio file as JSON or as a table.

    A clip over `max_audio_seconds` is refused, unless `split_long` cuts it at pauses (`assess_long`).
    `cfg`: the resolved config (`pronlm.cli`), in place of `base` and the templates. `constrained`:
    structured decoding (None: the config's, on by default).
    """
    from pronlm.data import load_audio

    lex = Lexicon.load(lexicon)
    expected_words(text, lex)  # a bad sentence or clip fails before the model loads
    samples = load_audio(audio, utt_id=Path(audio).name)
    seconds = len(samples) / SAMPLE_RATE
    if seconds > max_audio_seconds and not split_long:
        raise AssessError(f"{audio} lasts {seconds:.1f} s, over the limit of {max_audio_seconds:g} s: pass "
                          "--split-long to cut it at pauses and assess each piece, or record one sentence at a time")
    from pronlm.infer import Predictor

    predictor = Predictor.load(base, adapter, max_new_tokens=max_new_tokens, max_audio_seconds=max_audio_seconds,
                               cfg=cfg, constrained=constrained)
    if split_long:
        result = assess_long(predictor, samples, text, lex)
    else:
        result = assess(predictor, samples, text, lex)
    if fmt == "json":
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result, colour=sys.stdout.isatty()))
    return 0
