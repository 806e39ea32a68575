"""Chat completions from the policy server for rollouts: httpx straight to `/chat/completions`, answers as the OpenAI
SDK's own types, errors as its own exceptions, retries as it does them.

Why not `AsyncOpenAI.chat.completions.create`: on this project's 2-core machine the SDK's request building (a
recursive TypedDict transform of every message) and response handling cost ~2.0-2.5 ms of event-loop CPU per call
against ~1.0 ms for a plain post and the same pydantic types; at 64 rollouts in flight that difference decides
whether the gather loop keeps up with the model server (bench/gather.py). Everything a rollout sees is unchanged:
a `Choice` with token logprobs, `openai.BadRequestError` when the context is full, the SDK's retry policy.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import openai
import pydantic
from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion import Choice

# httpx's pool rescans all of its connections for every queued request, so one pool serving 64 rollouts in
# flight spent ~80% of the gather loop's time there (bench/gather.py: ratio 0.21 at 64). Small pools don't.
CONNECTIONS_PER_CLIENT = 8
MAX_RETRIES = 2  # the OpenAI SDK's defaults: 2 retries, 0.5 s doubling to at most 8 s, Retry-After up to 60 s
INITIAL_DELAY_S, MAX_DELAY_S, MAX_RETRY_AFTER_S = 0.5, 8.0, 60.0

_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
    404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _status_error(response: httpx.Response) -> openai.APIStatusError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    detail = body.get("error", body) if isinstance(body, dict) else body
    message = detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
    kind = _STATUS_ERRORS.get(response.status_code,
                              openai.InternalServerError if response.status_code >= 500 else openai.APIStatusError)
    return kind(f"Error code: {response.status_code} - {message}", response=response, body=body)


def _delay(attempt: int, response: httpx.Response | None) -> float:
    if response is not None:
        try:
            after = float(response.headers.get("retry-after", ""))
            if 0 <= after <= MAX_RETRY_AFTER_S:
                return after
        except ValueError:
            pass
    return min(INITIAL_DELAY_S * 2**attempt, MAX_DELAY_S) * (1 - 0.25 * random.random())


def _parse(data: dict[str, Any]) -> ChatCompletion:
    """Validation runs in pydantic-core (0.016 ms for a 16-token answer against 0.09 ms for the SDK's recursive
    construct, which grows with the logprobs); a server that strays from the schema gets the SDK's lenient parse."""
    try:
        return ChatCompletion.model_validate(data)
    except pydantic.ValidationError:
        return ChatCompletion.construct(**data)


class ModelClient:
    """Round-robin over several small connection pools to one OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, api_key: str | None, pools: int, *, timeout_s: float = 1200.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {api_key or 'EMPTY'}"}
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT, max_keepalive_connections=CONNECTIONS_PER_CLIENT)
        self._clients = [httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0), limits=limits)
                         for _ in range(max(1, pools))]
        # Requests in flight per pool. Round-robin let one pool queue a request behind its 8 busy connections while
        # another sat idle (gather ratio 0.81 at 32 concurrent); the least busy pool never queues while any is free.
        self._in_flight = [0] * len(self._clients)

    async def chat(self, body: dict[str, Any]) -> ChatCompletion:
        for attempt in range(MAX_RETRIES + 1):
            pool = self._in_flight.index(min(self._in_flight))
            self._in_flight[pool] += 1
            response = None
            try:
                response = await self._clients[pool].post(self.url, json=body, headers=self.headers)
            except httpx.TimeoutException as exc:
                error: openai.APIError = openai.APITimeoutError(request=exc.request)
            except httpx.TransportError as exc:
                error = openai.APIConnectionError(message=f"Connection error: {exc!r}", request=exc.request)
            finally:
                self._in_flight[pool] -= 1
            if response is not None:
                if response.status_code < 400:
                    return _parse(response.json())
                error = _status_error(response)
                if not _retryable(response.status_code):
                    raise error
            if attempt == MAX_RETRIES:
                raise error
            await asyncio.sleep(_delay(attempt, response))
        raise AssertionError("unreachable")

    async def complete(self, model: str, messages: list[dict[str, Any]], **params: Any) -> Choice:
        return (await self.chat({"model": model, "messages": messages, **params})).choices[0]

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients))
