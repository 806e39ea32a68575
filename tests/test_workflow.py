"""The workflow env: the 5-tier scorer's rules, the sandboxed workflow runner and its executor channel, the data,
the flags, a scripted rollout and a 2-step CPU run of `--env workflow`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat.chat_completion import ChatCompletionMessage, Choice

from agent.executor import ExecutorError, ExecutorReply
from envs.workflow.code_check import check_code
from envs.workflow.data import load_tasks, math_scenarios, mix, read_dataset
from envs.workflow.options import parse_ratios
from envs.workflow.reward import CodeOutcome, final_number, score_code, score_math, score_qa
from envs.workflow.runner import WorkflowLimits, run_workflow
from rollouts.scenario import DatasetError, Scenario
from sandbox.run import bwrap_available
from tests.helpers import history_steps, read_state, run_train

# ---- the tiers: math ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "gold", "tier"), [
    ("The answer is 1,234 apples.", "1234", 1.0),  # commas and units
    ("$12.50", "12.5", 1.0),  # currency
    ("1 1/2 cups", "1.5", 1.0),  # a mixed number
    ("3/4", "0.75", 1.0),  # a fraction
    ("25%", "0.25", 1.0),  # a percent as a share
    ("#### 42", 42, 1.0),
    ("41.9", "42", 0.7),  # within 1 %
    ("40", "42", 0.4),  # within 10 %
    ("42 first, then I said 50", "42", 0.4),  # the gold value in the work, not the final number
    ("7", "42", 0.2),  # a number, the wrong one
    ("I do not know", "42", 0.0),  # no number
    ("", "42", 0.0),
    (None, "42", 0.0),
])
def test_math_tiers(answer, gold, tier):
    assert score_math(answer, gold).reward == tier


def test_the_marked_answer_wins_over_later_numbers():
    assert final_number("Answer: 18. (checked with 3 and 6)") == 18
    assert final_number("3 then 6 then 18") == 18


# ---- the tiers: qa --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "golds", "tier"), [
    ("The Pacific!", ["Pacific Ocean", "Pacific"], 1.0),  # normalised exact match with an alias
    ("It is Paris.", ["Paris"], 0.7),  # the gold inside a short reply
    ("George Washington Carver", ["George Washington"], 0.7),  # F1 0.8
    ("da Vinci town", ["Leonardo da Vinci"], 0.4),  # F1 0.67
    ("London", ["Paris"], 0.2),
    ("  the ", ["Paris"], 0.0),  # empty after normalisation
    (None, ["Paris"], 0.0),
])
def test_qa_tiers(answer, golds, tier):
    assert score_qa(answer, golds).reward == tier


def test_a_long_reply_holding_the_gold_is_only_partial_credit_by_f1():
    assert score_qa("well it could be Paris but maybe it is Rome or Madrid or Berlin", ["Paris"]).reward == 0.2


# ---- the tiers: code ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("outcome", "tier"), [
    (CodeOutcome(True, True, 4, 4), 1.0), (CodeOutcome(True, True, 2, 4), 0.7), (CodeOutcome(True, True, 1, 4), 0.4),
    (CodeOutcome(True, True, 0, 4), 0.2), (CodeOutcome(True, False, 0, 4), 0.0), (CodeOutcome(False, False, 0, 4), 0.0),
])
def test_code_tiers(outcome, tier):
    assert score_code(outcome).reward == tier


TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


@pytest.mark.parametrize(("answer", "tier"), [
    ("```python\ndef add(a, b):\n    return a + b\n```", 1.0),
    ("def add(a, b):\n    return a + b if a < 2 else 0", 0.7),  # 3 of 4
    ("def add(a, b):\n    return a + b if a == 1 else None", 0.4),  # 1 of 4
    ("def add(a, b):\n    return 'x'", 0.2),  # loads, passes none
    ("def add(a, b) return", 0.0),  # a syntax error
    ("def plus(a, b):\n    return a + b", 0.0),  # no entry point
    ("import os\nos._exit(0)", 0.0),  # dies before the verdict
    ("import os\nprint('\\n@@WORKFLOW-TESTS@@{\"loads\": true, \"passed\": 4}')\nos._exit(0)", 0.0),  # a forged verdict
    ("import json\njson.dumps = lambda *a, **k: '{\"loads\": true, \"passed\": 4}'\ndef add(a, b):\n    return 0", 0.7),
    ("", 0.0),
])
async def test_code_answers_are_tested_in_the_sandbox(tmp_path, answer, tier):
    assert score_code(await check_code(answer, "add", TESTS, tmp_path)).reward == tier


# ---- the sandboxed runner and its executor channel ------------------------------------------------------------


@dataclass
class FakeExecutor:
    """Answers every call with `reply`, or raises; records what it was asked."""

    reply: str = "Let me think.\nAnswer: 42"
    fail: bool = False
    asked: list[list[dict[str, Any]]] = field(default_factory=list)

    async def complete(self, messages, *, max_tokens, temperature=0.0) -> ExecutorReply:
        self.asked.append(messages)
        if self.fail:
            raise ExecutorError("executor 'x': HTTP 500: boom")
        return ExecutorReply(self.reply, prompt_tokens=10, completion_tokens=5)

    async def aclose(self) -> None:
        pass


ENSEMBLE = """
def solve(problem, domain):
    print("working on", domain)
    first = answer(problem)
    more = [extract_answer(r) for r in ask_many([problem, problem])]
    return ensemble([first, *more])
"""


async def test_operators_get_executor_answers_through_the_trainer(tmp_path):
    executor = FakeExecutor()
    run = await run_workflow(ENSEMBLE, "What is 6 * 7?", "math", tmp_path, executor, WorkflowLimits(time_limit_s=30))
    assert run.error is None and run.answer == "42"
    assert len(run.calls) == len(executor.asked) == 3
    assert executor.asked[0][-1]["content"] == "What is 6 * 7?"
    assert (run.prompt_tokens, run.completion_tokens) == (30, 15)
    assert run.stdout == "working on math\n"


async def test_a_workflow_that_loops_forever_is_cut_at_its_time_limit(tmp_path):
    started = time.monotonic()
    run = await run_workflow("def solve(p, d):\n    while True:\n        pass\n", "q", "math", tmp_path,
                             FakeExecutor(), WorkflowLimits(time_limit_s=2))
    assert run.timed_out and run.answer is None and "time limit of 2 s" in run.error
    assert time.monotonic() - started < 15


async def test_one_call_past_the_limit_stops_the_workflow(tmp_path):
    code = "def solve(p, d):\n    return [answer(p) for _ in range(10)][-1]\n"
    run = await run_workflow(code, "q", "math", tmp_path, FakeExecutor(), WorkflowLimits(max_calls=3))
    assert run.over_call_limit and run.answer is None and "limit is 3" in run.error and len(run.calls) == 3


@pytest.mark.parametrize(("code", "reason"), [
    ("def solve(p, d) return 1", "SyntaxError"),
    ("x = 1\n", "defines no function solve"),
    ("def solve(p, d):\n    raise KeyError('nope')\n", "KeyError"),
    ("import sys\ndef solve(p, d):\n    sys.exit(3)\n", "SystemExit"),
])
async def test_bad_workflow_code_is_an_error_with_a_reason(tmp_path, code, reason):
    run = await run_workflow(code, "q", "math", tmp_path, FakeExecutor(), WorkflowLimits(time_limit_s=20))
    assert run.answer is None and reason in run.error


async def test_a_failed_executor_call_reaches_the_workflow_and_is_counted(tmp_path):
    code = ("def solve(p, d):\n    try:\n        return answer(p)\n"
            "    except OperatorError as e:\n        return str(e)\n")
    run = await run_workflow(code, "q", "math", tmp_path, FakeExecutor(fail=True), WorkflowLimits())
    assert run.executor_errors == 1 and "HTTP 500" in run.answer


@pytest.mark.parametrize(("line", "reason"), [
    ("not json at all", "broke the operator protocol"),
    ('{"calls": []}', "bad operator call"),
    ('{"calls": [{"messages": [], "temperature": 9}]}', "bad operator call"),
])
async def test_a_forged_protocol_line_ends_the_workflow_with_a_reason(tmp_path, line, reason):
    code = f"import __main__\ndef solve(p, d):\n    __main__._protocol.write({line!r} + '\\n')\n" \
           "    __main__._protocol.flush()\n    return answer(p)\n"
    executor = FakeExecutor()
    run = await run_workflow(code, "q", "math", tmp_path, executor, WorkflowLimits(time_limit_s=20))
    assert run.answer is None and reason in run.error and not executor.asked


async def test_an_executor_fault_fails_the_rollout_instead_of_scoring_the_policy(tmp_path):
    from envs.workflow.options import WorkflowOptions
    from envs.workflow.prompts import DEMO_WORKFLOWS
    from envs.workflow.rollout import WorkflowRuntime, rollout

    runtime = WorkflowRuntime(WorkflowOptions(), tmp_path, executor=FakeExecutor(fail=True))
    scenario = Scenario("qa-1", "Which planet is red?", {"domain": "qa", "answers": ["Mars"]})
    with pytest.raises(ExecutorError, match="1 executor call.* failed: .*HTTP 500"):
        await rollout(ScriptedContext(DEMO_WORKFLOWS["qa"], {"workflow": runtime}), scenario)
    assert not list(tmp_path.iterdir())  # its work dir is removed all the same


@pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot run here (network and root isolation)")
@pytest.mark.parametrize("body", [
    "import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=3)",
    f"open({str(Path(__file__).resolve().parents[1] / 'pwned.txt')!r}, 'w').write('x')",
    "open('/tmp/../etc/pwned', 'w').write('x')",
])
async def test_a_workflow_cannot_use_the_network_or_write_outside_its_dir(tmp_path, body):
    run = await run_workflow(f"def solve(p, d):\n    {body}\n    return 'escaped'\n", "q", "math", tmp_path / "w",
                             FakeExecutor(), WorkflowLimits(time_limit_s=20))
    project = Path(__file__).resolve().parents[1]
    # A project under /tmp (a CI clone may be) is, inside the sandbox, a path in its own private /tmp: a write
    # there succeeds and stays there. What must hold everywhere is that nothing reaches the host.
    if not ("pwned.txt" in body and Path("/tmp") in project.parents):
        assert run.answer is None and ("OSError" in run.error or "PermissionError" in run.error)
    assert not (project / "pwned.txt").exists()


# ---- data and flags -------------------------------------------------------------------------------------------


def test_generated_math_problems_are_seeded_with_exact_answers():
    tasks = math_scenarios(20, seed=3)
    assert tasks == math_scenarios(20, seed=3) and tasks != math_scenarios(20, seed=4)
    assert all(s.data["domain"] == "math" and score_math(s.data["answers"][0], s.data["answers"][0]).reward == 1.0
               for s in tasks)
    assert not {s.prompt for s in tasks} & {s.prompt for s in math_scenarios(20, seed=3, split="val")}


def test_domains_are_mixed_by_ratio_and_val_never_repeats_train():
    train = load_tasks(parse_ratios("math=0.4,qa=0.3,code=0.3"), 10, seed=0, split="train", dataset=None)
    domains = [s.data["domain"] for s in train]
    assert (domains.count("math"), domains.count("qa"), domains.count("code")) == (4, 3, 3)
    val = load_tasks(parse_ratios("qa=1,code=1"), 8, seed=0, split="val", dataset=None)
    assert {s.data["domain"] for s in val} == {"qa", "code"}
    all_train = load_tasks(parse_ratios("qa=1,code=1"), 64, seed=0, split="train", dataset=None)
    assert not {s.prompt for s in val} & {s.prompt for s in all_train}


def test_the_default_val_split_holds_21_distinct_held_out_tasks(tmp_path):
    from envs.workflow.data import scenarios_for
    from trainer.cli import config_from_args

    config = config_from_args(["--experiment-name", "x", "--env", "workflow", "--art-path", str(tmp_path)])
    train, val = scenarios_for(config), scenarios_for(config, "val")
    assert len(val) == len({s.id for s in val}) == 21 and not {s.prompt for s in train} & {s.prompt for s in val}
    assert [sum(s.data["domain"] == d for s in val) for d in ("math", "qa", "code")] == [9, 6, 6]


def test_mix_is_a_pure_function_of_its_inputs():
    pools = {"math": [Scenario(f"m{i}", "q") for i in range(5)], "qa": [Scenario("a", "q")]}
    assert mix(pools, {"math": 1, "qa": 1}, 6, 0) == mix(pools, {"math": 1, "qa": 1}, 6, 0)
    with pytest.raises(DatasetError, match="--domain-ratios"):
        mix(pools, {"code": 1.0}, 4, 0)


@pytest.mark.parametrize(("row", "message"), [
    ('{"domain": "poetry", "question": "q", "answer": "1"}', "row 2: field 'domain'"),
    ('{"domain": "math", "question": "", "answer": "1"}', "row 2: field 'question'"),
    ('{"domain": "math", "question": "q", "answer": "many"}', "row 2: field 'answer' must be a number"),
    ('{"domain": "code", "question": "q", "entry_point": "f", "tests": []}', "row 2: field 'tests'"),
    ('{"domain": "qa", "question": "q", "answer": "x", "aliases": "y"}', "row 2: field 'aliases'"),
    ("not json", "row 2: not JSON"),
])
def test_a_bad_dataset_row_is_named_with_its_field(tmp_path, row, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"domain": "qa", "question": "q", "answer": "a"}\n' + row + "\n")
    with pytest.raises(DatasetError, match=message):
        read_dataset(path)


@pytest.mark.parametrize(("text", "message"), [
    ("math=0.4,poetry=0.6", "'poetry=0.6' is not DOMAIN=WEIGHT"), ("math=x", "math='x' is not a number"),
    ("math=-1,qa=1", "must be a finite number >= 0"), ("math=0,qa=0", "at least one domain"),
    ("math=1,math=2", "math is given twice"),
])
def test_bad_domain_ratios_name_the_flag(text, message):
    with pytest.raises(ValueError, match=message):
        parse_ratios(text)


def test_workflow_flags_reach_only_the_workflow_env():
    from trainer.cli import config_from_args
    from trainer.config import ConfigError

    config = config_from_args(["--experiment-name", "x", "--env", "workflow", "--domain-ratios", "qa=1",
                               "--max-executor-calls", "3"])
    assert config.env_options.domain_ratios == "qa=1" and config.env_options.max_executor_calls == 3
    with pytest.raises(ConfigError, match="--domain-ratios belongs to --env workflow"):
        config_from_args(["--experiment-name", "x", "--env", "toy", "--domain-ratios", "qa=1"])
    with pytest.raises(ConfigError, match="--domain-ratios: 'qa' is not DOMAIN=WEIGHT"):
        config_from_args(["--experiment-name", "x", "--env", "workflow", "--domain-ratios", "qa"])
    with pytest.raises(ConfigError, match="--max-executor-calls must be at least 1"):
        config_from_args(["--experiment-name", "x", "--env", "workflow", "--max-executor-calls", "0"])


# ---- a rollout: a scripted policy, a real HTTP executor -------------------------------------------------------


@dataclass
class ScriptedContext:
    reply: str
    services: dict[str, Any]
    settings: Any = None
    model: Any = None

    def __post_init__(self) -> None:
        from rollouts.context import RolloutSettings

        self.settings = RolloutSettings(max_tokens_per_turn=256)

    async def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Choice:
        return Choice(index=0, finish_reason="stop", logprobs=None,
                      message=ChatCompletionMessage(role="assistant", content=self.reply))


WORKFLOW_REPLY = "Plan: ask.\n```python\ndef solve(problem, domain):\n    return answer(problem)\n```"


async def test_a_rollout_runs_the_policy_workflow_against_an_http_executor(tmp_path):
    pytest.importorskip("agent.openai_executor")
    from envs.workflow.options import WorkflowOptions
    from envs.workflow.rollout import WorkflowRuntime, rollout, services
    from rollouts.logs import rlm_lines, validate_file
    from tests.fake_openai_server import start_scripted_server

    server = start_scripted_server(lambda messages: "6 times 7 is 42.\nAnswer: 42")
    options = WorkflowOptions(executor_url=server.base_url, executor_model="frozen")
    try:
        async with services(_Cfg(tmp_path, options)) as running:
            scenario = Scenario("m1", "What is 6 * 7?", {"domain": "math", "answers": ["42"]})
            good = await rollout(ScriptedContext(WORKFLOW_REPLY, running), scenario)
            none = await rollout(ScriptedContext("I would rather not.", running), scenario)
            looping = await rollout(ScriptedContext("```python\ndef solve(p, d):\n    while True: pass\n```",
                                                    running), scenario)
    finally:
        server.stop()
    assert good.reward == 1.0 and good.metrics["executor_calls"] == 1 and good.metrics["workflow_ok"] == 1
    assert none.reward == 0.0 and none.metrics["has_workflow"] == 0
    assert looping.reward == 0.0 and looping.metrics["workflow_timed_out"] == 1
    assert isinstance(running["workflow"], WorkflowRuntime)
    for i, trajectory in enumerate((good, none, looping)):
        path = tmp_path / f"log{i}.jsonl"
        path.write_text("\n".join(json.dumps(line) for line in rlm_lines(trajectory, {"max_steps": 1})) + "\n")
        assert validate_file(path) is None
    assert not list((tmp_path / "rollouts" / "workflow").iterdir())  # work dirs are removed


@dataclass
class _Cfg:
    root: Path
    options: Any
    max_concurrent: int = 4

    @property
    def rollout_root(self) -> Path:
        return self.root / "rollouts"

    @property
    def env_options(self) -> Any:
        from dataclasses import replace

        return replace(self.options, workflow_time_limit=10.0)


@dataclass
class _DemoCfg:
    rollout_root: Path
    seed: int = 0
    dataset: str | None = None
    dataset_size: int | None = 12
    env_options: Any = None


@pytest.mark.parametrize(("domain", "executor_reply"), [
    ("math", None), ("qa", None), ("code", "```python\ndef add(a, b):\n    return a + b\n```"),
])
async def test_each_demonstration_is_a_workflow_that_scores_with_a_right_executor(tmp_path, domain, executor_reply):
    from envs.workflow.options import WorkflowOptions
    from envs.workflow.rollout import WorkflowRuntime, load_scenarios, rollout, write_demos

    cfg = _DemoCfg(tmp_path / "rollouts")
    write_demos(cfg, tmp_path / "demos.jsonl")
    demos = [json.loads(line) for line in (tmp_path / "demos.jsonl").read_text().splitlines()]
    assert len(demos) == 12 and all(d["messages"][-1]["role"] == "assistant" for d in demos)
    tasks = {s.id: s for s in load_scenarios(cfg)}
    demo = next(d for d in demos if tasks[d["metadata"]["scenario_id"]].data["domain"] == domain)
    scenario = tasks[demo["metadata"]["scenario_id"]]
    if domain == "code":  # the executor below writes add(), so the task is add's
        scenario = Scenario("add", "Write add(a, b).", {"domain": "code", "entry_point": "add", "tests": TESTS})
    gold = executor_reply or f"Let me see.\nAnswer: {scenario.data['answers'][0]}"
    runtime = WorkflowRuntime(WorkflowOptions(), tmp_path / "rollouts", executor=FakeExecutor(reply=gold))
    trajectory = await rollout(ScriptedContext(demo["messages"][-1]["content"], {"workflow": runtime}), scenario)
    assert trajectory.reward == 1.0, trajectory.metadata


# ---- the trainer ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_step_cpu_run_of_the_workflow_env_writes_state_logs_and_report(tmp_path):
    from tests.fake_openai_server import start_fake_server
    from tests.test_train_e2e import assert_clean_exit, validate_logs

    server, _ = start_fake_server(latency_s=0.0, reply="Answer: 42")
    try:
        result = run_train(tmp_path, "wf", "--env", "workflow", "--executor-url", server.base_url,
                           "--executor-model", "frozen", "--max-training-steps", "2", "--groups-per-step", "2",
                           "--rollouts-per-group", "2", "--dataset-size", "4", "--max-tokens", "24",
                           "--log-sample-rate", "1", "--domain-ratios", "math=0.5,qa=0.5", timeout=300)
    finally:
        server.stop()
    assert_clean_exit(result)
    assert history_steps(tmp_path, "wf") == [1, 2] and read_state(tmp_path, "wf")["step"] == 2
    logged = sorted((tmp_path / "logs" / "wf").glob("step_*/workflow_*.jsonl"))
    assert len(logged) == 2 * 2 * 2
    head, turn = (json.loads(line) for line in logged[0].read_text().splitlines())
    assert head["environment_kwargs"]["scenario_id"].startswith(("math-", "qa-"))
    assert "score" in turn["observation"]  # what the random policy's reply scored, and why
    assert validate_logs(tmp_path / "logs" / "wf") == 0 and (tmp_path / "logs" / "wf" / "report.html").exists()


@pytest.mark.slow
def test_a_bad_dataset_row_stops_the_run_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"domain": "math", "question": "q", "answer": "seven"}\n')
    result = run_train(tmp_path, "bad", "--env", "workflow", "--dataset", str(path), timeout=120)
    assert result.returncode == 2
    assert "bad.jsonl row 1: field 'answer' must be a number" in result.stderr.strip().splitlines()[-1]
