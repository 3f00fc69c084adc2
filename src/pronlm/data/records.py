"""The typed records every stage passes on: `Utterance`, `Word`, `ApaScores`, and the errors that
name one utterance. Built from a scores.json entry by `utterance_from_scores` (both corpus readers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pronlm.errors import PronlmError

ASPECTS = ("accuracy", "fluency", "prosodic", "total")  # the four sentence scores: APA keys, in this order
WORD_ASPECTS = ("accuracy", "stress", "total")  # the three word scores: keys of each WRD entry, in this order


class CorpusError(PronlmError):
    """The corpus as a whole cannot be read (missing folder, unknown split)."""


class UtteranceError(PronlmError):
    """One utterance is unusable; batch jobs report it and go on."""

    def __init__(self, utt_id: str, problem: str):
        super().__init__(f"utterance {utt_id}: {problem}")
        self.utt_id = utt_id
        self.problem = problem


class AudioError(UtteranceError):
    """Audio missing, unreadable, truncated, empty, silent or too long."""


class LabelError(UtteranceError):
    """An annotation in scores.json is missing or inconsistent."""


@dataclass(frozen=True)
class Mispronunciation:
    index: int
    canonical_phone: str
    pronounced_phone: str  # ARPAbet phone, "<DEL>", "<unk>", or "X*" (accented, non-categorical)


@dataclass(frozen=True)
class Word:
    text: str
    canonical_phones: tuple[str, ...]  # as annotated, stress digits kept (e.g. "EY0")
    phone_accuracies: tuple[float, ...] = ()
    mispronunciations: tuple[Mispronunciation, ...] = ()
    accuracy: float | None = None
    stress: float | None = None
    total: float | None = None


@dataclass(frozen=True)
class ApaScores:
    """Sentence scores 0-10. Completeness is read but never a training target (SPEC §1)."""

    accuracy: int
    fluency: int
    prosodic: int
    total: int
    completeness: float | None = None

    ASPECTS = ASPECTS

    def as_dict(self) -> dict[str, int]:
        return {a: getattr(self, a) for a in self.ASPECTS}


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: str
    text: str
    audio: str | None  # path of a WAV file
    scores: ApaScores | None = None
    words: tuple[Word, ...] = field(default_factory=tuple)

    @property
    def labelled(self) -> bool:
        return self.scores is not None and bool(self.words)


_SENTENCE_FIELDS = ("accuracy", "fluency", "prosodic", "total", "words")
_WORD_FIELDS = ("text", "phones")


def utterance_from_scores(utt_id: str, speaker: str, text: str, audio: str | None, entry: dict | None) -> Utterance:
    """Build an `Utterance` from one scores.json entry (or none: unlabelled audio)."""
    if entry is None:
        return Utterance(utt_id, speaker, text, audio)
    missing = [f for f in _SENTENCE_FIELDS if f not in entry]
    if missing:
        raise LabelError(utt_id, f"scores.json entry lacks {', '.join(missing)}")
    words = tuple(_word(utt_id, i, w) for i, w in enumerate(entry["words"]))
    scores = ApaScores(
        accuracy=_score(entry["accuracy"]), fluency=_score(entry["fluency"]),
        prosodic=_score(entry["prosodic"]), total=_score(entry["total"]),
        completeness=entry.get("completeness"),
    )
    return Utterance(utt_id, speaker, entry.get("text", text), audio, scores, words)


def _score(value) -> int:
    return int(round(float(value)))


def _word(utt_id: str, position: int, w: dict) -> Word:
    missing = [f for f in _WORD_FIELDS if f not in w]
    if missing:
        raise LabelError(utt_id, f"word {position} in scores.json lacks {', '.join(missing)}")
    phones = tuple(w["phones"])
    accuracies = tuple(float(a) for a in w.get("phones-accuracy", ()))
    if accuracies and len(accuracies) != len(phones):
        raise LabelError(utt_id, f"word {position} {w['text']!r}: {len(phones)} phones but "
                                 f"{len(accuracies)} phone accuracies")
    mis = []
    for m in w.get("mispronunciations") or ():  # absent in the corpus files, [] in the HF copy
        index = int(m["index"])
        if not 0 <= index < len(phones):
            raise LabelError(utt_id, f"word {position} {w['text']!r}: mispronunciation index {index} "
                                     f"out of range for {len(phones)} phones")
        mis.append(Mispronunciation(index, m["canonical-phone"], m["pronounced-phone"]))
    return Word(w["text"], phones, accuracies, tuple(mis), w.get("accuracy"), w.get("stress"), w.get("total"))
