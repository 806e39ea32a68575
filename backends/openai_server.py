"""An OpenAI-compatible `/v1/chat/completions` endpoint over an in-process `LoraPolicy`.

`transformers serve` was the first choice, but it loads its own copy of the weights and cannot follow the live
LoRA adapter the trainer updates in this process, so this thin endpoint serves that adapter directly.
Concurrent requests are collected into micro-batches (one forward pass for many rollouts), which is what makes
`--max-concurrent` pay off on a CPU. Token logprobs are returned as `token_id:N`, the form vLLM uses under ART,
so ART's tokenisation recovers the exact sampled ids.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException
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


class MicroBatcher:
    """One worker thread drains queued requests into batches: the policy is never sampled from two threads."""

    def __init__(self, policy: LoraPolicy, max_batch: int = 64, wait_s: float = 0.005):
        self.policy = policy
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="policy-sampler", daemon=True)
        self._thread.start()

    def submit(self, request: SampleRequest) -> Future[list[Sample]]:
        future: Future[list[Sample]] = Future()
        self._queue.put(_Pending(request, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                results = self.policy.sample([p.request for p in batch])
            except Exception as exc:  # a failed batch fails its requests, never the worker
                for p in batch:
                    p.future.set_exception(exc)
                continue
            for p, samples in zip(batch, results, strict=True):
                p.future.set_result(samples)


def build_app(policy: LoraPolicy, api_key: str, served_names: callable, default_max_tokens: int = 256) -> FastAPI:
    """`served_names()` returns the model names accepted right now (they change as the step advances)."""
    app = FastAPI(title="art-agent-trainer CPU policy server")
    batcher = MicroBatcher(policy)
    app.router.on_shutdown.append(batcher.close)  # the app owns its sampler thread and ends it with itself
    tokenizer = policy.tokenizer

    def check_key(authorization: str | None = Header(default=None)) -> None:
        if authorization != f"Bearer {api_key}":
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": n, "object": "model"} for n in served_names()]}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(body: ChatCompletionRequest) -> dict[str, Any]:
        if body.model not in served_names():
            raise HTTPException(status_code=404, detail=f"model {body.model!r} is not served here")
        if body.stop:
            raise HTTPException(status_code=400, detail="'stop' is not supported by the CPU policy server")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
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
        samples = await asyncio.wrap_future(batcher.submit(request))
        return _completion_json(body, prompt_ids, samples, tokenizer)

    return app


def _completion_json(body: ChatCompletionRequest, prompt_ids: list[int], samples: list[Sample], tokenizer) -> dict:
    choices = []
    for index, s in enumerate(samples):
        content_ids = [t for t in s.token_ids if t not in tokenizer.all_special_ids]
        choice: dict[str, Any] = {
            "index": index,
            "message": {"role": "assistant", "content": tokenizer.decode(content_ids)},
            "finish_reason": s.finish_reason,
            "logprobs": None,
        }
        if body.logprobs:
            choice["logprobs"] = {
                "content": [
                    {
                        "token": f"token_id:{t}",
                        "logprob": lp,
                        "bytes": list(tokenizer.decode([t]).encode("utf-8")),
                        "top_logprobs": [],
                    }
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn in a daemon thread of this process, so the endpoint shares the trainer's live weights."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.app = app
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", access_log=False)
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
        self._server.should_exit = True
        self._thread.join(timeout=10)


def new_api_key() -> str:
    return secrets.token_urlsafe(24)
