"""The web page in headless Chromium (Playwright): upload an espeak-ng clip, type the sentence,
submit, and see the scores and highlighted words. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.test_serve import (
    REPO,
    CannedPredictor,
    inprocess_server,
    pronlm_process,
    pronlm_server,
)

SENTENCE = "We call zorblax bear"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def spoken_wav(espeak, tmp_path_factory) -> Path:
    """The sentence spoken by espeak-ng (22,050 Hz mono WAV; the page converts it to 16 kHz)."""
    path = tmp_path_factory.mktemp("espeak") / "sentence.wav"
    subprocess.run([espeak, "-w", str(path), SENTENCE], check=True, timeout=60)
    return path


def assess_in_page(browser, url: str, wav: Path, screenshot: str):
    """Open the page, upload `wav`, type the sentence, submit; the page once the result shows."""
    page, errors = open_page(browser, url)
    choose_clip(page, wav)
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden]) #sentence .word", timeout=60_000)
    save_screenshot(page, screenshot)
    assert errors == [], errors
    return page


def open_page(browser, url: str):
    """A new page at `url` and the list its script errors go to."""
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    return page, errors


def choose_clip(page, wav: Path) -> None:
    page.fill("#text", SENTENCE)
    page.set_input_files("#file", str(wav))
    page.wait_for_selector("#submit:not([disabled])", timeout=15_000)  # the clip was converted to WAV


def save_screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    assert (ARTIFACTS / name).stat().st_size > 0


def words_shown(page) -> list[tuple[str, str]]:
    return [(w.inner_text(), w.get_attribute("class")) for w in page.query_selector_all("#sentence .word")]


@pytest.mark.slow
def test_page_with_the_tiny_model_in_free_text(browser, spoken_wav, tmp_path):
    """The real server and model, free text: its random answers cannot be parsed, which the page must say."""
    with pronlm_process(tmp_path / "server.log", "constrained=false") as (url, _):
        page = assess_in_page(browser, url, spoken_wav, "webpage.png")
    assert [w for w, _ in words_shown(page)] == ["WE", "CALL", "ZORBLAX", "BEAR"]
    assert all("notjudged" in c for _, c in words_shown(page))  # nothing understood: not judged, not omitted
    assert "could not be read" in page.inner_text("#problems")
    assert [s.inner_text() for s in page.query_selector_all("#scores .value")] == ["—"] * 4
    page.close()


@pytest.mark.slow
def test_page_with_the_tiny_model_constrained(browser, spoken_wav, tmp_path):
    """The same model with structured decoding (the default): its answers parse, so scores (expected,
    one decimal) and judged words are shown, and no problem is reported."""
    with pronlm_server(tmp_path / "server.log") as url:
        page = assess_in_page(browser, url, spoken_wav, "webpage-constrained.png")
    values = [s.inner_text() for s in page.query_selector_all("#scores .value")]
    assert len(values) == 4 and all(re.fullmatch(r"(10|\d)\.\d", v) for v in values), values
    assert not any("notjudged" in c for _, c in words_shown(page))
    assert "could not be read" not in page.inner_text("body")
    page.close()


def test_page_shows_scores_and_phone_errors(browser, spoken_wav):
    """A test double answers CALL as K AA L, an extra word THAT, and phones for the unknown word."""
    predictor = CannedPredictor(words="WE CALL THAT ZORBLAX BEAR",
                                phones="W IY K AA L DH AE T Z AO R B L AE K S B EH R")
    from pronlm.app.serve import create_app

    with inprocess_server(create_app(predictor)) as url:
        page = assess_in_page(browser, url, spoken_wav, "webpage-feedback.png")
    assert words_shown(page) == [("WE", "word ok"), ("CALL", "word mispronunciation"), ("+THAT", "word insertion"),
                                 ("ZORBLAX", "word ok unknown"), ("BEAR", "word ok")]
    assert [s.inner_text() for s in page.query_selector_all("#scores .value")] == ["7", "8", "8", "7"]
    assert "AO→AA" in page.inner_text("#details")
    assert "ZORBLAX" in page.inner_text("#problems")
    # the page sent 16 kHz mono WAV: espeak's 22,050 Hz clip resampled in the browser
    samples = predictor.samples[0]
    assert samples.ndim == 1 and abs(samples.size - _espeak_seconds(spoken_wav) * 16000) < 50
    assert np.abs(samples).max() > 0.05
    page.close()


def _espeak_seconds(path: Path) -> float:
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate


def test_page_asks_for_the_key_once(browser, spoken_wav):
    """A server with a key: the page asks when it answers 401, again when the key is wrong, then
    keeps the key for the tab (sessionStorage), so a reload assesses without asking."""
    from pronlm.app.serve import create_app

    key = "classroom-key"
    predictor = CannedPredictor()
    with inprocess_server(create_app(predictor, api_key=key)) as url:
        page, errors = open_page(browser, url)
        assert page.is_hidden("#key-row")
        choose_clip(page, spoken_wav)
        page.click("#submit")
        page.wait_for_selector("#key-row:not([hidden])", timeout=15_000)
        assert "needs an API key" in page.inner_text("#status")
        save_screenshot(page, "webpage-key-asked.png")
        page.fill("#key", "a guess")
        page.click("#submit")
        page.wait_for_function("document.getElementById('status').textContent.includes('not accepted')")
        page.fill("#key", key)
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden]) #sentence .word", timeout=60_000)
        save_screenshot(page, "webpage-key.png")
        assert page.is_hidden("#key-row") and page.evaluate("sessionStorage.getItem('pronlm-api-key')") == key
        page.reload()
        choose_clip(page, spoken_wav)
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden]) #sentence .word", timeout=60_000)
        assert page.is_hidden("#key-row")
    assert predictor.batches == [1, 1] and errors == [], errors  # 401s never reached the model
    page.close()


def test_page_shows_the_expected_scores_with_one_decimal(browser, spoken_wav):
    expected = {"accuracy": 6.84, "fluency": 8.0, "prosodic": 7.65, "total": 7.04}
    from pronlm.app.serve import create_app

    with inprocess_server(create_app(CannedPredictor(expected=expected))) as url:
        page = assess_in_page(browser, url, spoken_wav, "webpage-expected-scores.png")
    assert [s.inner_text() for s in page.query_selector_all("#scores .value")] == ["6.8", "8.0", "7.7", "7.0"]
    assert page.query_selector("#scores .score").get_attribute("title") == \
        "expected 6.84; the model's integer answer: 7"


class ScoredPredictor(CannedPredictor):
    """The canned answers with a spread for each score and a score for every phone (K poor, the rest good)."""

    def predict(self, items, tasks=("apa", "mdd"), batch_size=8):
        out = super().predict(items, tasks, batch_size)
        for r in out:
            if r["task"] == "apa":
                r |= {"scores_expected": {"accuracy": 7.2, "fluency": 8.0, "prosodic": 7.9, "total": 7.1},
                      "scores_sd": {"accuracy": 0.93, "fluency": 0.1, "prosodic": 0.5, "total": 0.6},
                      "scores_interval": {"accuracy": [6, 8], "fluency": [8, 8], "prosodic": [7, 8], "total": [6, 8]}}
        return out

    def phone_scores(self, items):
        return [[{"phone": p, "score": 0.3 if p == "K" else 1.9, "p": 0.9, "likely": "G" if p == "K" else p}
                 for phones in words for p in phones] for _, _, words in items]


def test_page_shows_the_spread_and_a_colour_for_every_phone(browser, spoken_wav):
    from pronlm.app.serve import create_app

    with inprocess_server(create_app(ScoredPredictor())) as url:
        page = assess_in_page(browser, url, spoken_wav, "webpage-phone-scores.png")
    assert [s.inner_text() for s in page.query_selector_all("#scores .value")] == ["7.2", "8.0", "7.9", "7.1"]
    assert page.inner_text("#scores .spread") == "± 0.9 · 80 %: 6–8"
    call = [r for r in page.query_selector_all("#details tbody tr") if r.inner_text().startswith("CALL")][0]
    spans = call.query_selector_all(".phone.scored")
    assert [s.inner_text() for s in spans] == ["K15", "AO95", "L95"]  # the score as a subscript
    # hsl(1.2 x 15 = 18, 70%, 88%): C = 0.24 x 0.7 = 0.168, X = 0.3 C, m = 0.796 -> (0.964, 0.846, 0.796) x 255
    assert spans[0].get_attribute("style") == "background: rgb(246, 216, 203);"
    assert spans[1].get_attribute("style") == "background: rgb(207, 246, 203);"  # hsl(114, ...): green
    assert spans[0].get_attribute("title") == "K: 15/100, sounds most like G"
    assert "sound scores" in page.inner_text("#details thead")
    page.close()


def test_page_without_a_sentence_assesses_free_speech(browser, spoken_wav):
    from pronlm.app.serve import create_app

    predictor = CannedPredictor()
    with inprocess_server(create_app(predictor)) as url:
        page, errors = open_page(browser, url)
        page.set_input_files("#file", str(spoken_wav))
        page.wait_for_selector("#submit:not([disabled])", timeout=15_000)
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden]) #sentence .word", timeout=60_000)
        save_screenshot(page, "webpage-free-speech.png")
    assert [w for w, _ in words_shown(page)] == ["WE", "CALL", "IT", "BEAR"]  # the model's own words
    assert "No sentence given" in page.inner_text("#problems") and errors == []
    page.close()
