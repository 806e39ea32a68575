"""RLM-format logs hold every turn of a rollout, a reply without code too; the validator says when one is missing."""

import json

import art
import pytest
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_message import ChatCompletionMessage

from agent.prompts import R2E_NO_CODE_NUDGE
from envs.gmsh.rollout import NO_CODE_NUDGE
from envs.gmsh.rollout import rollout as gmsh_rollout
from envs.gmsh.tasks import ensure_default_tasks, load_tasks
from envs.r2e.cache import build_from_samples, read_index, sample_rows
from envs.r2e.client import TestServiceClient
from envs.r2e.rollout import R2ESettings
from envs.r2e.rollout import rollout as r2e_rollout
from envs.r2e.scenarios import scenarios_from_rows
from rollouts.context import RolloutContext, RolloutSettings
from rollouts.logs import main as logs_main
from rollouts.logs import rlm_lines, validate_file
from tests.fake_openai_server import start_fake_server, start_scripted_server
from tests.helpers import run_train


def write(path, lines: list[dict]) -> object:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def reply(text: str) -> Choice:
    return Choice(index=0, finish_reason="stop", message=ChatCompletionMessage(role="assistant", content=text))


def two_turns() -> art.Trajectory:
    return art.Trajectory(messages_and_choices=[{"role": "user", "content": "go"}, reply("hm"),
                                                {"role": "user", "content": "again"}, reply("done")], reward=0.0)


def test_a_log_of_every_turn_is_valid_and_says_how_many_turns(tmp_path):
    lines = rlm_lines(two_turns(), {"env": "toy", "model": "m", "max_steps": 2})
    assert lines[0]["turns"] == 2 and [line["iteration"] for line in lines[1:]] == [1, 2]
    assert lines[1]["observation"] == "again" and lines[2]["observation"] is None
    assert validate_file(write(tmp_path / "ok.jsonl", lines)) is None


def test_validator_rejects_a_log_without_iterations(tmp_path):
    head = rlm_lines(two_turns(), {"env": "toy"})[0]
    problem = validate_file(write(tmp_path / "bare.jsonl", [head]))
    assert problem == "1: no iteration lines (the rollout had 2 turn(s))"
    assert logs_main(["validate", str(tmp_path / "bare.jsonl")]) == 1


def test_validator_rejects_fewer_or_more_iterations_than_turns(tmp_path):
    lines = rlm_lines(two_turns(), {"env": "toy"})
    short = validate_file(write(tmp_path / "short.jsonl", lines[:2]))
    assert short == "2: 1 iteration line(s) for a rollout of 2 turn(s)"
    long = validate_file(write(tmp_path / "long.jsonl", [*lines, dict(lines[2], iteration=3)]))
    assert long == "4: 3 iteration line(s) for a rollout of 2 turn(s)"


def test_validator_rejects_a_metadata_line_without_the_turn_count(tmp_path):
    lines = rlm_lines(two_turns(), {"env": "toy"})
    del lines[0]["turns"]
    assert validate_file(write(tmp_path / "old.jsonl", lines)).startswith("1: 'turns' must be the rollout's turn")
    lines[0]["turns"] = 0
    assert validate_file(write(tmp_path / "zero.jsonl", lines)).startswith("1: 'turns' must be")


def test_validator_rejects_an_observation_that_is_not_text(tmp_path):
    lines = rlm_lines(two_turns(), {"env": "toy"})
    lines[1]["observation"] = {"stdout": "x"}
    assert validate_file(write(tmp_path / "obs.jsonl", lines)) == "2: 'observation' must be a string or null, is dict"


def turn_of(messages: list[dict]) -> int:
    return sum(m["role"] == "assistant" for m in messages) + 1


async def test_r2e_logs_a_turn_without_code_with_the_nudge_it_got(tmp_path):
    cache = tmp_path / "cache"
    index = build_from_samples(cache)
    scenario = scenarios_from_rows([r for r in sample_rows() if r.repo_name == "stats"], cache, read_index(cache))[0]
    script = {1: "Let me think about it first.", 2: "```repl\nprint(6 * 7)\n```", 3: "```repl\nFINAL('none')\n```"}
    server = start_scripted_server(lambda messages: script[turn_of(messages)])
    tests = TestServiceClient(["http://127.0.0.1:9"], "unused: no file changes, so no test call")
    (tmp_path / "rollouts").mkdir()
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        settings = R2ESettings(tests=tests, rollout_root=tmp_path / "rollouts", cell_timeout_s=20)
        async with RolloutContext(model=model, settings=RolloutSettings(max_steps=5),
                                  services={"r2e": settings}) as ctx:
            trajectory = await r2e_rollout(ctx, scenario)
    finally:
        await tests.aclose()
        server.stop()
    assert index and trajectory.metrics["agent_steps"] == 3 and trajectory.metrics["finished"] == 1.0
    lines = rlm_lines(trajectory, {"env": "r2e", "model": "fake", "max_steps": 5})
    assert validate_file(write(tmp_path / "r2e.jsonl", lines)) is None
    turns = lines[1:]
    assert lines[0]["turns"] == 3 and [t["iteration"] for t in turns] == [1, 2, 3]
    assert turns[0]["code_blocks"] == [] and turns[0]["observation"] == R2E_NO_CODE_NUDGE
    assert turns[0]["response"] == script[1]
    assert turns[1]["code_blocks"][0]["result"]["stdout"].strip() == "42" and "42" in turns[1]["observation"]
    assert turns[2]["final_answer"] == "none"


async def test_gmsh_logs_every_turn_of_a_reply_without_code(tmp_path):
    store = ensure_default_tasks(tmp_path / "tasks", seed=0, n_train=1, n_val=1)
    scenario = load_tasks(store / "train.parquet")[0]
    server, _ = start_fake_server(latency_s=0.0, reply="I would rather not.")
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        async with RolloutContext(model=model, settings=RolloutSettings(max_steps=3),
                                  services={"gmsh": None}) as ctx:
            trajectory = await gmsh_rollout(ctx, scenario)
    finally:
        server.stop()
    lines = rlm_lines(trajectory, {"env": "gmsh", "model": "fake", "max_steps": 3})
    assert validate_file(write(tmp_path / "gmsh.jsonl", lines)) is None
    assert lines[0]["turns"] == 3 and [t["code_blocks"] for t in lines[1:]] == [[], [], []]
    assert [t["observation"] for t in lines[1:]] == [NO_CODE_NUDGE, NO_CODE_NUDGE, None]


def logged_rollouts(folder) -> list[list[dict]]:
    return [[json.loads(line) for line in path.read_text().splitlines()] for path in sorted(folder.glob("step_*/*"))
            if path.suffix == ".jsonl"]


@pytest.mark.slow
@pytest.mark.parametrize("env, flags", [("r2e", []), ("gmsh", []), ("openspiel", ["--game-mode", "game"])])
def test_a_run_logs_as_many_iterations_per_rollout_as_it_had_turns(tmp_path, env, flags):
    run = run_train(tmp_path, env, "--env", env, "--max-training-steps", "1", "--groups-per-step", "2",
                    "--rollouts-per-group", "2", "--max-steps", "2", "--max-tokens", "48", "--log-sample-rate", "1",
                    *flags)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "logs" / env
    assert logs_main(["validate", str(folder)]) == 0
    rollouts = logged_rollouts(folder)
    assert len(rollouts) == 2 * 2
    for lines in rollouts:
        iterations = [line for line in lines if line["type"] == "iteration"]
        # the rollout loop's own count (a reward-breakdown metric) is the witness, beside the metadata line's
        agent_steps = lines[0]["environment_kwargs"]["reward_breakdown"]["agent_steps"]
        assert len(iterations) == lines[0]["turns"] == agent_steps >= 1
        if env in ("r2e", "gmsh"):  # the tiny random model writes no code: two turns, each told to write some
            assert len(iterations) == 2 and all(t["code_blocks"] == [] for t in iterations)
            assert iterations[0]["observation"]
