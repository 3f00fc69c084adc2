"""The test data: scripts/make_test_subset.py builds it from the corpus a user downloads (the README's way),
and a run without it says loudly how many tests did not run and why."""

from __future__ import annotations

import filecmp
import os
import heapq
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import AUDIO_ONLY, CORPUS, REPO

SCRIPT = REPO / "scripts" / "make_test_subset.py"


def _merge_lines(target: Path, sources: list[Path], extra: list[str], by_id: bool = True) -> None:
    """Every line of the sources (and `extra`) once; the Kaldi utterance files ordered by id as the release's
    are (spk2age and spk2gender are not sorted there: their order is kept)."""
    lines = list(dict.fromkeys([line for s in sources if s.is_file() for line in s.read_text().splitlines()] + extra))
    if by_id:
        lines.sort(key=lambda line: line.split()[0].split(".")[0])  # stable: text-phone keeps its word order
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture(scope="module")
def release(corpus_dir, audio_only_dir, tmp_path_factory) -> Path:
    """A stand-in for the downloaded release: both test folders merged, plus utterances and a speaker the
    subset must leave out (a decoy of a kept speaker, a decoy speaker)."""
    root = tmp_path_factory.mktemp("release")
    decoys = {"train": ("000019999", "0001"), "test": ("099990001", "9999")}
    for split, (utt, spk) in decoys.items():
        wav = f"WAVE/SPEAKER{spk}/{utt}.WAV"
        extra = {"text": [f"{utt}\tDECOY WORDS"], "wav.scp": [f"{utt}\t{wav}"], "utt2spk": [f"{utt} {spk}"],
                 "spk2age": [f"{spk}\t30"] if spk == "9999" else [], "spk2gender": [f"{spk}\tm"] if spk == "9999" else []}
        for name in ("text", "wav.scp", "utt2spk", "spk2age", "spk2gender"):
            _merge_lines(root / split / name, [corpus_dir / split / name, audio_only_dir / split / name], extra[name],
                         by_id=not name.startswith("spk2"))
        spk2utt = {}
        for line in (root / split / "utt2spk").read_text().splitlines():
            u, s = line.split()
            spk2utt.setdefault(s, []).append(u)
        (root / split / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))
        (root / wav).parent.mkdir(parents=True, exist_ok=True)
        (root / wav).write_bytes(b"RIFF decoy")
    phones = heapq.merge(*[(corpus_dir if labelled else audio_only_dir).joinpath("resource", "text-phone")
                           .read_text().splitlines() for labelled in (True, False)],
                         key=lambda line: line.split(".")[0])  # the release's order is not sorted: keep both
    (root / "resource").mkdir()
    (root / "resource" / "text-phone").write_text("".join(f"{line}\n" for line in dict.fromkeys(phones)) +
                                                  "000019999.0\tD_B IY1_I K_I OY2_E\n099990001.0\tD_B IY1_E\n")
    scores = json.loads((corpus_dir / "resource" / "scores.json").read_text())
    scores["000019999"] = scores["099990001"] = next(iter(scores.values()))
    (root / "resource" / "scores.json").write_text(json.dumps(scores, indent=2))
    (root / "resource" / "lexicon.txt").write_bytes((corpus_dir / "resource" / "lexicon.txt").read_bytes())
    for folder in (corpus_dir, audio_only_dir):
        for wav in folder.glob("WAVE/*/*.WAV"):
            target = root / wav.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(wav.read_bytes())
    return root


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_the_subset_cut_from_the_release_equals_the_test_data_file_by_file(release, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(release), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for made, expected, n in ((tmp_path / "speechocean762", CORPUS, 46), (tmp_path / "speechocean762-audio",
                                                                            AUDIO_ONLY, 200)):
        assert f"{made}: {n} utterances" in done.stdout
        assert _files(made) == _files(expected) and len(list(made.glob("WAVE/*/*.WAV"))) == n
        different = [f for f in _files(made) if not filecmp.cmp(made / f, expected / f, shallow=False)]
        assert different == [], different


def test_a_folder_that_is_not_the_release_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "not the SpeechOcean762 release" in done.stderr and "openslr.org/101" in done.stderr


def test_the_summary_counts_the_tests_that_did_not_run_and_why(tmp_path):
    this = Path(__file__)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"{this}::{_two_tests[0]}",
           f"{this}::{_two_tests[1]}"]
    env = {**os.environ, "PRONLM_TEST_DATA": str(tmp_path / "nothing")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 TEST DID NOT RUN" in done.stdout
    assert "1 of 2 tests were skipped, so they prove nothing:" in done.stdout
    assert f"     1  real SpeechOcean762 subset not found at {tmp_path / 'nothing' / 'speechocean762'}" in done.stdout
    assert f"scripts/make_test_subset.py --corpus SPEECHOCEAN762_FOLDER --out {tmp_path / 'nothing'}" in done.stdout


_two_tests = ("test_the_subset_cut_from_the_release_equals_the_test_data_file_by_file",
              "test_a_folder_that_is_not_the_release_is_one_line")
