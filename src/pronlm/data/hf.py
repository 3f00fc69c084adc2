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


def check_dataset_reachable(name: str) -> None:
    """A hub dataset that is neither cached nor reachable is one line, at once, naming what to give instead.

    Without this, `datasets` retries for about 30 s and ends in a traceback.
    """
    import os

    import datasets
    from huggingface_hub import HfApi, constants

    cached = (Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}",
              Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___"))
    if Path(name).exists() or any(folder.is_dir() for folder in cached):
        return  # a local dataset folder, or downloaded before: `datasets` reads its cache (offline too)
    fix = ("give --corpus with a SpeechOcean762 folder (the official release) or --data with a folder of "
           "examples.jsonl")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise CorpusError(f"corpus hf:{name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: {fix}")
    try:
        HfApi().dataset_info(name, timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure here means the download would fail too
        raise CorpusError(f"cannot fetch corpus hf:{name} from the Hugging Face hub, and it is not in the local "
                          f"cache ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): {fix}") from None


def read_hf(name: str, split: str, errors: list[UtteranceError] | None = None) -> Iterator[Utterance]:
    try:
        import datasets
    except ImportError as exc:
        raise CorpusError("reading hf:... needs the `datasets` package: pip install 'pronlm[hf]'") from exc
    check_dataset_reachable(name)
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
