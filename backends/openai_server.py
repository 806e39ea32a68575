"""An OpenAI-compatible `/v1/chat/completions` endpoint over an in-process `LoraPolicy`.

`transformers serve` was the first choice, but it loads its own copy of the weights and cannot follow the live
LoRA adapter the trainer updates in this process, so this thin endpoint serves that adapter directly.
Concurrent requests are collected into micro-batches (one forward pass for many rollouts), which is what makes
`--max-concurrent` pay off on a CPU. Token logprobs are returned as `token_id:N`, the form vLLM uses under ART,
so ART's tokenisation recovers the exact sampled ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from art.utils.network import find_free_tcp_port
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from backends.policy import LoraPolicy, Sample, SampleRequest


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = ""


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    n: int = Field(default=1, ge=1, le=64)
    logprobs: bool = False
    stop: str | list[str] | None = None


@dataclass
class _Pending:
    request: SampleRequest
    future: Future[list[Sample]]
    base: bool = False  # sample the base model, the adapter off


# How long closing the server waits for the batch in flight. A thread still inside torch when the interpreter exits
# aborts the process ("terminate called without an active exception", exit 134), so closing waits for the decode
# to end, which it does within its longest row's max_tokens; the bound only keeps a wedged decode from hanging exit.
CLOSE_WAIT_S = 600.0


class MicroBatcher:
    """One worker thread drains queued requests into batches: the policy is never sampled from two threads."""

    def __init__(self, policy: LoraPolicy, max_batch: int = 64, wait_s: float = 0.02, max_wait_s: float = 1.0):
        self.policy = policy
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._closed = False
        self._deferred: list[_Pending] = []  # taken off the queue while another batch decoded, not yet sampled
        self._thread = threading.Thread(target=self._run, name="policy-sampler", daemon=True)
        self._thread.start()

    def submit(self, request: SampleRequest, *, base: bool = False) -> Future[list[Sample]]:
        future: Future[list[Sample]] = Future()
        if self._closed:
            future.set_exception(RuntimeError("the policy server is closing"))
        else:
            self._queue.put(_Pending(request, future, base))
        return future

    def close(self) -> None:
        """Stop taking work and wait until the sampler thread is out of torch (see CLOSE_WAIT_S): the batch in
        flight ends, queued requests fail instead of decoding."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=CLOSE_WAIT_S)

    def _wanted(self, pending: _Pending) -> bool:
        """Decode a request only while the server is open and its client still waits for it."""
        if self._closed:
            with contextlib.suppress(InvalidStateError):
                pending.future.set_exception(RuntimeError("the policy server is closing"))
            return False
        return not pending.future.cancelled()

    def _run(self) -> None:
        while True:
            deferred, self._deferred = self._deferred, []
            first = deferred[0] if deferred else self._queue.get()
            if first is None:
                return
            collected = [p for p in deferred[1:] + self._collect(first) if self._wanted(p)]
            # The adapter is on or off for a whole forward pass: base-model requests decode as a batch of their own,
            # and the kind of the oldest request goes first.
            for base in (first.base, not first.base):
                batch = [p for p in collected if p.base == base]
                if batch:
                    self._sample(batch, base)

    def _arrivals(self, base: bool) -> list[_Pending]:
        """What joins the running batch at its next token (continuous batching): the queued requests that want the
        same weights (adapter on or off), up to the first that wants the others. That one waits for the next batch,
        and from then on nothing joins, so that a stream of arrivals cannot keep it waiting for ever."""
        joining: list[_Pending] = []
        while not self._deferred and len(joining) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # close() after this batch
                break
            if item.base != base:
                self._deferred.append(item)
            elif self._wanted(item):
                joining.append(item)
        return joining

    def _sample(self, batch: list[_Pending], base: bool) -> None:
        joined: list[_Pending] = []

        def poll() -> list[tuple[SampleRequest, Callable[[list[Sample]], None]]]:
            arrived = self._arrivals(base)
            joined.extend(arrived)
            return [(p.request, functools.partial(_hand_over, p)) for p in arrived]

        try:
            self.policy.sample([p.request for p in batch], on_done=lambda i, samples: _hand_over(batch[i], samples),
                               adapter=not base, poll=poll)
        except Exception as exc:  # a failed batch fails its requests, never the worker
            for p in batch + joined:
                with contextlib.suppress(InvalidStateError):  # handed over already, or cancelled
                    p.future.set_exception(exc)

    def _collect(self, first: _Pending) -> list[_Pending]:
        """`first` and whatever arrives until `wait_s` passes with nothing new (at most `max_wait_s` in all).

        A burst reaches the queue one request at a time, each after some Python work (client and server share the
        process and its GIL under CPUBackend), so a short fixed window after the first request, or a short cap,
        split a burst in two, and the second part then waited for the first to decode (bench/serving.py shows the
        tokens/s of 8 and 32 concurrent requests). Waiting for a quiet gap, up to `max_wait_s`, is small next to a
        decode that takes many times longer. Requests that come while a batch decodes join it (`_arrivals`).
        """
        batch = [first]
        hard_deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            timeout = min(self.wait_s, hard_deadline - time.monotonic())
            if timeout <= 0:
                break
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # close() after this batch
                break
            batch.append(item)
        return batch


def _hand_over(pending: _Pending, samples: list[Sample]) -> None:
    with contextlib.suppress(InvalidStateError):  # its client went away (the future was cancelled)
        pending.future.set_result(samples)  # the caller goes on while longer rows still decode


def build_app(policy: LoraPolicy, api_key: str, served_names: callable, default_max_tokens: int = 256,
              base_names: Callable[[], set[str]] | None = None) -> FastAPI:
    """`served_names()` returns the model names accepted right now (they change as the step advances);
    `base_names()` the names answered by the base model with the adapter off (as vLLM serves the base model under
    its own name beside the LoRA adapters): the frozen executor of the planner and workflow envs."""
    app = FastAPI(title="art-agent-trainer CPU policy server")
    batcher = MicroBatcher(policy)
    app.router.on_shutdown.append(batcher.close)  # the app owns its sampler thread and ends it with itself
    tokenizer = policy.tokenizer
    render = _TokenRenderer(tokenizer)

    def check_key(authorization: str | None = Header(default=None)) -> None:
        if authorization != f"Bearer {api_key}":
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    def base() -> set[str]:
        return set(base_names()) if base_names is not None else set()

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": n, "object": "model"} for n in sorted(set(served_names()) | base())]}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(body: ChatCompletionRequest) -> JSONResponse:
        on_base = body.model in base()
        if body.model not in served_names() and not on_base:
            raise HTTPException(status_code=404, detail=f"model {body.model!r} is not served here")
        if body.stop:
            raise HTTPException(status_code=400, detail="'stop' is not supported by the CPU policy server")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        # The prompt is tokenized here, once; the sampler returns token ids and nothing is tokenized again.
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt_ids = list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)
        room = policy.max_seq_length - len(prompt_ids)
        if room < 1:
            raise HTTPException(
                status_code=400,
                detail=f"prompt has {len(prompt_ids)} tokens; the model's context is {policy.max_seq_length}",
            )
        wanted = body.max_completion_tokens or body.max_tokens or default_max_tokens
        request = SampleRequest(prompt_ids, min(wanted, room), body.temperature, body.n)
        samples = await asyncio.wrap_future(batcher.submit(request, base=on_base))
        return JSONResponse(_completion_json(body, prompt_ids, samples, render))  # already plain JSON types

    return app


class _TokenRenderer:
    """Per-token text for responses, computed once per token id rather than once per sampled token."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)  # a property that rebuilds its list on every access
        self._bytes: dict[int, list[int]] = {}

    def content(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in token_ids if t not in self.special])

    def token_bytes(self, token_id: int) -> list[int]:
        if token_id not in self._bytes:
            self._bytes[token_id] = list(self.tokenizer.decode([token_id]).encode("utf-8"))
        return self._bytes[token_id]


def _completion_json(body: ChatCompletionRequest, prompt_ids: list[int], samples: list[Sample],
                     render: _TokenRenderer) -> dict[str, Any]:
    choices = []
    for index, s in enumerate(samples):
        choice: dict[str, Any] = {
            "index": index,
            "message": {"role": "assistant", "content": render.content(s.token_ids)},
            "finish_reason": s.finish_reason,
            "logprobs": None,
        }
        if body.logprobs:  # `token_id:N` gives ART the sampled ids back without re-tokenizing the text
            choice["logprobs"] = {
                "content": [
                    {"token": f"token_id:{t}", "logprob": lp, "bytes": render.token_bytes(t), "top_logprobs": []}
                    for t, lp in zip(s.token_ids, s.logprobs, strict=True)
                ]
            }
        choices.append(choice)
    completion_tokens = sum(len(s.token_ids) for s in samples)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt_ids) + completion_tokens,
        },
    }


class ServerThread:
    """uvicorn in a daemon thread of this process, so the endpoint shares the trainer's live weights."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        # ART's helper probes 127.0.0.1, the one host the CPU backend serves on (ART is imported here already).
        self.port = port or find_free_tcp_port()
        self.app = app
        # Requests still open this long after stop() are cancelled, so shutting down waits only for the decode
        # already running (MicroBatcher.close).
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="policy-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"CPU policy server did not start on {self.host}:{self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Returns once uvicorn has shut down, its app's sampler thread included (see CLOSE_WAIT_S)."""
        self._server.should_exit = True
        self._thread.join(timeout=CLOSE_WAIT_S + 30)


def new_api_key() -> str:
    return secrets.token_hex(24)  # hex: never a leading '-' that a command line reads as a flag
