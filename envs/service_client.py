"""Client side of our services: several nodes balanced by load, retries with backoff on connection errors, 5xx
and 503 (busy), and one clean `ServiceUnavailable` at the end that a rollout records as its failure reason."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import httpx


class ServiceUnavailable(RuntimeError):
    pass


@dataclass
class ServiceClient:
    urls: list[str]
    token: str
    retries: int = 4
    backoff_s: float = 0.5
    _in_flight: dict[str, int] = field(default_factory=dict)
    _client: httpx.AsyncClient | None = None

    def _pick(self, exclude: set[str]) -> str:
        candidates = [u for u in self.urls if u not in exclude] or self.urls
        return min(candidates, key=lambda u: (self._in_flight.get(u, 0), random.random()))

    async def post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self._client is None:
            self._client = httpx.AsyncClient(headers={"Authorization": f"Bearer {self.token}"})
        failed: set[str] = set()
        last = "no attempt"
        for attempt in range(self.retries + 1):
            url = self._pick(failed)
            self._in_flight[url] = self._in_flight.get(url, 0) + 1
            try:
                response = await self._client.post(f"{url.rstrip('/')}{path}", json=body, timeout=timeout)
                if response.status_code == 200:
                    return response.json()
                last = f"{url} answered {response.status_code}: {response.text[:200]}"
                if response.status_code < 500:
                    raise ServiceUnavailable(last)  # the request itself is wrong: retrying will not help
            except httpx.TransportError as exc:  # connection refused, reset, timed out: try another node
                last = f"{url}: {exc.__class__.__name__}: {exc}"
                failed.add(url)
            finally:
                self._in_flight[url] -= 1
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise ServiceUnavailable(f"{path} failed after {self.retries + 1} attempts; last: {last}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
