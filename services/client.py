"""Client side of our services, over one node or many: least-outstanding-requests routing, health checks, failover.

- Routing: each request goes to the up node with the fewest requests in flight (ties at random), so a slow node
  gets less work without any central queue.
- Failure: a transport error or a 5xx counts against the node; `down_after` failures in a row mark it down for
  `retry_after_s`. A background health check (GET /health every `health_interval_s`) brings a node back as soon as it
  answers, and marks one down that stops answering before a request finds out. A down node is tried again when its
  time is up, so a node that comes back is used even when no health check runs.
- Retry: a request whose node fails is sent again at once to another node (up to `retries` more attempts; 503 busy
  answers wait with backoff), with the same request id in the `Idempotency-Key` header. The services' work is a pure
  function of the request (a script run on a geometry, tests run on files), so a second run elsewhere changes
  nothing; a node that already ran, or is running, that id answers from it instead of running it again
  (services/idempotency.py). At the end of the attempts: one clean `ServiceUnavailable`, recorded as the rollout's
  failure reason.
- Metrics per node since the last read (requests, errors, latency p50/p95, up) for the step's metrics and W&B.

Nodes are given as URLs, or as `@FILE`: a file of URLs, one a line (blank lines and `#` comments skipped), read when
the client is built, so a restart picks up a changed node list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("service_client")

REQUEST_ID_HEADER = "Idempotency-Key"


class ServiceUnavailable(RuntimeError):
    pass


class NodeListError(ValueError):
    """An `@FILE` of node URLs that cannot be read or holds something that is not an http(s) URL."""


def expand_urls(values: list[str]) -> list[str]:
    """URLs as given, with each `@FILE` replaced by the URLs it lists; duplicates dropped, order kept."""
    urls: list[str] = []
    for value in values:
        if not value.startswith("@"):
            urls.append(value)
            continue
        path = Path(value[1:])
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise NodeListError(f"{value}: cannot read the node list ({exc.__class__.__name__}: {exc})") from None
        listed = [line.split("#", 1)[0].strip() for line in lines]
        listed = [url for url in listed if url]
        for number, url in enumerate(listed, 1):
            if not url.startswith(("http://", "https://")):
                raise NodeListError(f"{value}: {url!r} (URL {number}) must start with http:// or https://")
        if not listed:
            raise NodeListError(f"{value}: the node list holds no URL")
        urls.extend(listed)
    return list(dict.fromkeys(urls))


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (no interpolation): a latency some request really had."""
    ordered = sorted(values)
    rank = math.ceil(share * len(ordered) - 1e-9)  # the smallest value with at least `share` of them at or below
    return ordered[min(len(ordered), max(1, rank)) - 1]


@dataclass
class Node:
    url: str
    in_flight: int = 0
    failures: int = 0  # in a row
    down_until: float = 0.0
    requests: int = 0  # since the last metrics read
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def is_up(self, now: float) -> bool:
        return self.down_until <= now


@dataclass
class ServiceClient:
    urls: list[str]
    token: str
    retries: int = 4
    backoff_s: float = 0.5
    name: str = "service"
    down_after: int = 2  # failures in a row that mark a node down
    retry_after_s: float = 10.0  # a down node is tried again after this, health check or not
    health_interval_s: float = 5.0  # 0: no background health check
    health_timeout_s: float = 5.0  # generous: a busy node is not a dead one
    failovers: int = 0  # requests moved to another node after their node failed (since the last metrics read)
    _nodes: list[Node] = field(default_factory=list)
    _client: httpx.AsyncClient | None = None
    _health_task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.urls = expand_urls(self.urls)
        self._nodes = [Node(url.rstrip("/")) for url in self.urls]

    @property
    def nodes(self) -> list[Node]:
        return self._nodes

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._client = httpx.AsyncClient(headers={"Authorization": f"Bearer {self.token}"}, limits=limits)
        if self._health_task is None and self.health_interval_s > 0 and len(self._nodes) > 1:
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())
        return self._client

    def _pick(self, tried: set[str]) -> Node:
        now = time.monotonic()
        up = [n for n in self._nodes if n.is_up(now)]
        candidates = ([n for n in up if n.url not in tried] or up
                      or [n for n in self._nodes if n.url not in tried] or self._nodes)
        return min(candidates, key=lambda n: (n.in_flight, random.random()))

    def _failed(self, node: Node, why: str) -> None:
        node.failures += 1
        if node.failures >= self.down_after and node.is_up(time.monotonic()):
            log.warning("%s node %s marked down after %d failures in a row (%s)", self.name, node.url,
                        node.failures, why)
        if node.failures >= self.down_after:
            node.down_until = time.monotonic() + self.retry_after_s

    @staticmethod
    def _succeeded(node: Node) -> None:
        if node.down_until:
            log.warning("node %s answers again", node.url)
        node.failures, node.down_until = 0, 0.0

    async def post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        client = self._http()
        headers = {REQUEST_ID_HEADER: uuid.uuid4().hex}  # the same id on every attempt: one logical request
        tried: set[str] = set()
        last = "no attempt"
        for attempt in range(self.retries + 1):
            node = self._pick(tried)
            node.in_flight += 1
            node.requests += 1
            started = time.monotonic()
            moved = False
            try:
                response = await client.post(f"{node.url}{path}", json=body, timeout=timeout, headers=headers)
                node.latencies.append(time.monotonic() - started)
                if response.status_code == 200:
                    self._succeeded(node)
                    return response.json()
                node.errors += 1
                last = f"{node.url} answered {response.status_code}: {response.text[:200]}"
                if response.status_code < 500 and response.status_code != 429:
                    raise ServiceUnavailable(last)  # the request itself is wrong: retrying will not help
                if response.status_code not in (429, 503):  # busy is not broken; anything else 5xx is
                    self._failed(node, last)
                    tried.add(node.url)
                    moved = True
            except httpx.TransportError as exc:  # refused, reset, timed out: the node is gone or stuck
                node.errors += 1
                node.latencies.append(time.monotonic() - started)
                last = f"{node.url}: {exc.__class__.__name__}: {exc}"
                self._failed(node, last)
                tried.add(node.url)
                moved = True
            finally:
                node.in_flight -= 1
            if attempt == self.retries:
                break
            if moved and any(n.url not in tried and n.is_up(time.monotonic()) for n in self._nodes):
                self.failovers += 1
                continue  # another node is up: go there now
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise ServiceUnavailable(f"{path} failed after {self.retries + 1} attempts; last: {last}")

    async def check_health(self) -> None:
        """Probe every node's /health once: an answer brings a node back, silence counts as a failure."""
        client = self._http()

        async def probe(node: Node) -> None:
            try:
                ok = (await client.get(f"{node.url}/health", timeout=self.health_timeout_s)).status_code == 200
            except httpx.TransportError:
                ok = False
            if ok:
                self._succeeded(node)
            else:
                self._failed(node, "no answer to /health")

        await asyncio.gather(*(probe(node) for node in self._nodes))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self.check_health()
            except Exception:  # a probe must never take the client down
                log.exception("health check of %s nodes failed", self.name)

    def node_metrics(self, reset: bool = True) -> dict[str, float]:
        """Per node since the last read: requests (`calls`), errors (`failed_calls`: transport errors and non-200
        answers), latency p50/p95 in seconds, `up` (1/0); for the service: `nodes_up`, and `moved_calls` (requests
        sent to another node after theirs failed). Keys `nodes/<service>/nodeI/...`, node I being the I-th URL; the
        names use the report's unit words (monitor/report.py), so its charts group them by unit."""
        now = time.monotonic()
        figures: dict[str, float] = {}
        for i, node in enumerate(self._nodes):
            prefix = f"nodes/{self.name}/node{i}"
            figures[f"{prefix}/calls"] = float(node.requests)
            figures[f"{prefix}/failed_calls"] = float(node.errors)
            figures[f"{prefix}/up"] = float(node.is_up(now))
            if node.latencies:
                figures[f"{prefix}/latency_p50_s"] = percentile(node.latencies, 0.50)
                figures[f"{prefix}/latency_p95_s"] = percentile(node.latencies, 0.95)
            if reset:
                node.requests, node.errors, node.latencies = 0, 0, []
        figures[f"nodes/{self.name}/nodes_up"] = float(sum(n.is_up(now) for n in self._nodes))
        figures[f"nodes/{self.name}/moved_calls"] = float(self.failovers)
        if reset:
            self.failovers = 0
        return figures

    async def aclose(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def service_metrics(services: dict[str, Any] | None) -> dict[str, float]:
    """Per-node figures of every service client a run holds (a client, or a settings object carrying one)."""
    figures: dict[str, float] = {}
    for value in (services or {}).values():
        held = [value, *(vars(value).values() if hasattr(value, "__dict__") else ())]
        for client in held:
            if isinstance(client, ServiceClient):
                figures |= client.node_metrics()
    return figures
