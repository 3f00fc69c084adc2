"""The Hugging Face reader, offline: the real subset written in mispeech/speechocean762's parquet
schema (data/{split}-*.parquet, undecoded audio, hyphenated word keys) reads back to the same records."""

from __future__ import annotations

import json

import pytest

from pronlm.data.audio import load_audio
from pronlm.data.corpus import read_corpus

datasets = pytest.importorskip("datasets", reason="the hf extra (datasets) is not installed")


def hf_copy(corpus_dir, root, split):
    """One split of the real subset in the hub dataset's layout and column types."""
    scores = json.loads((corpus_dir / "resource" / "scores.json").read_text())
    rows = []
    for utt in read_corpus(str(corpus_dir), split):
        entry = scores[utt.id]
        words = [{**w, "mispronunciations": w.get("mispronunciations", [])} for w in entry["words"]]
        rows.append({"accuracy": entry["accuracy"], "completeness": float(entry["completeness"]),
                     "fluency": entry["fluency"], "prosodic": entry["prosodic"], "text": entry["text"],
                     "total": entry["total"], "words": words, "speaker": utt.speaker, "gender": "m", "age": 9,
                     "audio": {"bytes": open(utt.audio, "rb").read(), "path": f"{utt.id}.wav"}})
    ds = datasets.Dataset.from_list(rows).cast_column("audio", datasets.Audio(decode=False))
    (root / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))


def test_hf_reader_gives_the_same_records_as_the_corpus_folder(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRONLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_copy(corpus_dir, tmp_path / "hub", "test")
    from_hf = list(read_corpus(f"hf:{tmp_path / 'hub'}", "test"))
    from_dir = list(read_corpus(str(corpus_dir), "test"))
    assert [u.id for u in from_hf] == [u.id for u in from_dir] and len(from_hf) == 10
    for a, b in zip(from_hf, from_dir):
        assert (a.speaker, a.text, a.scores, a.words) == (b.speaker, b.text, b.scores, b.words)
        assert (load_audio(a.audio) == load_audio(b.audio)).all()
    assert any(w.mispronunciations for u in from_hf for w in u.words)  # 003060259 ROAD R->L survives
