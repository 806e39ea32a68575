"""Chat completions from the policy server for rollouts: aiohttp straight to `/chat/completions`, answers as the
OpenAI SDK's own types, errors as its own exceptions, retries as it does them.

Why not `AsyncOpenAI.chat.completions.create`: every rollout turn is one call, and all of them share one event loop
on one core. The SDK spends the most client CPU per call (a recursive TypedDict transform of every message, then
httpx), a bare httpx post less, aiohttp least (the figures: `_GATHER_WHY` in bench/run_all.py). With N rollouts
finishing together, the loop adds about N x that cost before the last of them can send again, so at many in flight
it decides whether gather keeps up with the model server. What a rollout sees is unchanged: a `Choice` with token
logprobs, `openai.BadRequestError` when the context is full, the SDK's retry policy.
"""

from __future__ import annotations

import asyncio
import errno
import random
from typing import Any

import aiohttp
import httpx
import openai
import pydantic
from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion import Choice

MAX_RETRIES = 2  # the OpenAI SDK's defaults: 2 retries, 0.5 s doubling to at most 8 s, Retry-After up to 60 s
INITIAL_DELAY_S, MAX_DELAY_S, MAX_RETRY_AFTER_S = 0.5, 8.0, 60.0
MAX_STALE_RESENDS = 4

_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
    404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _status_error(url: str, status: int, headers: dict[str, str], content: bytes) -> openai.APIStatusError:
    """The SDK's exception for this status, carrying an httpx response as the SDK's own would."""
    response = httpx.Response(status, headers=headers, content=content, request=httpx.Request("POST", url))
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    detail = body.get("error", body) if isinstance(body, dict) else body
    message = detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
    kind = _STATUS_ERRORS.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return kind(f"Error code: {status} - {message}", response=response, body=body)


def _delay(attempt: int, headers: dict[str, str] | None) -> float:
    try:
        after = float((headers or {}).get("retry-after", ""))
        if 0 <= after <= MAX_RETRY_AFTER_S:
            return after
    except ValueError:
        pass
    return min(INITIAL_DELAY_S * 2**attempt, MAX_DELAY_S) * (1 - 0.25 * random.random())


def _stale(exc: aiohttp.ClientError) -> bool:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)


def _parse(data: dict[str, Any]) -> ChatCompletion:
    """Validation runs in pydantic-core (cheaper than the SDK's recursive construct, whose cost grows with the
    logprobs); a server that strays from the schema gets the SDK's lenient parse."""
    try:
        return ChatCompletion.model_validate(data)
    except pydantic.ValidationError:
        return ChatCompletion.construct(**data)


class ModelClient:
    """One connection pool to one OpenAI-compatible endpoint, opened on first use inside the running loop."""

    def __init__(self, base_url: str, api_key: str | None, max_connections: int, *, timeout_s: float = 1200.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {api_key or 'EMPTY'}"}
        self.max_connections = max(1, max_connections)
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Idle connections are dropped after 4 s, before vLLM's uvicorn (5 s keep-alive) closes them under us.
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=4.0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, headers=self.headers)
        return self._session

    async def chat(self, body: dict[str, Any]) -> ChatCompletion:
        session = self._open()
        attempt, stale_resends = 0, 0
        while True:
            headers: dict[str, str] | None = None
            try:
                async with session.post(self.url, json=body) as response:
                    if response.status < 400:
                        return _parse(await response.json(content_type=None))
                    headers = {k.lower(): v for k, v in response.headers.items()}
                    error: openai.APIError = _status_error(self.url, response.status, headers, await response.read())
                    if not _retryable(response.status):
                        raise error
            except (TimeoutError, aiohttp.ServerTimeoutError):
                error = openai.APITimeoutError(request=httpx.Request("POST", self.url))
            except aiohttp.ClientError as exc:  # refused, reset, dropped: as the SDK, a connection error
                # A pooled connection the server had just closed (as uvicorn does after a 500) shows as a disconnect
                # or a reset; the pool drops it, so sending again reaches another connection or a new one. That
                # costs no retry and no wait, a few times over (several pooled connections can go stale at once).
                if _stale(exc) and stale_resends < MAX_STALE_RESENDS:
                    stale_resends += 1
                    continue
                error = openai.APIConnectionError(message=f"Connection error: {exc!r}",
                                                  request=httpx.Request("POST", self.url))
            if attempt == MAX_RETRIES:
                raise error
            await asyncio.sleep(_delay(attempt, headers))
            attempt += 1

    async def complete(self, model: str, messages: list[dict[str, Any]], **params: Any) -> Choice:
        return (await self.chat({"model": model, "messages": messages, **params})).choices[0]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
