"""Generated r2e tasks (`--r2e-tasks generated`): deterministic, split by (function, bug), each bug caught by its
tests and undone by its reference fix through the real test service, the demonstration worth 1.0 through the real
rollout, no cheat worth more than doing nothing, and the flag a run can give without moving older runs' hash."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import art
import pytest

from agent.budget import approx_tokens
from envs.probes import RewardProbe
from envs.r2e.cache import read_index
from envs.r2e.client import TestServiceClient, tar_b64
from envs.r2e.data import load_rows, validate_rows
from envs.r2e.generated import (
    DEMONSTRATED_IN_EVAL,
    GeneratedTask,
    build_generated_cache,
    generate_tasks,
    generated_tasks,
)
from envs.r2e.generated_demos import build_generated_demos, demo_turns
from envs.r2e.generated_templates import BUG_KINDS
from envs.r2e.probes import reward_probes
from envs.r2e.protected import protected_reason
from envs.r2e.reward import binary_test_reward
from envs.r2e.rollout import R2ESettings
from envs.r2e.rollout import rollout as r2e_rollout
from envs.r2e.scenarios import scenarios_from_rows
from envs.r2e.wire import TestRequest
from rollouts.context import RolloutContext, RolloutSettings
from rollouts.scenario import Scenario
from tests.fake_openai_server import start_scripted_server

TASKS = generated_tasks()
SAMPLE = random.Random(7).sample(TASKS, 10)  # the quick check; the slow one runs them all


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("r2e_generated_cache")
    build_generated_cache(directory)
    return directory


@pytest.fixture(scope="module")
def service(cache):
    from services.process import ServiceProcess

    with ServiceProcess("envs.r2e.test_service", "--runtime", "process", "--cache-dir", str(cache),
                        "--max-concurrent", "2") as running:
        yield running


def test_the_same_seed_makes_the_same_tasks_and_another_seed_others():
    again = generate_tasks.__wrapped__()
    assert [(t.row, t.files, t.fixed, t.patch) for t in again] == [(t.row, t.files, t.fixed, t.patch) for t in TASKS]
    other = generate_tasks.__wrapped__(seed=1)
    assert {t.row.instance_id for t in other} != {t.row.instance_id for t in TASKS}


def test_splits_are_big_enough_and_share_no_function_bug_pair():
    train = [t for t in TASKS if t.split == "train"]
    heldout = [t for t in TASKS if t.split == "heldout"]
    assert len(train) >= 60 and len(heldout) >= 20
    assert len({t.row.instance_id for t in TASKS}) == len(TASKS)
    pairs = {split: {(t.function, t.bug_kind) for t in TASKS if t.split == split} for split in ("train", "heldout")}
    assert not pairs["train"] & pairs["heldout"]
    assert {t.bug_kind for t in train} == set(BUG_KINDS) == {t.bug_kind for t in heldout}


def test_a_task_is_a_tiny_package_with_tests_and_rows_the_env_reads():
    for task in TASKS:
        package = task.module_path.split("/")[0]
        assert set(task.files) == {f"{package}/__init__.py", task.module_path, "run_tests.sh",
                                   next(p for p in task.files if p.startswith("tests/test_"))}
        assert task.files[task.module_path].count("\ndef ") <= 3
        assert task.files[task.module_path].replace(*task.patch) == task.fixed[task.module_path]
        assert all(protected_reason(p) for p in task.files if p.startswith("tests/") or p == "run_tests.sh")
        assert protected_reason(task.module_path) is None
    assert validate_rows([t.row.model_dump() for t in TASKS], "generated") == [t.row for t in TASKS]


def _run_tests(service, task: GeneratedTask, files: dict[str, str], tmp_path: Path) -> str:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    async def go() -> str:
        client = TestServiceClient([service.url], service.token)
        try:
            result = await client.test(TestRequest(docker_image=task.row.docker_image, instance_id=task.row.instance_id,
                                                   files_tar_b64=tar_b64(tmp_path, sorted(files)), timeout=120))
            return result.test_output
        finally:
            await client.aclose()

    return asyncio.run(go())


def _check_fails_then_passes(service, task: GeneratedTask, tmp_path: Path) -> None:
    expected = task.row.expected_output_json
    untouched = _run_tests(service, task, {"NOTES.txt": "no source change"}, tmp_path / "untouched")
    fixed = _run_tests(service, task, task.fixed, tmp_path / "fixed")
    assert binary_test_reward(expected, untouched)[0] == 0.0, (task.row.instance_id, untouched[-1500:])
    assert binary_test_reward(expected, fixed)[0] == 1.0, (task.row.instance_id, fixed[-1500:])


@pytest.mark.parametrize("task", SAMPLE, ids=lambda t: t.row.instance_id)
def test_a_sample_fails_before_and_passes_after_its_reference_fix(service, task, tmp_path):
    _check_fails_then_passes(service, task, tmp_path)


@pytest.mark.slow
def test_every_task_fails_before_and_passes_after_its_reference_fix(service, tmp_path):
    for number, task in enumerate(TASKS):
        _check_fails_then_passes(service, task, tmp_path / str(number))


async def _replay(probe: RewardProbe, scenario: Scenario, service, root: Path) -> art.Trajectory:
    """One rollout whose scripted model answers with the probe's replies in turn (the last one repeating)."""
    def respond(messages: list[dict[str, Any]]) -> str:
        return probe.replies[min(sum(m["role"] == "assistant" for m in messages), len(probe.replies) - 1)]

    server = start_scripted_server(respond)
    client = TestServiceClient([service.url], service.token)
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        settings = R2ESettings(tests=client, rollout_root=root, cell_timeout_s=60)
        async with RolloutContext(model=model, settings=RolloutSettings(max_steps=6, max_context_tokens=2048),
                                  services={"r2e": settings}) as ctx:
            return await r2e_rollout(ctx, scenario)
    finally:
        await client.aclose()
        server.stop()


def _scenario(cache: Path, task: GeneratedTask) -> Scenario:
    return scenarios_from_rows([task.row], cache, read_index(cache))[0]


@pytest.mark.parametrize("kind", ["missing_case", "wrong_operator"])
async def test_the_demonstration_scores_one_through_the_real_rollout(cache, service, tmp_path, kind):
    task = next(t for t in TASKS if t.split == "heldout" and t.bug_kind == kind)
    probe = RewardProbe("oracle", "oracle", tuple(demo_turns(task)))
    trajectory = await _replay(probe, _scenario(cache, task), service, tmp_path)
    assert trajectory.reward == 1.0, trajectory.logs[-3:]
    assert trajectory.metrics["finished"] == 1.0 and trajectory.metrics["agent_steps"] == 4.0
    assert trajectory.metrics["trimmed_messages"] == 0.0 and trajectory.metrics["ignored_files"] == 0.0


async def test_no_cheat_scores_more_than_doing_nothing(cache, service, tmp_path):
    task = next(t for t in TASKS if t.split == "heldout")
    scenario = _scenario(cache, task)
    probes = reward_probes(None, scenario)
    assert [p.kind for p in probes[:2]] == ["oracle", "nothing"] and len(probes) >= 8
    slots = asyncio.Semaphore(3)

    async def one(probe: RewardProbe) -> art.Trajectory:
        async with slots:
            return await _replay(probe, scenario, service, tmp_path)

    results = dict(zip((p.name for p in probes), await asyncio.gather(*(one(p) for p in probes)), strict=True))
    assert results["oracle"].reward == 1.0 and results["do-nothing"].reward == 0.0
    paying = {name: t.reward for name, t in results.items() if name.startswith("cheat:") and t.reward > 0.0}
    assert not paying, paying
    for name in ("rewrite-tests", "conftest-marks-all-passed", "replace-run-tests-sh"):
        assert results[f"cheat:{name}"].metrics["ignored_files"] >= 1, (name, results[f"cheat:{name}"].logs[-2:])


async def test_demonstrations_are_real_repl_sessions_short_enough_for_the_small_model(tmp_path):
    demos = await build_generated_demos(tmp_path / "cache", "heldout", limit=4)
    assert len(demos) == 4
    for demo in demos:
        roles = [m["role"] for m in demo["messages"]]
        assert roles == ["system", "user"] + ["assistant", "user"] * 3 + ["assistant"]
        assert "passed" in demo["messages"][-2]["content"] and "failed" not in demo["messages"][-2]["content"]
        assert sum(approx_tokens(m["content"]) for m in demo["messages"]) < 1500  # inside 2048, with room


def _config(tmp_path: Path, *flags: str):
    from trainer.cli import config_from_args

    return config_from_args(["--experiment-name", "gen", "--env", "r2e", "--art-path", str(tmp_path / "art"), *flags])


def test_the_flag_parses_shows_in_help_and_leaves_default_runs_hash_alone(tmp_path):
    from trainer.cli import build_parser

    assert "--r2e-tasks" in build_parser().format_help()
    default, bundled = _config(tmp_path), _config(tmp_path, "--r2e-tasks", "bundled")
    generated = _config(tmp_path, "--r2e-tasks", "generated")
    assert generated.env_options.r2e_tasks == "generated" and default.env_options.r2e_tasks == "bundled"
    assert "r2e_tasks" not in str(default.hashed_fields())
    assert default.config_hash() == bundled.config_hash() != generated.config_hash()
    with pytest.raises(SystemExit):
        _config(tmp_path, "--r2e-tasks", "nope")


def test_a_run_loads_generated_tasks_and_evaluates_the_held_out_ones(tmp_path):
    from envs.r2e.spec import SPEC

    cfg = _config(tmp_path, "--r2e-tasks", "generated")
    train, val = SPEC.load_scenarios(cfg), SPEC.load_val(cfg)
    heldout = {t.row.instance_id for t in TASKS if t.split == "heldout"}
    assert [s.id for s in train] == [t.row.instance_id for t in TASKS if t.split == "train"]
    assert {s.id for s in val} >= heldout and len(val) == len(heldout) + DEMONSTRATED_IN_EVAL
    assert all(Path(s.data["repo_path"]).is_dir() for s in train + val)


def test_the_verl_export_reads_back_into_a_run(tmp_path):
    from envs.r2e.__main__ import main
    from envs.r2e.spec import SPEC

    out = tmp_path / "verl" / "train.parquet"
    assert main(["tasks", "--r2e-tasks", "generated", "--out", str(out)]) == 0
    assert load_rows(str(out)) == [t.row for t in TASKS if t.split == "train"]
    scenarios = SPEC.load_scenarios(_config(tmp_path, "--dataset", str(out)))  # repos cached from the generator
    assert len(scenarios) == 60 and all(Path(s.data["repo_path"]).is_dir() for s in scenarios)
