"""`backend=vllm`: predictions from a running vLLM server, with the records `predict.Predictor` gives.

This module owns the HTTP side of prediction: the chat-completions request of one example (the
training prompt as a chat message, the clip as a base64 WAV, greedy decoding to the same stop
tokens, the answer's JSON grammar), the requests sent concurrently, and every way a server can
fail turned into a `VllmError` that names the URL and the fix and carries the answers finished
before it. vLLM runs the exported model in its own environment (`vllm serve EXPORT
--trust-remote-code`, README); this side needs only httpx (no retries hidden in a client library,
and the timeouts and errors are ours to word).
"""

from __future__ import annotations

import base64
import io
import json
import os
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace

import httpx
import numpy as np
import soundfile as sf

from pronlm.config import Config
from pronlm.data.audio import SAMPLE_RATE
from pronlm.data.prompts import (
    ASSISTANT,
    AUDIO_PLACEHOLDER,
    END,
    EOT,
    PAPER_TASKS,
    USER,
    Example,
    PromptSet,
)
from pronlm.errors import BackendError, PronlmError
from pronlm.evaluation.backend import Backend, answer_record
from pronlm.evaluation.grammar import (
    TOP_LOGPROBS,
    answer_schema,
    distributions_from_logprobs,
    word_scores_from_logprobs,
)
from pronlm.model.collate import audio_limit

# o200k tokens of one word's entry in a word answer: 23 + the word's own tokens (`{"word": "WE", "accuracy":
# 10, ...}`: 24; benchmarks/bench_word_task.py), room for long words; a word answer's max_tokens grows with its words.
WORD_ENTRY_TOKENS = 32
# The server's model cannot be asked for its audio encoder; it is Phi-4-multimodal, whose encoder
# reduces time 8x (SPEC §2): the 40 s limit the transformers backend finds in the model's config.
PHI4_AUDIO = SimpleNamespace(time_reduction=8)
VLLM_KEY_ENV = "VLLM_API_KEY"  # what `vllm serve --api-key` also reads
SERVE_HINT = "start it with `vllm serve EXPORT --trust-remote-code ...` (README, 'Serving with vLLM')"


class VllmError(BackendError):
    """The vLLM server could not be reached, failed, was too slow, or answered something else."""


def chat_content(example: Example) -> str:
    """The user message whose chat rendering `<|user|>{content}<|end|><|assistant|>` is the training prompt.

    The audio placeholder stays in the text: vLLM then puts the clip there rather than in front.
    """
    prompt, tail = example.prompt, END + ASSISTANT
    if not (prompt.startswith(USER) and prompt.endswith(tail) and prompt.count(AUDIO_PLACEHOLDER) == 1):
        raise PronlmError(f"{example.id}/{example.task}: backend=vllm sends a prompt as one chat message, so it "
                          f"must be {USER}...{AUDIO_PLACEHOLDER}...{tail} (prompts.render_prompt): {prompt[:80]!r}")
    return prompt[len(USER):-len(tail)]


def wav_base64(samples: np.ndarray) -> str:
    """16 kHz mono samples as a 32-bit float WAV (lossless: the server hears the clip the model would)."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class VllmPredictor(Backend):
    """A `Backend` over a vLLM server: the records `pronlm.evaluation.predict.Predictor` gives."""

    url: str
    prompts: PromptSet
    model: str | None = None  # None: the server's only model
    max_new_tokens: int = 256
    max_audio_seconds: float | None = 30.0  # None: Phi-4-multimodal's encoder limit
    timeout: float = 120.0
    constrained: bool = True
    accent_policy: str = "unk"
    word_boundaries: bool = False
    tasks: tuple[str, ...] = PAPER_TASKS  # what the served model was trained to answer

    def __post_init__(self):
        self.url = self.url.rstrip("/")
        self.max_audio_seconds = audio_limit(self.max_audio_seconds, PHI4_AUDIO)
        key = os.environ.get(VLLM_KEY_ENV)
        self.client = httpx.Client(timeout=self.timeout, headers={"Authorization": f"Bearer {key}"} if key else {})
        self.model = self.model or self.served_model()
        self.schemas = {task: answer_schema(task, self.accent_policy, self.word_boundaries) for task in ("apa", "mdd")}

    @classmethod
    def from_config(cls, cfg: Config) -> "VllmPredictor":
        """The client for the server `cfg` names, asking as `cfg`'s prompts and inference settings say."""
        return cls(cfg.vllm_url, PromptSet.from_config(cfg), cfg.vllm_model,
                   cfg.max_new_tokens, cfg.max_audio_seconds, cfg.request_timeout, cfg.constrained,
                   cfg.accent_policy, cfg.word_boundaries, tuple(cfg.tasks))

    def served_model(self) -> str:
        """The name of the one model the server serves; several: an error listing them."""
        body = self._call("GET", "/models")
        try:
            names = [m["id"] for m in body["data"]]
        except (KeyError, TypeError) as exc:
            raise self._malformed("/models", f"no data[].id ({exc!r})") from None
        if len(names) != 1:
            raise VllmError(f"the vLLM server at {self.url} serves {len(names)} models ({', '.join(names) or 'none'}): "
                            "say which with vllm_model=NAME")
        return names[0]

    def request(self, example: Example, samples: np.ndarray) -> dict:
        """The chat-completions body for one example: what the transformers backend would generate, greedily."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": chat_content(example)},
                {"type": "input_audio", "input_audio": {"data": wav_base64(samples), "format": "wav"}}]}],
            "temperature": 0.0,
            "max_tokens": self.max_new_tokens if example.task != "wrd" else
            max(self.max_new_tokens, WORD_ENTRY_TOKENS * len(example.text.split()) + 8),
            # The raw answer as the transformers backend decodes it: special tokens kept, ending in the
            # stop token that ended it (vLLM drops a stop string or EOS from the text unless asked).
            "stop": [END, EOT],
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
        }
        if self.constrained:
            schema = self.schemas.get(example.task) or answer_schema("wrd", words=example.text.split())
            body["structured_outputs"] = {"json": schema}
        if example.task in ("apa", "wrd"):  # the value tokens' logprobs at each score: the expected scores
            body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        return body

    def ask(self, example: Example, samples: np.ndarray) -> tuple[str, dict | None]:
        """The raw answer to one example, and its score distributions (APA) or expected word scores (WRD),
        when the server sent logprobs."""
        body = self._call("POST", "/chat/completions", self.request(example, samples))
        try:
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise self._malformed("/chat/completions", f"no choices[0].message.content ({exc!r})") from None
        if not isinstance(content, str):
            raise self._malformed("/chat/completions", f"content is {type(content).__name__}, not text")
        logprobs = (choice.get("logprobs") or {}).get("content") if isinstance(choice, dict) else None
        dists = None
        if isinstance(logprobs, list) and example.task in ("apa", "wrd"):
            read = distributions_from_logprobs if example.task == "apa" else word_scores_from_logprobs
            dists = read(logprobs)
        return content, dists

    def predict_examples(self, examples: list[Example], audio: list[np.ndarray], batch_size: int = 8) -> list[dict]:
        """One record per example, in order, up to `batch_size` requests in flight at once.

        When a request fails, those not yet sent are not sent; the error raised carries the records
        of every request that did finish (`answered`), so that `predict` writes them.
        """
        for ex in examples:
            chat_content(ex)  # a prompt that cannot be sent fails before any request
        records, error = [], None
        pool = ThreadPoolExecutor(max_workers=max(1, batch_size), thread_name_prefix="pronlm-vllm")
        try:
            futures = [pool.submit(self.ask, ex, a) for ex, a in zip(examples, audio)]
            for ex, future in zip(examples, futures):
                try:
                    records.append(answer_record(ex, *future.result()))
                except CancelledError:
                    continue
                except VllmError as exc:
                    error = error or exc
                    for waiting in futures:
                        waiting.cancel()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            error.answered = records
            raise error
        return records

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON of one API call, or a `VllmError` saying what went wrong and what to do."""
        url = self.url + path
        try:
            response = self.client.request(method, url, json=body)
        except httpx.TimeoutException:
            raise VllmError(f"the vLLM server at {self.url} did not answer {path} within {self.timeout:g} s "
                            "(request_timeout): it may be busy or still loading; raise request_timeout=SECONDS "
                            "or lower --batch-size") from None
        except httpx.ConnectError as exc:
            raise VllmError(f"cannot reach the vLLM server at {self.url} ({exc}): {SERVE_HINT}, or set "
                            "vllm_url=http://HOST:PORT/v1 to where it runs") from None
        except httpx.TransportError as exc:
            raise VllmError(f"the connection to the vLLM server at {self.url} broke during {path} "
                            f"({type(exc).__name__}: {exc}): see the server's log") from None
        if response.status_code >= 400:
            raise VllmError(f"the vLLM server at {self.url} answered {path} with HTTP {response.status_code}: "
                            f"{error_detail(response)}{status_hint(response.status_code)}")
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise self._malformed(path, f"not JSON: {response.text[:120]!r}") from None

    def _malformed(self, path: str, what: str) -> VllmError:
        return VllmError(f"the vLLM server at {self.url} sent a malformed answer to {path} ({what}): is vllm_url "
                         "an OpenAI-compatible API (http://HOST:PORT/v1)?")


def error_detail(response: httpx.Response, limit: int = 300) -> str:
    """The server's own reason: OpenAI's `{"error": {"message"}}`, FastAPI's `{"detail"}`, else the text."""
    try:
        body = response.json()
        error = body.get("error")
        detail = (error.get("message") if isinstance(error, dict) else error) or body.get("message") \
            or body.get("detail") or body
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        detail = response.text
    detail = str(detail).strip() or response.reason_phrase
    return detail if len(detail) <= limit else detail[:limit - 1] + "…"


def status_hint(status: int) -> str:
    if status == 401:
        return f" (set {VLLM_KEY_ENV} to the key the server was started with)"
    if status == 404:
        return " (check vllm_url, which ends in /v1, and vllm_model: GET /v1/models lists what it serves)"
    if status >= 500:
        return " (see the server's log)"
    return ""
