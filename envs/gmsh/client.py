"""Client of one or several gmsh services: least-loaded node first, retries with backoff on connection errors,
5xx and 503 (busy), then a clean failure the rollout turns into an observation."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import httpx

from envs.gmsh.wire import RunRequest, RunResult


class ServiceUnavailable(RuntimeError):
    pass


@dataclass
class GmshClient:
    urls: list[str]
    token: str
    retries: int = 4
    backoff_s: float = 0.5
    slack_s: float = 30.0  # beyond the script's own timeout: queueing and analysis
    _in_flight: dict[str, int] = field(default_factory=dict)
    _client: httpx.AsyncClient | None = None

    def _pick(self, exclude: set[str]) -> str:
        candidates = [u for u in self.urls if u not in exclude] or self.urls
        return min(candidates, key=lambda u: (self._in_flight.get(u, 0), random.random()))

    async def run(self, request: RunRequest) -> RunResult:
        if self._client is None:
            self._client = httpx.AsyncClient(headers={"Authorization": f"Bearer {self.token}"})
        failed: set[str] = set()
        last = "no attempt"
        for attempt in range(self.retries + 1):
            url = self._pick(failed)
            self._in_flight[url] = self._in_flight.get(url, 0) + 1
            try:
                response = await self._client.post(f"{url.rstrip('/')}/run", json=request.model_dump(),
                                                   timeout=request.timeout + self.slack_s)
                if response.status_code == 200:
                    return RunResult.model_validate(response.json())
                last = f"{url} answered {response.status_code}: {response.text[:200]}"
                if response.status_code < 500:
                    raise ServiceUnavailable(last)  # our request is wrong: retrying will not help
            except httpx.TransportError as exc:
                last = f"{url}: {exc.__class__.__name__}: {exc}"
                failed.add(url)
            finally:
                self._in_flight[url] -= 1
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise ServiceUnavailable(f"gmsh service failed after {self.retries + 1} attempts; last: {last}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
