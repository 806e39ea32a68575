"""Many rollout service nodes (`--gmsh-url`/`--docker-url`, repeated or `@FILE`): least-outstanding routing, health
checks, a node marked down and back, a failed request moved to another node under the same request id, which a node
answers once (services/idempotency.py), and the per-node figures each step logs. Nodes here are small in-test services
where a fault must be injected (a 500, a dead port, a slow node); the failover end to end runs on real gmsh services
killed mid-run."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time

import httpx
import pytest
from art.utils.network import find_free_tcp_port
from fastapi import FastAPI, Header, HTTPException

from backends.openai_server import ServerThread
from envs.gmsh.client import GmshClient
from envs.gmsh.wire import RunRequest
from services.client import (
    REQUEST_ID_HEADER,
    NodeListError,
    ServiceClient,
    ServiceUnavailable,
    expand_urls,
    percentile,
    service_metrics,
)
from services.idempotency import RecentResults
from services.process import ServiceProcess
from trainer.cli import config_from_args
from trainer.config import ConfigError


class FakeNode:
    """A node whose latency and health a test sets; it records the request ids it was sent."""

    def __init__(self, latency_s: float = 0.0):
        self.latency_s, self.broken, self.ids = latency_s, False, []
        app = FastAPI()

        @app.get("/health")
        def health() -> dict:
            if self.broken:
                raise HTTPException(500, "broken")
            return {"status": "ok"}

        @app.post("/run")
        async def run(body: dict, idempotency_key: str | None = Header(default=None)) -> dict:
            self.ids.append(idempotency_key)
            if self.broken:
                raise HTTPException(500, "broken")
            await asyncio.sleep(self.latency_s)
            return {"echo": body["n"]}

        self.server = ServerThread(app)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def __enter__(self) -> FakeNode:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def dead_url() -> str:
    return f"http://127.0.0.1:{find_free_tcp_port()}"  # nothing listens there: connection refused


def test_a_node_list_file_gives_one_url_a_line_and_a_bad_one_is_one_line(tmp_path):
    nodes = tmp_path / "nodes.txt"
    nodes.write_text("# rack 1\nhttp://a:1\n\nhttp://b:2  # spare\nhttp://a:1\n")
    assert expand_urls([f"@{nodes}", "http://c:3"]) == ["http://a:1", "http://b:2", "http://c:3"]
    assert ServiceClient([f"@{nodes}"], "t").urls == ["http://a:1", "http://b:2"]
    nodes.write_text("http://a:1\nb:2\n")
    with pytest.raises(NodeListError, match=r"'b:2' \(URL 2\) must start with http://"):
        expand_urls([f"@{nodes}"])
    with pytest.raises(ConfigError, match=r"^--gmsh-url @.*missing\.txt: cannot read the node list"):
        config_from_args(["--experiment-name", "n", "--env", "gmsh", "--base-model", "tiny-random",
                          "--gmsh-url", f"@{tmp_path / 'missing.txt'}"])


async def test_requests_go_to_the_node_with_the_fewest_in_flight():
    with FakeNode(latency_s=0.4) as slow, FakeNode(latency_s=0.02) as fast:
        client = ServiceClient([slow.url, fast.url], "t", health_interval_s=0)
        gate = asyncio.Semaphore(6)

        async def one(n: int) -> None:
            async with gate:
                await client.post("/run", {"n": n}, timeout=10)

        await asyncio.gather(*(one(n) for n in range(60)))
        await client.aclose()
    assert len(slow.ids) + len(fast.ids) == 60
    assert len(fast.ids) > 4 * len(slow.ids)  # the slow node holds its requests longer, so it is picked less


async def test_a_dead_node_is_marked_down_and_its_requests_move_to_another_with_the_same_id():
    with FakeNode() as live:
        client = ServiceClient([dead_url(), live.url], "t", retries=1, backoff_s=0.01, health_interval_s=0)
        answers = await asyncio.gather(*(client.post("/run", {"n": n}, timeout=5) for n in range(10)))
        figures = client.node_metrics()
        await client.aclose()
    assert sorted(a["echo"] for a in answers) == list(range(10))  # no request lost
    assert figures["nodes/service/node0/failed_calls"] >= 1 and figures["nodes/service/node0/up"] == 0.0
    assert figures["nodes/service/node1/calls"] == 10 and figures["nodes/service/nodes_up"] == 1.0
    assert figures["nodes/service/moved_calls"] == figures["nodes/service/node0/failed_calls"]
    assert len(set(live.ids)) == 10  # one id per logical request


async def test_a_retry_carries_the_id_of_the_first_attempt():
    with FakeNode() as broken, FakeNode() as good:
        broken.broken = True
        client = ServiceClient([broken.url, good.url], "t", retries=1, backoff_s=0.01, health_interval_s=0)
        client.nodes[1].in_flight = 1  # the broken node looks less busy, so it is tried first
        await client.post("/run", {"n": 1}, timeout=5)
        await client.aclose()
    assert broken.ids and broken.ids == good.ids  # the same Idempotency-Key on both nodes


async def test_a_down_node_comes_back_when_its_health_check_answers():
    with FakeNode() as flaky, FakeNode() as steady:
        client = ServiceClient([flaky.url, steady.url], "t", retries=1, backoff_s=0.01, down_after=2,
                               retry_after_s=60, health_interval_s=0.2)
        flaky.broken = True
        await asyncio.gather(*(client.post("/run", {"n": n}, timeout=5) for n in range(6)))
        assert not client.nodes[0].is_up(time.monotonic())
        flaky.broken = False
        await asyncio.sleep(0.6)  # a health check or two
        assert client.nodes[0].failures == 0 and client.nodes[0].down_until == 0.0
        before = len(flaky.ids)
        await asyncio.gather(*(client.post("/run", {"n": n}, timeout=5) for n in range(10)))
        await client.aclose()
    assert len(flaky.ids) > before  # back in the rotation well before its 60 s retry time


async def test_with_every_node_gone_the_request_ends_in_one_clean_error():
    client = ServiceClient([dead_url(), dead_url()], "t", retries=2, backoff_s=0.01, health_interval_s=0)
    with pytest.raises(ServiceUnavailable, match="/run failed after 3 attempts; last: http://127.0.0.1"):
        await client.post("/run", {"n": 1}, timeout=2)
    await client.aclose()


async def test_a_node_runs_a_repeated_request_id_once():
    recent, runs = RecentResults(size=2), itertools.count(1)

    async def work() -> int:
        await asyncio.sleep(0.05)
        return next(runs)

    joined = await asyncio.gather(recent.run("a", work), recent.run("a", work))  # the second joins the first
    assert joined == [1, 1] and await recent.run("a", work) == 1  # and later ones replay it
    assert await recent.run(None, work) == 2 and await recent.run("b", work) == 3

    async def fails() -> int:
        raise RuntimeError("busy")

    with pytest.raises(RuntimeError):
        await recent.run("c", fails)
    assert await recent.run("c", work) == 4  # a failure is never replayed
    assert await recent.run("d", work) == 5 and await recent.run("a", work) == 6  # only the newest `size` kept


def test_percentiles_are_latencies_a_request_really_had():
    values = [0.1 * i for i in range(1, 21)]
    assert percentile(values, 0.5) == values[9] and percentile(values, 0.95) == values[18]
    assert percentile([0.3], 0.95) == 0.3


def test_step_metrics_find_every_service_client_a_run_holds():
    class Settings:  # like the r2e env's settings object, which carries its test-service client
        def __init__(self, tests):
            self.tests = tests

    gmsh, tests = ServiceClient(["http://a:1"], "t", name="gmsh"), ServiceClient(["http://b:1", "http://c:1"], "t",
                                                                                    name="tests")
    gmsh.nodes[0].requests, gmsh.nodes[0].latencies = 3, [0.2, 0.1, 0.4]
    figures = service_metrics({"gmsh": gmsh, "r2e": Settings(tests), "other": object()})
    assert figures["nodes/gmsh/node0/calls"] == 3 and figures["nodes/gmsh/node0/latency_p50_s"] == 0.2
    assert figures["nodes/tests/node1/calls"] == 0 and figures["nodes/tests/nodes_up"] == 2
    assert service_metrics({"gmsh": gmsh})["nodes/gmsh/node0/calls"] == 0  # each read covers the time since the last


def sleepy_request(seconds: float) -> RunRequest:
    script = f"import time\ntime.sleep({seconds})\nprint('ran')\n"
    return RunRequest(script=script, geometry_b64=base64.b64encode(b"unused").decode(), timeout=20)


async def test_the_gmsh_service_answers_a_repeated_request_id_from_its_first_run():
    with ServiceProcess("envs.gmsh.service", "--workers", "2") as svc:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {svc.token}"}) as http:
            body = sleepy_request(0.2).model_dump()
            same = [(await http.post(f"{svc.url}/run", json=body, headers={REQUEST_ID_HEADER: "id-1"}, timeout=60))
                    .json() for _ in range(2)]
            other = (await http.post(f"{svc.url}/run", json=body, headers={REQUEST_ID_HEADER: "id-2"},
                                     timeout=60)).json()
    assert same[0]["stdout"].strip() == "ran" and same[0] == same[1]  # the very same run, elapsed time included
    assert other["elapsed"] != same[0]["elapsed"]  # another id is another run


async def test_the_test_service_runs_a_repeated_request_id_once():
    from envs.r2e.test_service import build_app
    from envs.r2e.wire import TestResult

    class CountingRuntime:  # counts the runs the real app asks for
        runs = 0

        async def run(self, body) -> TestResult:
            self.runs += 1
            await asyncio.sleep(0.05)
            return TestResult(test_output=f"run {self.runs}", exit_code=0, elapsed=0.05, timed_out=False)

    runtime = CountingRuntime()
    body = {"docker_image": "i", "instance_id": "r__0123456789ab", "files_tar_b64": ""}
    transport = httpx.ASGITransport(app=build_app("tok", runtime))
    auth = {"Authorization": "Bearer tok"}
    async with httpx.AsyncClient(transport=transport, base_url="http://node", headers=auth) as http:
        async def post(key: str) -> str:
            answer = await http.post("/test", json=body, headers={REQUEST_ID_HEADER: key})
            return answer.json()["test_output"]

        assert await asyncio.gather(post("k1"), post("k1")) == ["run 1", "run 1"]  # a retry racing the first
        assert await post("k1") == "run 1" and await post("k2") == "run 2" and runtime.runs == 2


@pytest.mark.slow
async def test_killing_a_gmsh_node_mid_run_loses_no_request():
    token = "one-token-for-the-pool"
    args = ("envs.gmsh.service", "--workers", "2")
    with ServiceProcess(*args, token=token) as a, ServiceProcess(*args, token=token) as b:
        client = GmshClient([a.url, b.url], token, retries=2, backoff_s=0.2, health_interval_s=0.5)
        task = asyncio.gather(*(client.run(sleepy_request(1.0)) for _ in range(8)))
        await asyncio.sleep(0.5)  # the first runs are under way on both nodes
        a.proc.kill()
        results = await asyncio.wait_for(task, 120)
        figures = client.node_metrics()
        await client.aclose()
    assert len(results) == 8 and all(r.stdout.strip() == "ran" for r in results)
    assert figures["nodes/gmsh/node0/failed_calls"] >= 1 and figures["nodes/gmsh/moved_calls"] >= 1
    assert figures["nodes/gmsh/node0/up"] == 0.0 and figures["nodes/gmsh/nodes_up"] == 1.0
