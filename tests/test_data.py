"""Corpus readers and audio loading: the real subset, and one test per kind of broken input."""

from __future__ import annotations

import bisect
import io
import json

import numpy as np
import pytest
import soundfile as sf

from pronlm.data.audio import SAMPLE_RATE, check_complete, load_audio, speech_chunks
from pronlm.data.corpus import read_corpus
from pronlm.data.records import AudioError, CorpusError, LabelError, Mispronunciation


def long_reading(utterances, n: int = 15) -> tuple[np.ndarray, list[str], list[int]]:
    """Real clips read one after another (47 s for the first 15 train clips): samples, texts, clip ends."""
    clips = [load_audio(u.audio, u.id) for u in utterances[:n]]
    return np.concatenate(clips), [u.text for u in utterances[:n]], list(np.cumsum([len(c) for c in clips]))


def cut_wav(path, keep: float = 0.5) -> None:
    """Keep the first `keep` of a file's bytes, header and all, as a recording cut short does."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def write_corpus(root, entries: dict, split: str = "train", wav_seconds: float = 1.0):
    """A small corpus folder: one 440 Hz clip per utterance, `entries` as resource/scores.json."""
    (root / split).mkdir(parents=True)
    (root / "resource").mkdir()
    (root / "WAVE").mkdir()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(16000 * wav_seconds)) / 16000)
    for utt_id in entries:
        sf.write(root / "WAVE" / f"{utt_id}.WAV", tone, 16000)
    (root / split / "text").write_text("".join(f"{u}\t{e.get('text', 'HELLO')}\n" for u, e in entries.items()))
    (root / split / "wav.scp").write_text("".join(f"{u}\tWAVE/{u}.WAV\n" for u in entries))
    (root / split / "utt2spk").write_text("".join(f"{u} 0042\n" for u in entries))
    (root / "resource" / "scores.json").write_text(json.dumps(entries))
    return root


def entry(**changes) -> dict:
    e = {"text": "CAT", "accuracy": 8, "completeness": 10.0, "fluency": 9, "prosodic": 7, "total": 8,
         "words": [{"text": "CAT", "accuracy": 9, "stress": 10, "total": 9, "phones": ["K", "AE0", "T"],
                    "phones-accuracy": [2, 2, 2]}]}
    e.update(changes)
    return e


def test_real_subset_sizes_and_speakers(corpus_dir, train_utterances):
    test = list(read_corpus(str(corpus_dir), "test"))
    assert len(train_utterances) == 36
    assert len(test) == 10
    assert {u.speaker for u in train_utterances} == {"0001", "0005", "1362", "1372", "1435", "2799"}
    assert {u.speaker for u in test} == {"0003", "0306"}
    assert all(u.labelled for u in train_utterances + test)


def test_real_sentence_scores(corpus_dir, train_utterances):
    by_id = {u.id: u for u in train_utterances}
    u = by_id["000010011"]
    assert u.text == "WE CALL IT BEAR"
    assert u.scores.as_dict() == {"accuracy": 8, "fluency": 9, "prosodic": 9, "total": 8}
    assert u.scores.completeness == 10
    assert u.audio == str(corpus_dir / "WAVE" / "SPEAKER0001" / "000010011.WAV")
    u = by_id["000010113"]
    assert u.scores.as_dict() == {"accuracy": 6, "fluency": 9, "prosodic": 8, "total": 5}
    test = {u.id: u for u in read_corpus(str(corpus_dir), "test")}
    assert test["003060291"].scores.as_dict() == {"accuracy": 7, "fluency": 7, "prosodic": 5, "total": 6}


def test_real_words_and_mispronunciations(train_utterances):
    by_id = {u.id: u for u in train_utterances}
    whale = by_id["014350017"].words[-1]
    assert whale.text == "WHALE"
    assert whale.canonical_phones == ("W", "EY0", "L")
    assert whale.phone_accuracies == (0.0, 0.0, 0.4)
    assert whale.mispronunciations == (Mispronunciation(0, "W", "<DEL>"), Mispronunciation(1, "EY", "OW"),
                                       Mispronunciation(2, "L", "L*"))
    assert by_id["014350017"].words[0].mispronunciations == ()  # key absent in the corpus file
    theme = by_id["000010113"].words[4]
    assert (theme.text, theme.mispronunciations) == ("THEME", (Mispronunciation(1, "IY", "AH"),))
    assert by_id["000050040"].words[3].canonical_phones == ("Z", "IH", "AH1", "OW0")
    assert sum(len(w.mispronunciations) for u in train_utterances for w in u.words) == 4


def test_load_audio_resamples_to_16k(tmp_path):
    t = np.arange(8000) / 8000
    sf.write(tmp_path / "8k.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 8000, subtype="FLOAT")
    samples = load_audio(tmp_path / "8k.wav")
    assert samples.dtype == np.float32 and samples.shape == (16000,)
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(samples[1000:15000] - expected[1000:15000]).max() < 0.01  # same tone, away from the edges
    sf.write(tmp_path / "44k.wav", np.zeros(44100) + 0.1, 44100)
    assert load_audio(tmp_path / "44k.wav").shape == (16000,)


def test_load_audio_downmixes_stereo(tmp_path):
    left = 0.6 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    right = np.full(16000, 0.2)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    samples = load_audio(tmp_path / "stereo.wav")
    assert samples.shape == (16000,)
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-6)


def test_load_audio_real_clip(train_utterances):
    samples = load_audio(train_utterances[0].audio, train_utterances[0].id)
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size > 16000


def test_missing_wav(tmp_path):
    with pytest.raises(AudioError, match=r"utterance u1: audio file not found: .*nope\.wav"):
        load_audio(tmp_path / "nope.wav", "u1")


def test_unreadable_wav(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"this is not a wave file " * 20)
    with pytest.raises(AudioError, match=r"utterance u2: cannot read audio .*bad\.wav"):
        load_audio(tmp_path / "bad.wav", "u2")


def test_empty_wav(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(AudioError, match=r"utterance u3: audio .*empty\.wav is empty \(0 samples\)"):
        load_audio(tmp_path / "empty.wav", "u3")


def test_silent_wav(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(16000), 16000)
    with pytest.raises(AudioError, match=r"utterance u4: audio .*silent\.wav is silent"):
        load_audio(tmp_path / "silent.wav", "u4")


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_truncated_wav_is_reported(tmp_path, subtype):
    # before: read as a 1 s clip without a word (libsndfile cuts its frame count to what is there)
    sf.write(tmp_path / "cut.wav", np.full(32000, 0.1), 16000, subtype=subtype)
    cut_wav(tmp_path / "cut.wav")
    assert 0 < sf.info(str(tmp_path / "cut.wav")).frames < 32000
    with pytest.raises(AudioError, match=r"utterance u6: audio .*cut\.wav is truncated: its header promises 2\.00 s "
                                         r"of samples but the file holds (0\.99|1\.00) s \(cut short"):
        load_audio(tmp_path / "cut.wav", "u6")


def test_complete_wavs_pass_the_truncation_check(tmp_path):
    for name, frames in (("odd.wav", 16001), ("even.wav", 16000)):  # an odd-sized data chunk has a pad byte
        sf.write(tmp_path / name, np.full(frames, 0.1), 16000, subtype="PCM_U8")
        assert load_audio(tmp_path / name).shape == (frames,)
    data = (tmp_path / "even.wav").read_bytes()
    check_complete(io.BytesIO(data), "upload", "upload")  # what a service can call on the bytes it received
    with pytest.raises(AudioError, match="truncated"):
        check_complete(io.BytesIO(data[:-100]), "upload", "upload")
    streamed = data[:40] + b"\xff\xff\xff\xff" + data[44:-100]  # data size unknown, as a piped recorder writes
    check_complete(io.BytesIO(streamed), "upload", "upload")
    check_complete(io.BytesIO(b"fLaC" + data[4:-100]), "upload", "upload")  # not a WAV: left to the decoder


def test_too_long_wav(tmp_path):
    sf.write(tmp_path / "long.wav", np.full(48000, 0.1), 16000)
    with pytest.raises(AudioError, match=r"utterance u5: audio .* lasts 3\.0 s, over the maximum of 2 s"):
        load_audio(tmp_path / "long.wav", "u5", max_seconds=2.0)
    assert load_audio(tmp_path / "long.wav", "u5", max_seconds=3.0).shape == (48000,)


def test_scores_entry_missing_field(tmp_path):
    bad = entry()
    del bad["fluency"]
    root = write_corpus(tmp_path / "c", {"u1": entry(), "u2": bad})
    with pytest.raises(LabelError, match="utterance u2: scores.json entry lacks fluency"):
        list(read_corpus(str(root), "train"))
    errors = []
    assert [u.id for u in read_corpus(str(root), "train", errors)] == ["u1"]
    assert [(e.utt_id, e.problem) for e in errors] == [("u2", "scores.json entry lacks fluency")]


def test_mispronunciation_index_out_of_range(tmp_path):
    bad = entry()
    bad["words"][0]["mispronunciations"] = [{"canonical-phone": "T", "index": 3, "pronounced-phone": "D"}]
    root = write_corpus(tmp_path / "c", {"u1": bad})
    with pytest.raises(LabelError, match=r"utterance u1: word 0 'CAT': mispronunciation index 3 out of range "
                                         r"for 3 phones"):
        list(read_corpus(str(root), "train"))


def test_unknown_split(tmp_path):
    root = write_corpus(tmp_path / "c", {"u1": entry()})
    with pytest.raises(CorpusError, match="unknown split 'dev': SpeechOcean762 has train, test"):
        list(read_corpus(str(root), "dev"))


def test_missing_split_folder(tmp_path):
    root = write_corpus(tmp_path / "c", {"u1": entry()})
    with pytest.raises(CorpusError, match=r"has no test/ folder"):
        list(read_corpus(str(root), "test"))


def test_small_corpus_reads_back(tmp_path):
    root = write_corpus(tmp_path / "c", {"u1": entry(accuracy=7.6)})
    (u,) = read_corpus(str(root), "train")
    assert (u.id, u.speaker, u.text) == ("u1", "0042", "CAT")
    assert u.scores.accuracy == 8  # rounded to an integer target
    assert u.words[0].canonical_phones == ("K", "AE0", "T")


@pytest.mark.slow
def test_a_reading_is_cut_between_its_sentences(train_utterances):
    samples, texts, ends = long_reading(train_utterances)
    spans = speech_chunks(samples, max_seconds=30.0)
    # each piece holds one clip's speech: its middle lies inside that clip
    assert [bisect.bisect(ends, (a + b) // 2) for a, b in spans] == list(range(len(texts)))


@pytest.mark.slow
def test_speech_without_long_pauses_is_cut_under_the_limit(train_utterances):
    samples, _, _ = long_reading(train_utterances, 6)
    spans = speech_chunks(samples, max_seconds=2.0)
    assert max(b - a for a, b in spans) <= 2.0 * SAMPLE_RATE
    assert len(spans) > 6  # some sentences were cut inside


def test_no_speech_gives_no_pieces():
    assert speech_chunks(np.zeros(3 * SAMPLE_RATE, np.float32), 30.0) == []


def test_the_voice_detector_leaves_torch_threads_alone():
    import subprocess
    import sys

    code = ("import numpy, torch; torch.set_num_threads(2); from pronlm.data.audio import speech_chunks; "
            "speech_chunks(numpy.zeros(16000, numpy.float32), 30.0); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "2"  # silero_vad's import alone would leave 1: the model would run on one core
