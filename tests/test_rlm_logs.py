"""Trajectory logs that the RLM visualizer (alexzhang13/rlm, `visualizer/`) loads and renders, for every env and mode.

The visualizer's parser and panels read every iteration's `prompt` as a list of {role, content} strings, every
sub-call's token counts and times as numbers, and take any line but the metadata for an iteration; the validator
checks just that (and our own promise: one iteration line per turn). Logs written before issue 28 fail it (the
fixtures under tests/data/rlm_logs/); logs of real `train.py` runs of every env pass it. The runs' policy is a
scripted endpoint (`--vllm-url`), so that their logs hold code, sub-calls and several turns, which the tiny random
model never writes; the toy run uses the tiny model itself.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import art
import pytest

from agent.prompts import GMSH_SYSTEM_PROMPT, R2E_SYSTEM_PROMPTS
from envs.openspiel.moves import SYSTEM_PROMPT as OPENSPIEL_SYSTEM_PROMPT
from envs.planner.plan import PLANNER_SYSTEM_PROMPT
from envs.workflow.prompts import WORKFLOW_SYSTEM_PROMPT
from rollouts.logs import attach_turns, code_block, rlm_lines, validate_file
from rollouts.logs import main as logs_main
from tests.helpers import ROOT, run_train, subprocess_env

OLD = Path(__file__).parent / "data" / "rlm_logs"


def write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def good_lines() -> list[dict[str, Any]]:
    trajectory = art.Trajectory(messages_and_choices=[
        {"role": "system", "content": "fix it"}, {"role": "user", "content": "the bug"},
        {"role": "assistant", "content": "```repl\nprint(llm_query('q'))\n```"}, {"role": "user", "content": "a"},
        {"role": "assistant", "content": "```repl\nFINAL('ok')\n```"}], reward=1.0)
    sent = trajectory.messages()
    attach_turns(trajectory, [
        {"prompt": sent[:2], "response": sent[2]["content"], "iteration_time": 0.5, "final_answer": None,
         "code_blocks": [code_block("print(llm_query('q'))", "a\n", "", {"x": "1"}, 0.3,
                                    [{"prompt": "q", "response": "a", "prompt_tokens": 3, "completion_tokens": 1}],
                                    "m")]},
        {"prompt": sent[:4], "response": sent[4]["content"], "final_answer": "ok", "iteration_time": 0.1,
         "code_blocks": [code_block("FINAL('ok')")]}])
    return rlm_lines(trajectory, {"env": "r2e", "model": "m", "max_steps": 3, "reward": 1.0})


# ---- the format ------------------------------------------------------------------------------------------------


def test_logs_written_before_issue_28_fail_and_say_why(tmp_path, capsys):
    assert validate_file(OLD / "old_gmsh.jsonl") == "2: 'prompt' must be a list, is str"
    assert validate_file(OLD / "old_r2e.jsonl") == "2: code_blocks[0].result.rlm_calls[0]: missing 'prompt_tokens'"
    lines = [json.loads(line) for line in (OLD / "old_r2e.jsonl").read_text().splitlines()]
    lines[1]["code_blocks"][0]["result"]["rlm_calls"][0] |= {"prompt_tokens": 1, "completion_tokens": 1}
    assert validate_file(write(tmp_path / "r2e.jsonl", lines)) == "3: 'prompt' must be a list, is str"
    assert logs_main(["validate", str(OLD)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(str(OLD)) for line in err)


def test_a_log_holds_the_messages_of_every_turn_and_the_tokens_of_every_sub_call(tmp_path):
    lines = good_lines()
    assert validate_file(write(tmp_path / "ok.jsonl", lines)) is None
    first, second = lines[1], lines[2]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert [m["role"] for m in second["prompt"]] == ["system", "user", "assistant", "user"]
    call = first["code_blocks"][0]["result"]["rlm_calls"][0]
    assert (call["prompt_tokens"], call["completion_tokens"], call["root_model"]) == (3, 1, "m")
    assert call["usage_summary"]["model_usage_summaries"]["m"]["total_input_tokens"] == 3
    assert second["final_answer"] == "ok"


def test_prompts_that_are_a_prefix_of_the_conversation_travel_as_their_length():
    trajectory = art.Trajectory(messages_and_choices=[{"role": "user", "content": "x" * 1000},
                                                      {"role": "assistant", "content": "y"}], reward=0.0)
    attach_turns(trajectory, [{"prompt": [{"role": "user", "content": "x" * 1000}], "response": "y"}])
    assert len(trajectory.metadata["rlm_turns"]) < 200
    trimmed = [{"role": "user", "content": "[earlier messages were removed]"}]  # not the conversation's prefix
    attach_turns(trajectory, [{"prompt": trimmed, "response": "y"}])
    assert rlm_lines(trajectory, {})[1]["prompt"] == trimmed
    with pytest.raises(TypeError, match="list of messages"):
        attach_turns(trajectory, [{"prompt": "x", "response": "y"}])


def test_null_contents_and_non_finite_numbers_are_written_as_the_visualizer_reads_them(tmp_path):
    trajectory = art.Trajectory(messages_and_choices=[{"role": "user", "content": None},
                                                      {"role": "assistant", "content": None}], reward=0.0)
    lines = rlm_lines(trajectory, {"env": "toy", "reward": math.nan, "breakdown": {"x": math.inf}})
    assert lines[1]["prompt"] == [{"role": "user", "content": ""}] and lines[1]["response"] == ""
    assert lines[0]["environment_kwargs"]["reward"] is None and lines[0]["environment_kwargs"]["breakdown"] == {
        "x": None}
    assert validate_file(write(tmp_path / "t.jsonl", lines)) is None


def _set(path: str, value: Any) -> Any:
    def change(lines: list[dict]) -> None:
        target: Any = lines
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for key in keys[:-1]:
            target = target[key]
        if value is KeyError:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return change


BLOCK = "1.code_blocks.0.result"


@pytest.mark.parametrize(("change", "problem"), [
    (_set("1.prompt.0.content", None), "2: prompt[0]: 'content' must be a string, is NoneType"),
    (_set("1.prompt.0.role", KeyError), "2: prompt[0]: missing 'role'"),
    (_set("1.prompt", []), "2: 'prompt' must hold the messages the model was sent, is empty"),
    (_set("1.response", None), "2: 'response' must be a string, is NoneType"),
    (_set("1.final_answer", {"a": 1}), "2: 'final_answer' must be a string, a [string, string] pair or null, is dict"),
    (_set("1.final_answer", KeyError), "2: missing 'final_answer'"),
    (_set("1.iteration_time", "0.5"), "2: 'iteration_time' must be a number or null, is str"),
    (_set("1.iteration", True), "2: 'iteration' must be an integer, is bool"),
    (_set("1.code_blocks.0.result", None), "2: code_blocks[0]: 'result' must be an object, is NoneType"),
    (_set(f"{BLOCK}.stderr", None), "2: code_blocks[0].result: 'stderr' must be a string, is NoneType"),
    (_set(f"{BLOCK}.execution_time", None), "2: code_blocks[0].result: 'execution_time' must be a number, is NoneType"),
    (_set(f"{BLOCK}.rlm_calls.0.execution_time", KeyError),
     "2: code_blocks[0].result.rlm_calls[0]: missing 'execution_time'"),
    (_set(f"{BLOCK}.rlm_calls.0.completion_tokens", "1"),
     "2: code_blocks[0].result.rlm_calls[0]: 'completion_tokens' must be a number, is str"),
    (_set("0.other_backends", "x"), "1: 'other_backends' must be a list of strings or null, is str"),
    (_set("0.max_depth", 1.5), "1: 'max_depth' must be an integer or null, is float"),
    (_set("1.type", "run_context"), "2: line type must be 'iteration' after the metadata line, is 'run_context'"),
])
def test_the_validator_refuses_what_the_visualizer_cannot_load_or_render(tmp_path, change, problem):
    lines = good_lines()
    change(lines)
    assert validate_file(write(tmp_path / "bad.jsonl", lines)) == problem


def test_the_validator_refuses_nan_a_second_metadata_line_and_other_names(tmp_path):
    lines = good_lines()
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (tmp_path / "nan.jsonl").write_text(text.replace('"iteration_time": 0.5', '"iteration_time": NaN'))
    assert validate_file(tmp_path / "nan.jsonl").startswith("2: not JSON (NaN is not JSON")
    assert validate_file(write(tmp_path / "twice.jsonl", [lines[0], *lines])).startswith("2: line type must be")
    assert validate_file(write(tmp_path / "log.json", lines)).startswith("0: the name must end in .jsonl")
    (tmp_path / "blank.jsonl").write_text(text.replace("\n", "\n\n"))  # the visualizer skips blank lines
    assert validate_file(tmp_path / "blank.jsonl") is None


def test_the_cli_says_bad_input_in_one_line_with_exit_2(tmp_path):
    for args in (["validate", str(tmp_path / "missing")], ["validate", str(tmp_path)], []):
        done = subprocess.run([sys.executable, "-m", "rollouts.logs", *args], capture_output=True, text=True,
                              cwd=ROOT, env=subprocess_env(), timeout=60)
        assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    shown = subprocess.run([sys.executable, "-m", "rollouts.logs", "validate", "--help"], capture_output=True,
                           text=True, cwd=ROOT, env=subprocess_env(), timeout=60)
    assert "2 bad input" in " ".join(shown.stdout.split()) and "1 some file is not" in " ".join(shown.stdout.split())


# ---- real runs of every env ------------------------------------------------------------------------------------

R2E_PROMPTS = set(R2E_SYSTEM_PROMPTS.values())


def policy(messages: list[dict[str, Any]]) -> str:
    """The scripted policy (and executor) of every env: code that runs, sub-calls, several turns."""
    system = str(messages[0]["content"]) if messages[0]["role"] == "system" else ""
    turn = sum(m["role"] == "assistant" for m in messages) + 1
    if system == GMSH_SYSTEM_PROMPT:  # runs, meshes nothing: the service's answer comes back for a second turn
        return f"```python\nimport gmsh\nprint('attempt {turn}')\n```"
    if system in R2E_PROMPTS:
        return "```repl\nprint(llm_query('What is 6 * 7?'))\n```" if turn == 1 else "```repl\nFINAL('done')\n```"
    if system == OPENSPIEL_SYSTEM_PROMPT:
        return "move: " + re.findall(r"^(\d+): ", str(messages[-1]["content"]), re.MULTILINE)[0]
    if system == PLANNER_SYSTEM_PROMPT:  # the question's sentences that hold numbers, as subproblems
        parts = [s for s in re.split(r"(?<=[.?])\s+", str(messages[-1]["content"])) if re.search(r"\d", s)]
        return json.dumps({"subproblems": parts[:2], "combine": "add"})
    if system == WORKFLOW_SYSTEM_PROMPT:
        return "Plan: ask.\n```python\ndef solve(problem, domain):\n    return answer(problem)\n```"
    return "Answer: 42\n#### 42"  # an executor's or an llm_query's answer


SMALL = ["--max-training-steps", "1", "--groups-per-step", "1", "--rollouts-per-group", "2", "--log-sample-rate", "1",
         "--sft-demos", "off", "--skip-reward-check", "--max-tokens", "64"]
EXECUTOR = ["--executor-url", "{url}", "--executor-model", "exec", "--executor-max-tokens", "8"]
GAME = ["--game-types", "tic_tac_toe", "--num-tasks-per-case", "2"]
RUNS = {
    "toy": ["--env", "toy", "--dataset-size", "2"],
    "gmsh": ["--env", "gmsh", "--max-steps", "2"],
    "r2e": ["--env", "r2e", "--max-steps", "3"],
    "openspiel-move": ["--env", "openspiel", *GAME],
    "openspiel-game": ["--env", "openspiel", *GAME, "--game-mode", "game", "--max-steps", "3"],
    "planner": ["--env", "planner", "--num-problems", "4", *EXECUTOR],
    "workflow": ["--env", "workflow", "--dataset-size", "2", "--domain-ratios", "math=1", *EXECUTOR],
    "mix": ["--mix", "toy=0.17,gmsh=0.17,r2e=0.17,openspiel=0.17,planner=0.16,workflow=0.16", "--groups-per-step",
            "6", *GAME, "--num-problems", "4", "--max-steps", "3", "--domain-ratios", "math=1", *EXECUTOR],
}
SUB_CALLS = {"r2e", "planner", "workflow"}  # envs whose scripted rollouts make sub-calls


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> Iterator[dict[str, Future]]:
    """The selected runs, two at a time (each is mostly one busy core: start-up, then waiting on its rollouts),
    against one scripted policy server; a test waits for its own."""
    from tests.fake_openai_server import start_scripted_server

    wanted = [item.callspec.params["run"] for item in request.session.items
              if item.originalname == "test_a_real_run_of_every_env_writes_logs_the_visualizer_loads"]
    server = start_scripted_server(policy)

    def train(run: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        art_path = tmp_path_factory.mktemp(run)
        flags = [f.replace("{url}", server.base_url) for f in RUNS[run]]
        scripted = [] if run == "toy" else ["--vllm-url", server.base_url]
        return run_train(art_path, run, *SMALL, *flags, *scripted, timeout=300), art_path / "logs" / run

    pool = ThreadPoolExecutor(2)
    try:
        yield {run: pool.submit(train, run) for run in sorted(wanted, key=lambda r: r != "mix")}  # longest first
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        server.stop()


def env_of(head: dict[str, Any]) -> str:
    """The env a log is of: a mixed run names it among the rollout's log lines."""
    kwargs = head["environment_kwargs"]
    named = [line.removeprefix("mix: env ") for line in kwargs.get("logs", []) if line.startswith("mix: env ")]
    return named[0] if named else head["environment_type"]


@pytest.mark.parametrize("run", list(RUNS))
def test_a_real_run_of_every_env_writes_logs_the_visualizer_loads(run, runs):
    done, folder = runs[run].result()
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(folder.glob("step_*/*.jsonl"))
    assert files and logs_main(["validate", str(folder)]) == 0
    envs: dict[str, list[list[dict[str, Any]]]] = {}
    for path in files:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        envs.setdefault(env_of(lines[0]), []).append(lines[1:])
    expected = {"toy", "gmsh", "r2e", "openspiel", "planner", "workflow"} if run == "mix" else {run.split("-")[0]}
    assert set(envs) == expected
    for env, logs in envs.items():
        for iterations in logs:
            for before, turn in zip(iterations, iterations[1:], strict=False):  # each turn saw the one before it
                assert turn["prompt"][:len(before["prompt"])] == before["prompt"], env
                assert {"role": "assistant", "content": before["response"]} in turn["prompt"], env
            assert iterations[0]["prompt"][0]["role"] == "system", env
        if env in ("gmsh", "r2e") or run == "openspiel-game":
            assert any(len(iterations) > 1 for iterations in logs), env
        if env not in ("toy", "planner"):  # a plan the executor did not run is no code block
            assert all(t["code_blocks"] for iterations in logs for t in iterations), env
        calls = [c for iterations in logs for t in iterations for b in t["code_blocks"]
                 for c in b["result"]["rlm_calls"]]
        assert bool(calls) == (env in SUB_CALLS), env
        assert all(c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 for c in calls), env
