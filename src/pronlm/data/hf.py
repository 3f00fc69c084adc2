"""Reader for the Hugging Face copy of SpeechOcean762 (`hf:mispeech/speechocean762`).

Needs the `datasets` extra and hub access. Audio is kept undecoded and written once to WAV files
under the cache folder, so the rest of pronlm reads paths exactly as for the corpus directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pronlm.config import cache_dir
from pronlm.data.records import (
    CorpusError,
    LabelError,
    Utterance,
    UtteranceError,
    utterance_from_scores,
)


def read_hf(name: str, split: str, errors: list[UtteranceError] | None = None) -> Iterator[Utterance]:
    try:
        import datasets
    except ImportError as exc:
        raise CorpusError("reading hf:... needs the `datasets` package: pip install 'pronlm[hf]'") from exc
    ds = datasets.load_dataset(name, split=split).cast_column("audio", datasets.Audio(decode=False))
    out_dir = cache_dir() / name.replace("/", "--") / split
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(ds):
        audio = row["audio"]
        utt_id = Path(audio.get("path") or "").stem or f"{split}-{i:05d}"
        wav = out_dir / f"{utt_id}.wav"
        if not wav.exists() and audio.get("bytes"):
            wav.write_bytes(audio["bytes"])
        entry = {k: row[k] for k in ("accuracy", "completeness", "fluency", "prosodic", "total", "words", "text")}
        try:
            yield utterance_from_scores(utt_id, str(row.get("speaker", "")), row["text"], str(wav), entry)
        except LabelError as exc:
            if errors is None:
                raise
            errors.append(exc)
