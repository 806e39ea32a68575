"""SFT demonstrations: written by the real CLIs, read by ART's reader, and replayed turn by turn through the real
envs (a fake model answers each request with the demo's next assistant turn), where they must earn full score and,
for r2e, see exactly the observations the demo holds. That is the proof a demo is in the rollout's own format."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import art
import pytest
from art.utils.sft import _parse_jsonl_line

from agent.prompts import GMSH_SYSTEM_PROMPT, R2E_SYSTEM_PROMPTS, r2e_task
from envs.gmsh.client import GmshClient
from envs.gmsh.demos import SCRIPT_TIMEOUT_S as DEMO_SCRIPT_TIMEOUT_S
from envs.gmsh.rollout import SCRIPT_TIMEOUT_S
from envs.gmsh.rollout import rollout as gmsh_rollout
from envs.gmsh.tasks import split_tasks
from envs.r2e.cache import read_index, sample_rows
from envs.r2e.client import TestServiceClient
from envs.r2e.demos import CELL_TIMEOUT_S, DEMO_LIMITS, build_demos
from envs.r2e.rollout import R2ESettings
from envs.r2e.rollout import rollout as r2e_rollout
from envs.r2e.scenarios import filter_split, sample_split_ids, scenarios_from_rows
from rollouts.context import RolloutContext, RolloutSettings
from rollouts.scenario import Scenario
from services.process import ROOT, ServiceProcess
from tests.fake_openai_server import start_scripted_server
from tests.helpers import subprocess_env

GMSH_COUNT = 5  # one task of each kind, from the train split and from the held-out one (its first 5 of 20)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def read_demos(path: Path) -> list[dict[str, Any]]:
    """Each line through ART's own reader (what `art.utils.sft` does with a file), plus our metadata."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for line in lines:
        trajectory = _parse_jsonl_line(line)
        assert trajectory.messages_and_choices and trajectory.messages()[-1]["role"] == "assistant"
    return [json.loads(line) for line in lines]


def turns(messages: list[Any]) -> list[tuple[str, str]]:
    """(role, content) per message; pytest's run time ("in 0.02s") is the one thing that differs run to run."""
    return [(m["role"], re.sub(r" in \d+\.\d+s\b", " in Ts", m["content"] or "")) for m in messages]


def replayer(demos: list[dict[str, Any]]) -> Callable[[list[dict[str, Any]]], str]:
    """The model: the demo whose task is the request's first user message, at the turn the request has reached."""
    scripts = {d["messages"][1]["content"]: [m["content"] for m in d["messages"] if m["role"] == "assistant"]
               for d in demos}

    def respond(messages: list[dict[str, Any]]) -> str:
        script = scripts[next(m["content"] for m in messages if m["role"] == "user")]
        done = sum(m["role"] == "assistant" for m in messages)
        return script[done] if done < len(script) else "(the demonstration has no more turns)"

    return respond


async def replay(demos: list[dict[str, Any]], rollout: Callable, scenarios: list[Scenario], services: dict[str, Any],
                 settings: RolloutSettings) -> list[art.Trajectory]:
    server = start_scripted_server(replayer(demos))
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        async with RolloutContext(model=model, settings=settings, services=services) as ctx:
            return await asyncio.gather(*(rollout(ctx, s) for s in scenarios))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def r2e_demos(r2e_cache, tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("r2e_demos")
    written = {}
    for split in ("train", "heldout"):
        cli("envs.r2e", "demos", "--out", str(out / f"{split}.jsonl"), "--split", split,
            "--cache-dir", str(r2e_cache))
        written[split] = read_demos(out / f"{split}.jsonl")
    return written


def test_r2e_demos_cover_the_split_and_start_with_the_rollouts_prompt(r2e_demos):
    rows = {r.instance_id: r for r in sample_rows()}
    ids = {split: [d["metadata"]["scenario_id"] for d in demos] for split, demos in r2e_demos.items()}
    assert len(ids["train"]) == 5 and len(ids["heldout"]) == 1 and not set(ids["train"]) & set(ids["heldout"])
    assert ids["heldout"] == sample_split_ids("heldout") and sorted(ids["train"]) == sorted(sample_split_ids("train"))
    for demo in r2e_demos["train"] + r2e_demos["heldout"]:
        messages = demo["messages"]
        assert messages[0] == {"role": "system", "content": R2E_SYSTEM_PROMPTS["r2e_system_prompt"]}
        assert messages[1] == {"role": "user",
                               "content": r2e_task(rows[demo["metadata"]["scenario_id"]].problem_statement)}
        assert [m["role"] for m in messages[2:]] == ["assistant", "user"] * 3 + ["assistant"]
        assert "FINAL('done')" in messages[-1]["content"] and "run_tests()" in messages[-3]["content"]


async def test_r2e_demos_replay_to_reward_one_with_the_same_observations(r2e_demos, r2e_cache, tmp_path):
    demos = r2e_demos["train"] + r2e_demos["heldout"]
    all_scenarios = scenarios_from_rows(sample_rows(), r2e_cache, read_index(r2e_cache))
    assert [s.id for s in filter_split(all_scenarios, "heldout")] == sample_split_ids("heldout")
    by_id = {s.id: s for s in all_scenarios}
    scenarios = [by_id[d["metadata"]["scenario_id"]] for d in demos]
    with ServiceProcess("envs.r2e.test_service", "--runtime", "process", "--cache-dir", str(r2e_cache),
                        "--max-concurrent", "2") as service:
        client = TestServiceClient([service.url], service.token)
        try:
            settings = R2ESettings(tests=client, rollout_root=tmp_path)
            trajectories = await replay(demos, r2e_rollout, scenarios, {"r2e": settings}, RolloutSettings())
        finally:
            await client.aclose()
    for demo, trajectory in zip(demos, trajectories, strict=True):
        assert trajectory.reward == 1.0, trajectory.logs[-3:]
        assert trajectory.metrics["finished"] == 1.0 and trajectory.metrics["trimmed_messages"] == 0
        assert turns(trajectory.messages()) == turns(demo["messages"])


def test_r2e_demo_writer_matches_the_rollouts_sandbox_settings():
    defaults = R2ESettings(tests=None, rollout_root=Path("."))  # type: ignore[arg-type]
    assert defaults.limits == DEMO_LIMITS and defaults.cell_timeout_s == CELL_TIMEOUT_S


async def test_r2e_large_files_are_patched_in_place_and_still_fixed(r2e_cache):
    demos = await build_demos(r2e_cache, "heldout", full_write_max_chars=0)  # as if every file were large
    fix_cell = demos[0]["messages"][-3]["content"]
    assert "s.replace(" in fix_cell and "lines = read_file(" in demos[0]["messages"][4]["content"]


@pytest.fixture(scope="module")
def gmsh_demos(tmp_path_factory) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    out = tmp_path_factory.mktemp("gmsh_demos")
    store = out / "tasks"
    written = {}
    for split in ("train", "heldout"):
        cli("envs.gmsh", "demos", "--out", str(out / f"{split}.jsonl"), "--split", split, "--seed", "0",
            "--tasks-dir", str(store), "--count", str(GMSH_COUNT))
        written[split] = read_demos(out / f"{split}.jsonl")
    return store, written


def test_gmsh_demos_are_single_turn_in_the_rollouts_prompt_and_heldout_is_unseen(gmsh_demos):
    store, demos = gmsh_demos
    tasks = {s.id: s for s in split_tasks(store, "all")}
    train_ids = [d["metadata"]["scenario_id"] for d in demos["train"]]
    heldout_ids = [d["metadata"]["scenario_id"] for d in demos["heldout"]]
    assert len(train_ids) == GMSH_COUNT and len(heldout_ids) >= 4
    assert {tasks[i].data["kind"] for i in train_ids} == {tasks[i].data["kind"] for i in heldout_ids}
    assert set(heldout_ids) <= {s.id for s in split_tasks(store, "heldout")}
    assert not {s.id for s in split_tasks(store, "train")} & {s.id for s in split_tasks(store, "heldout")}
    heldout_geometry = {(store / tasks[i].data["geometry_file"]).read_bytes() for i in heldout_ids}
    assert not heldout_geometry & {(store / tasks[i].data["geometry_file"]).read_bytes() for i in train_ids}
    for demo in demos["train"] + demos["heldout"]:
        messages = demo["messages"]
        assert messages[:2] == [{"role": "system", "content": GMSH_SYSTEM_PROMPT},
                                {"role": "user", "content": tasks[demo["metadata"]["scenario_id"]].prompt}]
        assert len(messages) == 3 and messages[2]["content"].startswith("```python\nimport gmsh\n")


async def test_gmsh_demos_replay_to_the_full_score(gmsh_demos):
    assert DEMO_SCRIPT_TIMEOUT_S == SCRIPT_TIMEOUT_S
    store, written = gmsh_demos
    demos = written["train"] + written["heldout"]
    tasks = {s.id: s for s in split_tasks(store, "all")}
    scenarios = [tasks[d["metadata"]["scenario_id"]] for d in demos]
    with ServiceProcess("envs.gmsh.service", "--workers", "2") as service:
        client = GmshClient([service.url], service.token)
        try:
            trajectories = await replay(demos, gmsh_rollout, scenarios, {"gmsh": client}, RolloutSettings(max_steps=1))
        finally:
            await client.aclose()
    for demo, trajectory in zip(demos, trajectories, strict=True):
        assert trajectory.reward == pytest.approx(1.0, abs=1e-9), (demo["metadata"], trajectory.metrics)
        assert trajectory.metrics["groups_missing"] == 0 and trajectory.metrics["mesh_quality"] == 1.0
        assert turns(trajectory.messages()) == turns(demo["messages"])


@pytest.mark.parametrize(("module", "argv", "message"), [
    ("envs.r2e", ["demos", "--out", "x.jsonl", "--split", "test"], "--split 'test': choose from train, heldout, all"),
    ("envs.r2e", ["demos", "--out", "x.json"], "must end with .jsonl"),
    ("envs.r2e", ["demos", "--out", "x.jsonl", "--system-prompt", "nope"], "--system-prompt 'nope'"),
    ("envs.gmsh", ["demos", "--out", "x.jsonl", "--split", "val"], "--split 'val': choose from train, heldout, all"),
    ("envs.gmsh", ["demos", "--out", "x.jsonl", "--count", "0"], "--count 0: must be at least 1"),
    ("envs.gmsh", ["demos", "--out", "x.txt"], "must end with .jsonl"),
])
def test_bad_demo_arguments_get_one_line_and_exit_2(module, argv, message, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"{module}.__main__").main
    argv = [str(tmp_path / a) if a.startswith("x.") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not list(tmp_path.iterdir())
