"""The phones a sentence should have: its words normalised (`pronlm.data.text`) and looked up in
CMUdict, or in a lexicon file that adds or overrides words (`--lexicon`). A word may have several
pronunciations (CMUdict: THE as DH AH or DH IY, READ as R IY D or R EH D; a lexicon file: one line
each); `variants` gives them all, in the source's order, and `pronlm.app.alignment` judges each word
against the one closest to what was heard."""

from __future__ import annotations

from pathlib import Path

from pronlm.data.targets import cmudict_entries, strip_stress
from pronlm.data.text import TextError, plain_word, sentence_words
from pronlm.data.text import words as spoken_words
from pronlm.errors import PronlmError


class AssessError(PronlmError):
    """The sentence or the lexicon cannot be used for assessment."""


def normalise_words(text: str) -> list[str]:
    """Upper-case words without punctuation, as `pronlm.data.text` spells them ("don't!" -> ["DON'T"])."""
    return spoken_words(text)


def read_lexicon(path: str | Path) -> dict[str, list[tuple[str, ...]]]:
    """`WORD PH1 PH2 ...` lines (SpeechOcean762's resource/lexicon.txt); a word on several lines has
    several pronunciations, in the file's order (the first is its main one)."""
    path = Path(path)
    if not path.is_file():
        raise AssessError(f"lexicon file not found: {path}")
    entries: dict[str, list[tuple[str, ...]]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";;;")):
            continue
        word, *phones = line.split()
        if not phones:
            raise AssessError(f"{path}:{number}: {word!r} has no phones; expected 'WORD PH1 PH2 ...'")
        variants = entries.setdefault(plain_word(word), [])
        phones = tuple(strip_stress(p) for p in phones)
        if phones not in variants:
            variants.append(phones)
    return entries


class Lexicon:
    """Word -> pronunciations (canonical phones without stress): a lexicon file's entries first, then CMUdict."""

    def __init__(self, extra: dict[str, list[tuple[str, ...]]] | None = None):
        self.extra = {w: [tuple(v) for v in (vs if vs and not isinstance(vs[0], str) else [vs])]
                      for w, vs in (extra or {}).items()}  # one pronunciation may be given bare

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        return cls(read_lexicon(path) if path else None)

    def phones(self, word: str) -> tuple[str, ...] | None:
        """The first (main) pronunciation of an upper-case word, or None when neither source knows it."""
        found = self.variants(word)
        return found[0] if found else None

    def variants(self, word: str) -> list[tuple[str, ...]]:
        """Every pronunciation of an upper-case word, main one first, without duplicates; [] when unknown.

        A hyphenated word that no source lists (WELL-KNOWN) is its parts' main phones in order.
        """
        found = self._entry(word)
        if not found and "-" in word:
            parts = [self._entry(part) for part in word.split("-")]
            found = [tuple(p for part in parts for p in part[0])] if all(parts) else []
        return found

    def _entry(self, word: str) -> list[tuple[str, ...]]:
        if word in self.extra:
            return self.extra[word]
        prons = cmudict_entries().get(word.lower()) or []
        return list(dict.fromkeys(tuple(strip_stress(p) for p in pron) for pron in prons))


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


# The one text-length limit of `pronlm assess` and `POST /assess`: read speech runs at 2-3 words a second
# (at most 2.75 in the labelled SpeechOcean762 subset, pauses included); 6 is hurried speech. The 2 spare
# words keep a one-word clip of a fraction of a second assessable.
WORDS_PER_SECOND = 6
SPARE_WORDS = 2


def check_text_fits(n_words: int, seconds: float) -> None:
    """Refuse a text far longer than a recording of `seconds` can hold (`WORDS_PER_SECOND`, plus `SPARE_WORDS`)."""
    most = int(WORDS_PER_SECOND * seconds) + SPARE_WORDS
    if n_words > most:
        raise AssessError(f"the text has {n_words} words, more than a {seconds:.1f} s recording can hold (at most "
                          f"{most}: {WORDS_PER_SECOND} a second, plus {SPARE_WORDS}): give the sentence that was read")
