"""Shared fixtures: real SpeechOcean762 clips from ../shared/data, the tiny tokenizer and model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PRONLM_TEST_DATA", REPO.parent / "shared" / "data"))
CORPUS = DATA / "speechocean762"
AUDIO_ONLY = DATA / "speechocean762-audio"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real labelled subset (46 utterances) in the corpus layout."""
    if not (CORPUS / "resource" / "scores.json").is_file():
        pytest.skip(f"real SpeechOcean762 subset not found at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session")
def audio_only_dir() -> Path:
    if not (AUDIO_ONLY / "train" / "wav.scp").is_file():
        pytest.skip(f"unlabelled SpeechOcean762 clips not found at {AUDIO_ONLY}")
    return AUDIO_ONLY


@pytest.fixture(scope="session")
def train_utterances(corpus_dir):
    from pronlm.data.corpus import read_corpus

    return list(read_corpus(str(corpus_dir), "train"))


@pytest.fixture(scope="session")
def _tiny_tokenizer():
    from pronlm.model.adapters import add_control_tokens
    from pronlm.model.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    add_control_tokens(tok)
    return tok


@pytest.fixture()
def tiny_tokenizer(_tiny_tokenizer):
    """The tiny byte-level BPE tokenizer with Phi-4's special tokens and <|APA|>/<|MDD|> (a fresh copy)."""
    import copy

    return copy.deepcopy(_tiny_tokenizer)


@pytest.fixture()
def tiny_model(_tiny_tokenizer):
    """A fresh 2-layer, hidden-64 random Phi4MultimodalForCausalLM (seed 0) matching the tiny tokenizer."""
    from pronlm.model.tiny import build_tiny_model

    return build_tiny_model(_tiny_tokenizer, seed=0)


def kill_when(proc, ready) -> None:
    """SIGKILL a running subprocess as soon as `ready()` holds (it must still be running then). No clock:
    a process that hangs is pytest-timeout's to stop."""
    import signal
    import time

    while not ready():
        assert proc.poll() is None, "the process ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does it)")
    return exe


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say loudly how many tests did not run and why: a skipped test proves nothing (`-rs` lists each one)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    ran = sum(len(terminalreporter.stats.get(k, [])) for k in ("passed", "failed", "error", "xfailed", "xpassed"))
    terminalreporter.section(f"{len(skipped)} TEST{'S' * (len(skipped) > 1)} DID NOT RUN", sep="!", red=True, bold=True)
    terminalreporter.write_line(f"{len(skipped)} of {len(skipped) + ran} tests were skipped, so they prove nothing:",
                                red=True, bold=True)
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"  {n:4d}  {reason}", red=True)
    if any(str(DATA) in reason for reason in reasons):
        terminalreporter.write_line(f"  build the test data: python scripts/make_test_subset.py --corpus "
                                    f"SPEECHOCEAN762_FOLDER --out {DATA} (README, 'Test data')", bold=True)
