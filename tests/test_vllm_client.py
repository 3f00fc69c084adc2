"""`backend=vllm` against a stand-in for vLLM's OpenAI-compatible server (stdlib http.server on
loopback) that records every request and answers in the chat-completions format."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf

from pronlm.cli import main
from pronlm.config import Config, load_template
from pronlm.data.audio import load_audio
from pronlm.data.corpus import read_corpus
from pronlm.data.prompts import Example, PromptSet, render_prompt
from pronlm.errors import PronlmError
from pronlm.evaluation.grammar import answer_schema
from pronlm.evaluation.vllm_client import VllmError, VllmPredictor, chat_content
from tests.test_serve import CLIP, free_port, inprocess_server, post

MODEL = "pronlm-export"
APA_ANSWER = '{"accuracy": 7, "fluency": 8, "prosodic": 6, "total": 7}<|end|>'
MDD_ANSWER = '{"word_transcript": "WE CALL IT BEAR", "phoneme_transcript": "W IY K AO L IH T B EH R"}<|end|>'
APA_RECORD = {"task": "apa", "raw": APA_ANSWER, "ok": True, "error": None,
              "scores": {"accuracy": 7, "fluency": 8, "prosodic": 6, "total": 7}, "clamped": [],
              # the server gives no logits: the same schema, no expected scores
              "scores_expected": None, "scores_sd": None, "scores_interval": None}
MDD_RECORD = {"task": "mdd", "raw": MDD_ANSWER, "ok": True, "error": None,
              "word_transcript": "WE CALL IT BEAR", "phoneme_transcript": "W IY K AO L IH T B EH R"}


class StandIn:
    """What a vLLM server does for pronlm: GET /v1/models, POST /v1/chat/completions.

    `fail_after`: chat requests after the first N get HTTP 500; `delay`: seconds before each chat answer;
    `reply`: a raw body (bytes) instead of a completion.
    """

    def __init__(self, models=(MODEL,), fail_after: int | None = None, delay: float = 0.0, reply: bytes | None = None,
                 logprobs: list[dict] | None = None):
        self.models, self.fail_after, self.delay, self.reply = list(models), fail_after, delay, reply
        self.logprobs = logprobs  # the APA answer's `logprobs.content`, when the request asks for logprobs
        self.requests: list[tuple[str, str, dict, dict | None]] = []  # method, path, headers, JSON body
        self.chats = 0
        self.lock = threading.Lock()

    def chat_bodies(self) -> list[dict]:
        return [body for method, path, _, body in self.requests if path == "/v1/chat/completions"]

    def handle(self, method: str, path: str, headers: dict, body: dict | None) -> tuple[int, bytes]:
        with self.lock:
            self.requests.append((method, path, headers, body))
        if path == "/v1/models":
            data = [{"id": m, "object": "model"} for m in self.models]
            return 200, json.dumps({"object": "list", "data": data}).encode()
        with self.lock:
            self.chats += 1
            failing = self.fail_after is not None and self.chats > self.fail_after
        time.sleep(self.delay)
        if failing:
            error = {"message": "EngineCore encountered an issue", "type": "InternalServerError", "code": 500}
            return 500, json.dumps({"error": error}).encode()
        if self.reply is not None:
            return 200, self.reply
        text = body["messages"][0]["content"][0]["text"]
        content = APA_ANSWER if "<|APA|>" in text else WRD_ANSWER if "<|WRD|>" in text else MDD_ANSWER
        return 200, json.dumps({
            "id": f"chatcmpl-{self.chats}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": {"content": self.logprobs} if body.get("logprobs") and self.logprobs else None,
                         "finish_reason": "stop", "stop_reason": "<|end|>"}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}}).encode()


@contextmanager
def running(stand_in: StandIn):
    """The stand-in on a free loopback port; yields its API base URL (`http://127.0.0.1:PORT/v1`)."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method):
            size = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(size)) if size else None
            status, data = stand_in.handle(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (timeout tests)
                pass

        def do_GET(self):
            self._answer("GET")

        def do_POST(self):
            self._answer("POST")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads, server.block_on_close = True, False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def wav_samples(b64: str) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(base64.b64decode(b64)), dtype="float32")
    assert rate == 16000
    return samples


@pytest.fixture(scope="module")
def clip(corpus_dir) -> np.ndarray:
    return load_audio(corpus_dir / CLIP[0], "000010011")


def test_the_request_is_the_training_prompt_the_clip_greedy_decoding_and_the_grammar(clip, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sesame")
    stand_in = StandIn()
    with running(stand_in) as url:
        predictor = VllmPredictor(url + "/", PromptSet.from_templates(), max_new_tokens=64)
        records = predictor.predict([("000010011", clip)])
    assert records == [{"id": "000010011", **APA_RECORD}, {"id": "000010011", **MDD_RECORD}]
    assert predictor.model == MODEL and predictor.max_audio_seconds == 30.0
    assert [(m, p) for m, p, _, _ in stand_in.requests][0] == ("GET", "/v1/models")
    assert all(h["authorization"] == "Bearer sesame" for _, _, h, _ in stand_in.requests)
    bodies = sorted(stand_in.chat_bodies(), key=lambda b: "<|MDD|>" in b["messages"][0]["content"][0]["text"])
    for task, body in zip(("apa", "mdd"), bodies):
        audio = body["messages"][0]["content"][1]
        assert audio["type"] == "input_audio" and audio["input_audio"]["format"] == "wav"
        assert np.array_equal(wav_samples(audio["input_audio"].pop("data")), clip)  # float WAV: every sample exact
        control = {"apa": "<|APA|>", "mdd": "<|MDD|>"}[task]
        assert body == {
            "model": MODEL,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": f"{control}<|audio_1|>{load_template(task)}"},
                {"type": "input_audio", "input_audio": {"format": "wav"}}]}],
            "temperature": 0.0, "max_tokens": 64, "stop": ["<|end|>", "<|endoftext|>"],
            "include_stop_str_in_output": True, "skip_special_tokens": False, "spaces_between_special_tokens": False,
            "structured_outputs": {"json": answer_schema(task)},
            **({"logprobs": True, "top_logprobs": 20} if task == "apa" else {})}  # APA: `scores_expected`
        # the chat template's `<|user|>{content}<|end|><|assistant|>` is exactly the prompt trained on
        text = body["messages"][0]["content"][0]["text"]
        assert f"<|user|>{text}<|end|><|assistant|>" == PromptSet.from_templates().for_task(task)
    assert list(bodies[0]["structured_outputs"]["json"]["properties"]) == ["accuracy", "fluency", "prosodic", "total"]
    assert bodies[0]["structured_outputs"]["json"]["properties"]["total"] == {"type": "integer", "minimum": 0,
                                                                              "maximum": 10}


@pytest.mark.parametrize("layout, apa, mdd", [
    ("paper", "<|APA|><|audio_1|>Rate it.", "<|MDD|><|audio_1|>Say it."),
    ("instructions-first", "<|APA|>Rate it.<|audio_1|>", "<|MDD|>Say it.<|audio_1|>"),
])
def test_the_chat_content_keeps_the_prompt_layout(layout, apa, mdd):
    assert chat_content(Example("u", "apa", None, render_prompt("apa", "Rate it.", layout), None)) == apa
    assert chat_content(Example("u", "mdd", None, render_prompt("mdd", "Say it.", layout), None)) == mdd


def test_the_client_asks_in_the_config_s_prompt_layout(clip):
    stand_in = StandIn()
    with running(stand_in) as url:
        cfg = Config(backend="vllm", vllm_url=url, prompt_layout="instructions-first", max_new_tokens=64)
        VllmPredictor.from_config(cfg).predict([("000010011", clip)], tasks=("apa",))
    (body,) = stand_in.chat_bodies()
    assert body["messages"][0]["content"][0]["text"] == f"<|APA|>{load_template('apa')}<|audio_1|>"


def test_a_named_model_skips_the_lookup_and_unconstrained_sends_no_grammar(clip):
    stand_in = StandIn(models=("a", "b"))
    with running(stand_in) as url:
        predictor = VllmPredictor(url, PromptSet.from_templates("short", "short"), model="b", constrained=False)
        (record,) = predictor.predict([("x", clip)], tasks=("mdd",))
    assert record == {"id": "x", **MDD_RECORD}
    ((method, path, _, body),) = stand_in.requests
    assert (method, path, body["model"], "structured_outputs" in body) == ("POST", "/v1/chat/completions", "b", False)
    assert body["messages"][0]["content"][0]["text"] == "<|MDD|><|audio_1|>" + load_template("mdd", "short")
    assert body["max_tokens"] == 256


def test_a_server_with_several_models_needs_vllm_model():
    with running(StandIn(models=("a", "b"))) as url, pytest.raises(VllmError) as err:
        VllmPredictor(url, PromptSet.from_templates())
    assert str(err.value) == f"the vLLM server at {url} serves 2 models (a, b): say which with vllm_model=NAME"


@pytest.mark.parametrize("reply, reason", [
    (b"<html>nginx</html>", "not JSON: '<html>nginx</html>'"),
    (b'{"choices": []}', "no choices[0].message.content (IndexError('list index out of range'))"),
    (b'{"choices": [{"message": {"content": null}}]}', "content is NoneType, not text"),
])
def test_a_malformed_answer_is_an_error_naming_the_server(clip, reply, reason):
    with running(StandIn(reply=reply)) as url, pytest.raises(VllmError) as err:
        VllmPredictor(url, PromptSet.from_templates()).predict([("x", clip)], tasks=("apa",))
    assert str(err.value) == (f"the vLLM server at {url} sent a malformed answer to /chat/completions ({reason}): "
                              "is vllm_url an OpenAI-compatible API (http://HOST:PORT/v1)?")


def test_an_http_error_gives_the_server_s_own_reason(clip):
    with running(StandIn(fail_after=0)) as url, pytest.raises(VllmError) as err:
        VllmPredictor(url, PromptSet.from_templates()).predict([("x", clip)], tasks=("apa",))
    assert str(err.value) == (f"the vLLM server at {url} answered /chat/completions with HTTP 500: EngineCore "
                              "encountered an issue (see the server's log)")
    assert err.value.answered == []


@pytest.mark.parametrize("body, detail", [
    (b'{"error": {"message": "bad schema", "type": "BadRequestError"}}', "bad schema"),  # vLLM / OpenAI
    (b'{"error": "boom"}', "boom"),
    (b'{"detail": "Not Found"}', "Not Found"),  # FastAPI
    (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),  # a proxy
    (b"", "Not Found"),  # nothing: the status's phrase
])
def test_an_error_answer_s_reason(body, detail):
    import httpx

    from pronlm.evaluation.vllm_client import error_detail

    assert error_detail(httpx.Response(404, content=body)) == detail


def predict_args(corpus_dir, out, url, *extra):
    return ["predict", "--corpus", str(corpus_dir), "--split", "test", "--out", str(out), "backend=vllm",
            f"vllm_url={url}", *extra]


def error_of(stderr: str) -> str:
    """The CLI's error message and notes (after the progress bar's lines)."""
    return stderr[stderr.index("pronlm predict: error: "):]


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def keys(records) -> set[tuple[str, str]]:
    return {(r["id"], r["task"]) for r in records}


@pytest.fixture(scope="module")
def test_ids(corpus_dir) -> list[str]:
    return [u.id for u in read_corpus(str(corpus_dir), "test")][:4]


def test_predict_through_the_cli_writes_the_parsed_records(corpus_dir, test_ids, tmp_path):
    out = tmp_path / "test.jsonl"
    with running(StandIn()) as url:
        assert main(predict_args(corpus_dir, out, url, "--limit", "2")) == 0
    assert sorted(lines(out), key=lambda r: (r["id"], r["task"])) == [
        {"id": i, **record} for i in sorted(test_ids[:2]) for record in (APA_RECORD, MDD_RECORD)]
    saved = (tmp_path / "test.config.yaml").read_text()
    assert "backend: vllm" in saved and f"vllm_url: {url}" in saved


def test_a_server_failing_part_way_keeps_what_it_answered_and_a_rerun_asks_only_the_rest(
        corpus_dir, test_ids, tmp_path, capsys):
    out = tmp_path / "test.jsonl"
    failing = StandIn(fail_after=6)  # 4 utterances x 2 tasks; --batch-size 4: two rounds of 4 requests
    with running(failing) as url:
        assert main(predict_args(corpus_dir, out, url, "--limit", "4", "--batch-size", "4")) == 2
    err = error_of(capsys.readouterr().err)
    assert err.startswith(f"pronlm predict: error: the vLLM server at {url} answered /chat/completions with "
                          "HTTP 500: EngineCore encountered an issue (see the server's log)\n")
    assert f"the 6 predictions this run made before it are in {out}: run the same command again" in err
    assert "Traceback" not in err
    first = lines(out)
    assert len(first) == len(keys(first)) == 6 and failing.chats == 8

    healthy = StandIn()
    with running(healthy) as url:
        assert main(predict_args(corpus_dir, out, url, "--limit", "4", "--batch-size", "4")) == 0
    everything = {(i, t) for i in test_ids for t in ("apa", "mdd")}
    asked_again = {(r["id"], r["task"]) for r in lines(out)[6:]}
    assert healthy.chats == 2 and asked_again == everything - keys(first)
    assert len(lines(out)) == 8 and keys(lines(out)) == everything


def test_predict_data_sends_each_line_s_own_prompt(corpus_dir, tmp_path):
    """`predict --data`: a folder's lines, each asked with its own prompt; a prompt that is not one user
    turn fails before any request."""
    folder, clip = tmp_path / "mine", str(corpus_dir / CLIP[0])
    folder.mkdir()
    prompt = "<|user|><|MDD|><|audio_1|>Say what you hear, as JSON.<|end|><|assistant|>"
    line = {"id": "rec1", "task": "mdd", "audio": clip, "prompt": prompt, "target": None}
    (folder / "examples.jsonl").write_text(json.dumps(line) + "\n")
    stand_in = StandIn()
    with running(stand_in) as url:
        assert main(["predict", "--data", str(folder), "--out", str(tmp_path / "p.jsonl"), "backend=vllm",
                     f"vllm_url={url}"]) == 0
        (body,) = stand_in.chat_bodies()
        assert body["messages"][0]["content"][0]["text"] == "<|MDD|><|audio_1|>Say what you hear, as JSON."
        assert lines(tmp_path / "p.jsonl") == [{"id": "rec1", **MDD_RECORD}]

        with pytest.raises(PronlmError) as err:
            VllmPredictor(url, PromptSet.from_templates()).predict_examples(
                [Example("rec1", "mdd", clip, "<|MDD|><|audio_1|>Say it.", None)], [np.zeros(16000, np.float32)])
    assert str(err.value).startswith("rec1/mdd: backend=vllm sends a prompt as one chat message, so it must be "
                                     "<|user|>...<|audio_1|>...<|end|><|assistant|>")
    assert len(stand_in.chat_bodies()) == 1


def test_a_slow_server_is_a_timeout_message(corpus_dir, tmp_path, capsys):
    with running(StandIn(delay=3.0)) as url:
        assert main(predict_args(corpus_dir, tmp_path / "p.jsonl", url, "--limit", "1", "request_timeout=0.3")) == 2
    err = error_of(capsys.readouterr().err)
    assert err.startswith(f"pronlm predict: error: the vLLM server at {url} did not answer /chat/completions "
                          "within 0.3 s (request_timeout): it may be busy or still loading; raise "
                          "request_timeout=SECONDS or lower --batch-size\n")
    assert "the 0 predictions this run made before it" in err


def test_an_unreachable_server_is_a_clear_message(corpus_dir, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    assert main(predict_args(corpus_dir, tmp_path / "p.jsonl", url, "--limit", "1")) == 2
    err = error_of(capsys.readouterr().err)
    assert err.startswith(f"pronlm predict: error: cannot reach the vLLM server at {url} (")
    assert err.rstrip().endswith("start it with `vllm serve EXPORT --trust-remote-code ...` (README, 'Serving "
                                 "with vLLM'), or set vllm_url=http://HOST:PORT/v1 to where it runs")
    assert "Traceback" not in err and not (tmp_path / "p.jsonl").exists()


def test_a_bad_backend_is_a_config_error(tmp_path, capsys):
    assert main(["predict", "--out", str(tmp_path / "p.jsonl"), "backend=vlm"]) == 2
    assert "backend takes one of transformers, vllm, not 'vlm'" in capsys.readouterr().err


def test_serve_answers_through_the_vllm_server(corpus_dir, monkeypatch):
    """`pronlm serve backend=vllm` builds its service around the vLLM client (uvicorn replaced), whose
    answers come from the stand-in; a failing server is a 502 naming it."""
    import uvicorn

    from pronlm import cli

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    stand_in = StandIn(fail_after=2)
    with running(stand_in) as url:
        assert cli.main(["serve", "backend=vllm", f"vllm_url={url}"]) == 0
        assert isinstance(apps[0].state.worker.predictor, VllmPredictor)
        with inprocess_server(apps[0]) as service:
            audio = (corpus_dir / CLIP[0]).read_bytes()
            ok, failed = post(service, audio, name="000010011.WAV"), post(service, audio, name="000010011.WAV")
    assert ok.status_code == 200, ok.text
    result = ok.json()
    assert result["scores"] == APA_RECORD["scores"] and result["errors"] == []
    assert (result["word_transcript"], result["phoneme_transcript"]) == ("WE CALL IT BEAR", "W IY K AO L IH T B EH R")
    assert failed.status_code == 502
    assert failed.json()["detail"] == (f"the vLLM server at {url} answered /chat/completions with HTTP 500: "
                                       "EngineCore encountered an issue (see the server's log)")
    assert stand_in.chats == 4


def apa_logprobs(alternatives: dict[str, dict[str, float]]) -> list[dict]:
    """`logprobs.content` of APA_ANSWER tokenized as o200k would (`": 8` is `":`, ` `, `8`); at each score,
    the chosen token and the value tokens given in `alternatives[aspect]` ({text: logprob})."""
    import re

    pieces = [p for p in re.split(r'(\d+|": |, "|\{"|\}|<\|end\|>)', APA_ANSWER) if p]
    content, aspect = [], None
    for piece in pieces:
        item = {"token": piece, "logprob": -0.01, "bytes": list(piece.encode()), "top_logprobs": []}
        if piece.isdigit():
            alts = alternatives[aspect]
            item["logprob"] = alts[piece]
            item["top_logprobs"] = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts.items()]
            item["top_logprobs"].append({"token": "x", "logprob": -9.0, "bytes": [120]})  # not a value: ignored
        aspect = next((a for a in ("accuracy", "fluency", "prosodic", "total") if piece.endswith(a)), aspect)
        content.append(item)
    assert "".join(c["token"] for c in content) == APA_ANSWER
    return content


def test_expected_scores_come_from_the_servers_logprobs(clip):
    import math

    ln = math.log
    alternatives = {"accuracy": {"7": ln(0.5), "8": ln(0.25), "6": ln(0.25)},  # 7.0
                    "fluency": {"8": ln(0.6), "9": ln(0.2), "10": ln(0.1)},  # 8.0 x 0.6 + 1.8 + 1.0 over 0.9
                    "prosodic": {"6": 0.0},  # only the chosen value in the top list: the greedy value
                    "total": {"7": ln(0.3), "10": ln(0.3), "0": ln(0.4)}}  # 2.1 + 3.0 + 0
    stand_in = StandIn(logprobs=apa_logprobs(alternatives))
    with running(stand_in) as url:
        (record,) = VllmPredictor(url, PromptSet.from_templates()).predict([("u", clip)], tasks=("apa",))
    assert record["scores"] == {"accuracy": 7, "fluency": 8, "prosodic": 6, "total": 7}
    assert record["scores_expected"] == pytest.approx({"accuracy": 7.0, "fluency": (4.8 + 1.8 + 1.0) / 0.9,
                                                       "prosodic": 6.0, "total": 5.1}, abs=1e-4)
    # total: p(0) 0.4, p(7) 0.3, p(10) 0.3 -> 10th percentile 0, 90th percentile 10
    assert record["scores_interval"] == {"accuracy": [6, 8], "fluency": [8, 10], "prosodic": [6, 6], "total": [0, 10]}


WRD_ANSWER = ('{"words": [{"word": "WE", "accuracy": 10, "stress": 10, "total": 9}, '
              '{"word": "CALL", "accuracy": 3, "stress": 5, "total": 4}]}<|end|>')


def test_a_word_request_fixes_the_texts_words_in_its_schema(clip):
    stand_in = StandIn()
    with running(stand_in) as url:
        predictor = VllmPredictor(url, PromptSet.from_templates(), max_new_tokens=16)
        (record,) = predictor.predict([("u", clip)], tasks=("wrd",), words={"u": ["WE", "CALL"]})
    (body,) = stand_in.chat_bodies()
    assert body["structured_outputs"] == {"json": answer_schema("wrd", words=["WE", "CALL"])}
    assert body["max_tokens"] == 32 * 2 + 8  # grows with the words, past max_new_tokens
    assert body["logprobs"] is True  # the expected word scores come from them
    assert f"<|user|>{body['messages'][0]['content'][0]['text']}<|end|><|assistant|>" == \
        PromptSet.from_templates().for_task("wrd", "WE CALL")
    assert record["ok"] and record["words"][1] == {"word": "CALL", "accuracy": 3, "stress": 5, "total": 4}
    assert record["words_expected"] is None  # this server sent no logprobs
