"""R2E rollouts against a fake model that replays a fixed reply: the setup the r2e and reliability tests share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import art

from envs.r2e.cache import SAMPLES
from envs.r2e.client import TestServiceClient
from envs.r2e.rollout import R2ESettings
from rollouts.context import RolloutContext, RolloutSettings
from tests.fake_openai_server import start_fake_server


def fix_reply(name: str, max_pause_s: float = 0.0) -> str:
    """A REPL cell writing the sample's reference fix, after a random pause of up to `max_pause_s` (so rollouts
    that start together reach the test service at different moments), then FINAL."""
    writes = "".join(f"write_file({p.name!r}, {p.read_text()!r})\n" for p in (SAMPLES / name / "fix").iterdir())
    pause = f"import random, time\ntime.sleep(random.uniform(0, {max_pause_s}))\n" if max_pause_s else ""
    return f"I will fix it.\n```repl\n{pause}{writes}FINAL('done')\n```"


@contextlib.asynccontextmanager
async def r2e_context(tests: TestServiceClient, reply: str, rollout_root: Path, settings: RolloutSettings,
                      cell_timeout_s: float = 20) -> AsyncIterator[RolloutContext]:
    """A rollout context whose model always answers `reply`; closes the model server and `tests` on exit."""
    server, _ = start_fake_server(latency_s=0.0, reply=reply)
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        r2e = R2ESettings(tests=tests, rollout_root=rollout_root, cell_timeout_s=cell_timeout_s)
        async with RolloutContext(model=model, settings=settings, services={"r2e": r2e}) as ctx:
            yield ctx
    finally:
        await tests.aclose()
        server.stop()
