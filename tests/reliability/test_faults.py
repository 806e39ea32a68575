"""Faults around a step: a service node dies, a service hangs, the model endpoint errors. The step completes;
affected rollouts retry elsewhere or fail with a recorded reason; nothing hangs."""

import asyncio
import time

import art
import pytest
from art.utils.network import find_free_tcp_port
from fastapi import FastAPI

from backends.openai_server import ServerThread
from envs.gmsh.client import GmshClient, ServiceUnavailable
from envs.gmsh.rollout import rollout as gmsh_rollout
from envs.gmsh.tasks import ensure_default_tasks, load_tasks
from envs.gmsh.wire import RunRequest
from envs.r2e.cache import build_from_samples, read_index, sample_rows
from envs.r2e.client import TestServiceClient
from envs.r2e.rollout import rollout as r2e_rollout
from envs.r2e.scenarios import scenarios_from_rows
from rollouts.context import RolloutContext, RolloutSettings
from rollouts.gather import GatherLimits, gather_step
from services.process import ServiceProcess
from tests.fake_openai_server import start_fake_server
from tests.gmsh_scripts import reference_script
from tests.r2e_rollouts import fix_reply, r2e_context


@pytest.fixture(scope="module")
def cylinder(tmp_path_factory):
    store = ensure_default_tasks(tmp_path_factory.mktemp("tasks"), seed=0, n_train=5, n_val=1)
    return next(s for s in load_tasks(store / "train.parquet") if s.data["kind"] == "cylinder")


def _reply(scenario, pause_s: float = 0.0) -> str:
    req = scenario.data["requirements"]
    script = reference_script("cylinder", req["characteristic_length"], 3)
    return f"```python\nimport time\ntime.sleep({pause_s})\n{script}```"


async def _gather(scenario, urls, token, reply, count=8):
    server, _ = start_fake_server(latency_s=0.0, reply=reply)
    client = GmshClient(urls, token, retries=3, backoff_s=0.2)
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        async with RolloutContext(model=model, settings=RolloutSettings(max_steps=1), services={"gmsh": client}) as ctx:
            return await gather_step([scenario], gmsh_rollout, ctx, count, GatherLimits.create(count, 100), 1.0)
    finally:
        await client.aclose()
        server.stop()


async def test_a_dead_node_is_skipped_and_every_rollout_completes(cylinder):
    dead = f"http://127.0.0.1:{find_free_tcp_port()}"
    with ServiceProcess("envs.gmsh.service", "--workers", "2") as live:
        groups = await _gather(cylinder, [dead, live.url], live.token, _reply(cylinder))
    assert len(groups[0].trajectories) == 8 and not groups[0].exceptions
    assert all(t.reward >= 0.6 for t in groups[0].trajectories)


async def test_killing_a_node_mid_step_moves_its_rollouts_to_the_other(cylinder, record_property):
    token = "one-token-for-the-pool"  # as a deployment configures its nodes
    with ServiceProcess("envs.gmsh.service", "--workers", "2", token=token) as a, \
            ServiceProcess("envs.gmsh.service", "--workers", "2", token=token) as b:
        task = asyncio.create_task(_gather(cylinder, [a.url, b.url], token, _reply(cylinder, 1.5)))
        await asyncio.sleep(1.0)
        a.proc.kill()
        groups = await asyncio.wait_for(task, 120)
    group = groups[0]
    record_property("rollouts", f"{len(group.trajectories)} of 8 completed, {len(group.exceptions)} failed with reason")
    assert len(group.trajectories) + len(group.exceptions) == 8  # the step completed, every rollout accounted for
    assert len(group.trajectories) >= 4
    assert all("gmsh service unavailable" in e.message for e in group.exceptions)


async def test_a_hanging_service_times_out_instead_of_hanging(record_property):
    app = FastAPI()

    @app.post("/run")
    async def hang() -> dict:
        await asyncio.sleep(60)
        return {}

    server = ServerThread(app)
    server.start()
    client = GmshClient([server.base_url.removesuffix("/v1")], "t", retries=1, backoff_s=0.1, slack_s=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(ServiceUnavailable, match="ReadTimeout"):
            await client.run(RunRequest(script="pass", geometry_b64="", timeout=1))
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
        server.stop()
    record_property("gave up after", f"{elapsed:.1f} s (the service would answer after 60 s)")
    assert elapsed < 10  # two attempts of 1.5 s and their backoff, not the service's 60 s


async def test_model_endpoint_errors_fail_the_rollout_cleanly_after_retries(cylinder, record_property):
    app = FastAPI()
    calls = {"n": 0}

    @app.post("/v1/chat/completions")
    async def broken() -> dict:
        calls["n"] += 1
        raise RuntimeError("model server fell over")

    server = ServerThread(app)
    server.start()
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        async with RolloutContext(model=model, settings=RolloutSettings(max_steps=1), services={"gmsh": None}) as ctx:
            groups = await gather_step([cylinder], gmsh_rollout, ctx, 2, GatherLimits.create(2, 100), 1.0)
    finally:
        server.stop()
    record_property("requests", f"{calls['n']} for 2 rollouts, then both failed")
    assert groups == [] or (not groups[0].trajectories and len(groups[0].exceptions) == 2)
    assert calls["n"] >= 2 * 3  # each rollout: the first try and the OpenAI SDK's two retries with backoff


async def test_killing_a_test_service_node_mid_step_moves_its_tests_to_the_other(tmp_path, record_property):
    cache = tmp_path / "cache"
    build_from_samples(cache)
    row = next(r for r in sample_rows() if r.repo_name == "stats")
    scenario = scenarios_from_rows([row], cache, read_index(cache))[0]
    token = "one-token-for-the-pool"
    args = ("envs.r2e.test_service", "--runtime", "process", "--cache-dir", str(cache))
    (tmp_path / "rollouts").mkdir()
    with ServiceProcess(*args, token=token) as a, ServiceProcess(*args, token=token) as b:
        client = TestServiceClient([a.url, b.url], token, retries=3, backoff_s=0.2)
        # The fix is written after a pause of up to 2 s, so the /test calls spread across the kill.
        async with r2e_context(client, fix_reply("stats", max_pause_s=2.0), tmp_path / "rollouts",
                               RolloutSettings(max_steps=2)) as ctx:
            task = asyncio.create_task(gather_step([scenario], r2e_rollout, ctx, 8, GatherLimits.create(8, 100), 1.0))
            await asyncio.sleep(1.5)  # REPL start-up, then the first /test calls land on both nodes
            a.proc.kill()
            groups = await asyncio.wait_for(task, 180)
    group = groups[0]
    rewards = [t.reward for t in group.trajectories]
    record_property("rollouts", f"{rewards.count(1.0)} of 8 passed their tests, {len(group.exceptions)} failed "
                                f"with reason, node A killed 1.5 s into the step")
    assert len(group.trajectories) + len(group.exceptions) == 8  # the step completed, every rollout accounted for
    assert rewards.count(1.0) == len(rewards) >= 6  # the fix passes wherever its tests ran
    assert list((tmp_path / "rollouts").iterdir()) == []
